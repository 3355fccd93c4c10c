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
``max_nnz`` nonzeros (negative: never, and nonzeros are not counted), recorded by row
blocks and sorted by the blocks of dW1 rows in ``nz`` (int64, ``nonzeros.split`` with
cap = max_nnz); the values are read from x (``kernels/nonzeros.py``). ``xw`` is x in
the weights' dtype: pass x itself when the dtypes agree, else a buffer of x's shape that
the dense path fills. All arrays are C-contiguous; the labels t[N] are class indices
(intp) in [0, C), validated by ``fastbp.fused``.
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.blas import block_of, gemm, rows_in_dtype, sum_blocks
from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.nonzeros import (
    by_columns,
    column_block,
    combine_rows,
    count_rows,
    record_rows,
    split,
)
from fastbp.kernels.softmax_ce import LOG_EPS, softmax_row

jit = njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


@jit
def first_layer(x, xw, cast, W1, b1, sparse, rowptr, ends, cols, z1, lo, hi, own):
    """z1[lo:hi] = max(x[lo:hi] @ W1 + b1, 0) (sparse: row i's nonzeros recorded into
    cols[rowptr[i] : ends[i]], within the room rowptr[i + 1] that ``count_rows`` left,
    then the W1 rows at them summed)."""
    if sparse:
        record_rows(x, rowptr, ends, cols, lo, hi)
        for i in range(lo, hi):
            combine_rows(W1, x[i], cols, rowptr[i], ends[i], z1[i])
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
    """(Loss of the batch, whether the sparse first layer ran); only that, and z1, y, dy,
    unless ``backward``. Gradients into
    dW1, db1, dW2, db2 (and params -= lr * grads if ``update``; then the sparse path skips
    the dW1 rows of all-zero columns of x, as the update does). z1[N, H], y[N, C],
    dy[N, C], dz1[N, H] end as the hidden activations, the softmax output, dLoss/dlogits
    and dLoss/dz1; dW2p[P, H, C], db1p[P, H], db2p[P, C], lossp[P] are the blocks' partial
    sums. ``own``: the GEMMs on the private single-threaded BLAS (``blas.plan``)."""
    n, k = x.shape
    blocks = dW2p.shape[0]
    cap = max(max_nnz, 0)
    rowptr, ends, colptr, cols, rows = split(nz, n, k, blocks, cap)
    sparse = False
    if max_nnz >= 0:
        sparse = count_rows(x, rowptr, cap) <= max_nnz
    scale = 1.0 / n
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, n)
        first_layer(x, xw, cast, W1, b1, sparse, rowptr, ends, cols, z1, lo, hi, own)
        lossp[p] = output_layer(
            t, W2, b2, z1, y, dy, dz1, dW2p[p], db1p[p], db2p[p], lo, hi, scale, own, backward
        )
    loss = 0.0
    for p in range(blocks):
        loss += lossp[p]
    if not backward:
        return loss / n, sparse
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, k)
        if sparse:
            offsets, cursor = column_block(colptr, rows, n, blocks, p, lo, hi)
            by_columns(x, dz1, dW1, rowptr, ends, cols, offsets, rows, cursor, lo, hi, update)
            if update:  # the all-zero columns r of x, left out, have dW1[r] = 0
                for r in range(lo, hi):
                    if offsets[r - lo + 1] > offsets[r - lo]:
                        for j in range(W1.shape[1]):
                            W1[r, j] -= lr * dW1[r, j]
        else:
            gemm(xw[:, lo:hi], dz1, dW1[lo:hi], True, False, own)
            if update:
                for r in range(lo, hi):
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
    return loss / n, sparse
