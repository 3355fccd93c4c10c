"""Fused train step of the two-layer net Affine -> ReLU -> Affine -> SoftmaxWithLoss.

One compiled call computes the loss and every gradient of ``x[N, K] -> W1[K, H], b1[H]
-> ReLU -> W2[H, C], b2[C] -> softmax -> cross-entropy`` into buffers the caller owns, and
optionally applies the SGD update ``p -= lr * dp`` to the params in place. Nothing is
allocated per call. The GEMMs are BLAS calls outside any parallel loop; everything else is
one pass per stage:

    z1 = x @ W1               dense: BLAS; sparse: per row, W1 rows at its nonzeros summed
    z1 = max(z1 + b1, 0)      in place
    dy = z1 @ W2              BLAS, then per row: + b2, softmax, loss term, (y - t) / N
    dW2 = z1.T @ dy, dz1 = dy @ W2.T, db2 = dy summed over rows
    dz1 *= (z1 > 0)           fused with the db1 column sum
    dW1 = x.T @ dz1           dense: BLAS; sparse: per column k of x, dz1 rows at its
                              nonzeros summed (0 for an all-zero column)

There is no dx for the first layer. The sparse first layer is taken when x has at most
``max_nnz`` nonzeros (the caller sets it from ``SPARSE_DENSITY``). It stores x's nonzeros
by row (CSR) and by column (CSC): ``nz`` (int32) holds N + 1 row offsets, K + 1 column
offsets, the column of each nonzero (N + max_nnz: one spare slot per row) and the row of
each (max_nnz); the values are read from x. ``xw`` is x in the weights' dtype: pass x
itself when the dtypes agree, else a buffer of x's shape that the dense path fills. All
arrays are C-contiguous; the labels t[N] are class indices (intp) in [0, C), validated by
``fastbp.fused``.
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.blas import gemm
from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.softmax_ce import LOG_EPS, softmax_row

# Hidden columns per parallel task of the ReLU backward's db1 column sums (at most; split
# further to use every thread when H is small). A multiple of the widest vector.
COLUMN_BLOCK = 64

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
    out[r, :] = 0
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
    colptr[:] = 0
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


def column_block(h, threads):
    """Columns per task of the column-blocked loops: every one of ``threads`` busy, at most
    COLUMN_BLOCK, a multiple of 8."""
    per_thread = -(-h // threads)
    return min(COLUMN_BLOCK, -(-per_thread // 8) * 8)


@twin
def train_step(
    x,
    xw,
    cast,
    t,
    W1,
    b1,
    W2,
    b2,
    lr,
    update,
    max_nnz,
    block,
    nz,
    z1,
    dy,
    dz1,
    dW1,
    db1,
    dW2,
    db2,
):
    """Loss of the batch; gradients into dW1, db1, dW2, db2 (and params -= lr * grads if
    ``update``; then the sparse path skips the dW1 rows of all-zero columns of x, as the
    update does). z1[N, H], dy[N, C], dz1[N, H] are work buffers (z1 ends as the hidden
    activations, dy as dLoss/dlogits)."""
    n, k = x.shape
    h = W1.shape[1]
    c = W2.shape[1]
    cap = max(max_nnz, 0)
    rowptr, colptr = nz[: n + 1], nz[n + 1 : n + k + 2]
    cols, rows = nz[n + k + 2 : n + k + 2 + n + cap], nz[n + k + 2 + n + cap :]
    # -- first layer: sparse when x has few nonzeros ---------------------------------
    for i in prange(n):
        rowptr[i + 1] = count_row(x, i)
    rowptr[0] = 0
    for i in range(n):
        rowptr[i + 1] += rowptr[i]
    sparse = rowptr[n] <= max_nnz
    if sparse:
        for i in prange(n):
            start = rowptr[i] + i
            end = record_row(x, i, cols, start)
            combine_rows(W1, x, i, True, cols, start, end, z1)
    else:
        if cast:
            for i in prange(n):
                for j in range(k):
                    xw[i, j] = x[i, j]
        gemm(xw, W1, z1, False, False)
    for i in prange(n):
        for j in range(h):
            v = z1[i, j] + b1[j]
            z1[i, j] = 0 if v <= 0 else v
    # -- second layer, softmax, cross-entropy ----------------------------------------
    gemm(z1, W2, dy, False, False)
    scale = 1.0 / n
    loss = 0.0
    for i in prange(n):
        for j in range(c):
            dy[i, j] += b2[j]
        softmax_row(dy, i, dy)
        label = t[i]
        loss += -np.log(dy[i, label] + LOG_EPS)
        for j in range(c):
            dy[i, j] *= scale
        dy[i, label] -= scale
    db2[:] = 0
    for i in range(n):
        for j in range(c):
            db2[j] += dy[i, j]
    gemm(z1, dy, dW2, True, False)
    gemm(dy, W2, dz1, False, True)
    # -- back through the ReLU: mask and db1 column sums, one task per column block ----
    for b in prange((h + block - 1) // block):
        lo = b * block
        hi = min(lo + block, h)
        db1[lo:hi] = 0
        for i in range(n):
            for j in range(lo, hi):
                g = 0 if z1[i, j] <= 0 else dz1[i, j]
                dz1[i, j] = g
                db1[j] += g
    # -- first-layer weight gradient (and update) ------------------------------------
    if sparse:
        transpose_nonzeros(rowptr, cols, colptr, rows)
        for r in prange(k):
            # An all-zero column r of x has dW1[r] = 0: the update leaves W1[r] (and dW1[r]).
            if not update or colptr[r + 1] > colptr[r]:
                combine_rows(dz1, x, r, False, rows, colptr[r], colptr[r + 1], dW1)
        if update:
            for r in prange(k):
                if colptr[r + 1] > colptr[r]:
                    for j in range(h):
                        W1[r, j] -= lr * dW1[r, j]
    else:
        gemm(xw, dz1, dW1, True, False)
        if update:
            for r in prange(k):
                for j in range(h):
                    W1[r, j] -= lr * dW1[r, j]
    if update:
        for r in range(h):
            for j in range(c):
                W2[r, j] -= lr * dW2[r, j]
            b1[r] -= lr * db1[r]
        for j in range(c):
            b2[j] -= lr * db2[j]
    return loss / n
