"""Fused train step of the two-layer net Affine -> ReLU -> Affine -> SoftmaxWithLoss.

One compiled call computes the loss and every gradient of ``x[N, K] -> W1[K, H], b1[H]
-> ReLU -> W2[H, C], b2[C] -> softmax -> cross-entropy`` into buffers the caller owns, and
optionally applies the SGD update ``p -= lr * dp`` to the params in place. Nothing is
allocated per call. The work is split in ``P`` blocks (``P = dW2p.shape[0]``, one per
thread in the parallel build, 1 in the serial one) over two parallel loops, each block
calling the BLAS on its own rows (single-threaded BLAS in the parallel build, see
``kernels/threads.py``):

    block p of the batch rows:          (cast x rows to the weights' dtype into xw)
      z1 = x @ W1                       dense: BLAS; sparse: per row, W1 rows at its
                                        nonzeros summed
      z1 = max(z1 + b1, 0)              in place
      y = softmax(z1 @ W2 + b2)         BLAS, then per row; the loss terms summed
      dy = (y - onehot(t)) / N
      dW2p[p] = z1.T @ dy               this block's share of dW2 (summed after)
      dz1 = dy @ W2.T, masked by z1 > 0; db1p[p], db2p[p]: its column sums
    block p of the K rows of dW1:
      dW1 = x.T @ dz1                   dense: BLAS on xw's columns (no reduction);
                                        sparse: per column of x, dz1 rows at its nonzeros

There is no dx for the first layer. The sparse first layer is taken when x has at most
``max_nnz`` nonzeros (negative: never, and nonzeros are not counted). It stores x's
nonzeros by row (CSR) and by column (CSC): ``nz`` (int64) holds N + 1 row offsets, K + 1
column offsets, the column of each nonzero (N + max_nnz: one spare slot per row) and the
row of each (max_nnz); the values are read from x. ``xw`` is x in the weights' dtype: pass
x itself when the dtypes agree, else a buffer of x's shape that the dense path fills. All
arrays are C-contiguous; the labels t[N] are class indices (intp) in [0, C), validated by
``fastbp.fused``.
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.blas import block_of, gemm, rows_in_dtype, sum_blocks
from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.softmax_ce import LOG_EPS, softmax_row

jit = njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


@jit
def count_row(x, i):
    """Number of nonzeros in row i of x (vectorised: no branch)."""
    count = 0
    for c in range(x.shape[1]):
        count += x[i, c] != 0
    return count


@jit
def record_row(x, i, cols, p):
    """Columns of row i's nonzeros into cols[p:]; returns the end position.

    Branch-free within blocks of 8 (all-zero blocks are skipped): every column is written
    and the position advances past nonzeros only, so one spare slot follows the row.
    """
    k = x.shape[1]
    for c0 in range(0, k, 8):
        if c0 + 8 <= k:  # a full block: constant trip counts, unrolled
            nonzero = False
            for c in range(c0, c0 + 8):
                nonzero |= x[i, c] != 0
            if nonzero:
                for c in range(c0, c0 + 8):
                    cols[p] = c
                    p += x[i, c] != 0
        else:
            for c in range(c0, k):
                cols[p] = c
                p += x[i, c] != 0
    return p


@jit
def combine_rows(A, x, r, by_row, idx, lo, hi, out):
    """out[r, :] = sum over p in [lo, hi) of v_p * A[idx[p], :] (0 for an empty range),
    with v_p = x[r, idx[p]] if ``by_row`` else x[idx[p], r].

    Four terms per pass over the row, so out[r] is loaded and stored a quarter as often.
    """
    for j in range(out.shape[1]):
        out[r, j] = 0
    p = lo
    while p <= hi - 4:
        a, b, c, d = idx[p], idx[p + 1], idx[p + 2], idx[p + 3]
        if by_row:
            va, vb, vc, vd = x[r, a], x[r, b], x[r, c], x[r, d]
        else:
            va, vb, vc, vd = x[a, r], x[b, r], x[c, r], x[d, r]
        for j in range(out.shape[1]):
            out[r, j] += va * A[a, j] + vb * A[b, j] + vc * A[c, j] + vd * A[d, j]
        p += 4
    for q in range(p, hi):
        a = idx[q]
        va = x[r, a] if by_row else x[a, r]
        for j in range(out.shape[1]):
            out[r, j] += va * A[a, j]


@jit
def transpose_nonzeros(rowptr, cols, colptr, rows):
    """CSC (colptr, rows) of the recorded CSR nonzeros (row i's at rowptr[i] + i)."""
    n = rowptr.size - 1
    for c in range(colptr.size):
        colptr[c] = 0
    for i in range(n):
        for p in range(rowptr[i] + i, rowptr[i + 1] + i):
            colptr[cols[p] + 1] += 1
    for c in range(colptr.size - 1):
        colptr[c + 1] += colptr[c]
    for i in range(n):  # colptr[c] runs ahead as the fill cursor of column c ...
        for p in range(rowptr[i] + i, rowptr[i + 1] + i):
            q = colptr[cols[p]]
            rows[q] = i
            colptr[cols[p]] = q + 1
    for c in range(colptr.size - 1, 0, -1):  # ... and is shifted back afterwards
        colptr[c] = colptr[c - 1]
    colptr[0] = 0


@jit
def first_layer(x, xw, cast, W1, b1, sparse, nz, z1, lo, hi, own):
    """z1[lo:hi] = max(x[lo:hi] @ W1 + b1, 0) (sparse: from the CSR nonzeros it records)."""
    n, k = x.shape
    rowptr, cols = nz[: n + 1], nz[n + k + 2 :]
    if sparse:
        for i in range(lo, hi):
            start = rowptr[i] + i
            end = record_row(x, i, cols, start)
            combine_rows(W1, x, i, True, cols, start, end, z1)
    else:
        rows = rows_in_dtype(x, xw, lo, hi, lo) if cast else xw[lo:hi]
        gemm(rows, W1, z1[lo:hi], False, False, own)
    for i in range(lo, hi):
        for j in range(z1.shape[1]):
            v = z1[i, j] + b1[j]
            z1[i, j] = 0 if v <= 0 else v


@jit
def output_layer(t, W2, b2, z1, y, dy, dz1, dW2p, db1p, db2p, lo, hi, scale, own, backward):
    """Rows lo:hi of softmax y (and if ``backward``: of dy and masked dz1, and their
    shares of dW2, db1, db2 into dW2p, db1p, db2p); returns their summed loss terms."""
    h, c = W2.shape
    gemm(z1[lo:hi], W2, y[lo:hi], False, False, own)
    loss = 0.0
    for i in range(lo, hi):
        for j in range(c):
            y[i, j] += b2[j]
        softmax_row(y, i, y)
        label = t[i]
        loss += -np.log(y[i, label] + LOG_EPS)
        for j in range(c):
            dy[i, j] = y[i, j] * scale
        dy[i, label] -= scale
    if not backward:
        return loss
    gemm(z1[lo:hi], dy[lo:hi], dW2p, True, False, own)
    gemm(dy[lo:hi], W2, dz1[lo:hi], False, True, own)
    for j in range(h):
        db1p[j] = 0
    for j in range(c):
        db2p[j] = 0
    for i in range(lo, hi):
        for j in range(c):
            db2p[j] += dy[i, j]
        for j in range(h):
            g = 0 if z1[i, j] <= 0 else dz1[i, j]
            dz1[i, j] = g
            db1p[j] += g
    return loss


@twin
def two_layer_step(
    x, xw, cast, t, W1, b1, W2, b2, lr, update, max_nnz, nz,
    z1, y, dy, dz1, dW1, db1, dW2, db2, dW2p, db1p, db2p, lossp, own, backward,
):  # fmt: skip
    """Loss of the batch (only that, and z1, y, dy, unless ``backward``); gradients into
    dW1, db1, dW2, db2 (and params -= lr * grads if ``update``; then the sparse path skips
    the dW1 rows of all-zero columns of x, as the update does). z1[N, H], y[N, C],
    dy[N, C], dz1[N, H] end as the hidden activations, the softmax output, dLoss/dlogits
    and dLoss/dz1; dW2p[P, H, C], db1p[P, H], db2p[P, C], lossp[P] are the blocks' partial
    sums. ``own``: the GEMMs on the private
    single-threaded BLAS (``blas.plan``)."""
    n, k = x.shape
    blocks = dW2p.shape[0]
    rowptr, colptr = nz[: n + 1], nz[n + 1 : n + k + 2]
    cap = max(max_nnz, 0)
    cols, rows = nz[n + k + 2 : n + k + 2 + n + cap], nz[n + k + 2 + n + cap :]
    sparse = False
    if max_nnz >= 0:
        for i in range(n):  # serial: cheaper than waking a thread for one pass over x
            rowptr[i + 1] = count_row(x, i)
        rowptr[0] = 0
        for i in range(n):
            rowptr[i + 1] += rowptr[i]
        sparse = rowptr[n] <= max_nnz
    scale = 1.0 / n
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, n)
        first_layer(x, xw, cast, W1, b1, sparse, nz, z1, lo, hi, own)
        lossp[p] = output_layer(
            t, W2, b2, z1, y, dy, dz1, dW2p[p], db1p[p], db2p[p], lo, hi, scale, own, backward
        )
    loss = 0.0
    for p in range(blocks):
        loss += lossp[p]
    if not backward:
        return loss / n
    if sparse:
        transpose_nonzeros(rowptr, cols, colptr, rows)
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, k)
        if sparse:
            for r in range(lo, hi):
                # An all-zero column r of x has dW1[r] = 0: the update leaves W1[r], dW1[r].
                if not update or colptr[r + 1] > colptr[r]:
                    combine_rows(dz1, x, r, False, rows, colptr[r], colptr[r + 1], dW1)
        else:
            gemm(xw[:, lo:hi], dz1, dW1[lo:hi], True, False, own)
        if update:
            for r in range(lo, hi):
                if not sparse or colptr[r + 1] > colptr[r]:
                    for j in range(W1.shape[1]):
                        W1[r, j] -= lr * dW1[r, j]
    h, c = W2.shape
    sum_blocks(dW2p.reshape((blocks, h * c)), dW2.reshape(h * c))
    sum_blocks(db1p, db1)
    sum_blocks(db2p, db2)
    if update:
        for r in range(h):
            for j in range(c):
                W2[r, j] -= lr * dW2[r, j]
            b1[r] -= lr * db1[r]
        for j in range(c):
            b2[j] -= lr * db2[j]
    return loss / n
