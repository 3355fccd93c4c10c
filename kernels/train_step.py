"""Fused train step of the two-layer net Affine -> ReLU -> Affine -> SoftmaxWithLoss.

One compiled call computes the loss and every gradient of ``x[N, K] -> W1[K, H], b1[H]
-> ReLU -> W2[H, C], b2[C] -> softmax -> cross-entropy`` into buffers the caller owns, and
optionally applies the SGD update ``p -= lr * dp`` to the params in place. Nothing is
allocated per call. The GEMMs are BLAS calls outside any parallel loop; everything else is
one pass per stage:

    z1 = x @ W1               dense: BLAS; sparse: sum of W1 rows at the nonzeros of x
    z1 = max(z1 + b1, 0)      in place
    dy = z1 @ W2              BLAS, then per row: + b2, softmax, loss term, (y - t) / N
    dW2 = z1.T @ dy, dz1 = dy @ W2.T, db2 = dy summed over rows
    dz1 *= (z1 > 0)           fused with the db1 column sum
    dW1 = x.T @ dz1           dense: BLAS; sparse: scatter of dz1 rows at the nonzeros of x

There is no dx for the first layer. The sparse first layer is taken when x has at most
``max_nnz`` nonzeros (the caller sets it from ``SPARSE_DENSITY``); it records the nonzero
columns of each row in ``nz`` (int32: N + 1 row starts, then the column indices), which
must hold N + 1 + max_nnz entries. ``xw`` is x in the weights' dtype: pass x itself when
the dtypes agree, else a buffer of x's shape that the dense path fills (the sparse path
reads x directly). All arrays are C-contiguous; the labels t[N] are class indices (intp) in
[0, C), validated by ``fastbp.fused``.
"""

import numpy as np
from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.softmax_ce import LOG_EPS, softmax_row
from numba import njit, prange

# Hidden columns per parallel task of the sparse scatter (at most; split further to use
# every thread when H is small). A multiple of the widest vector (8 doubles).
SCATTER_BLOCK = 64

jit = njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


@jit
def count_nonzero(row):
    """Number of nonzero entries of a 1-D array."""
    count = 0
    for v in row:
        count += v != 0
    return count


@jit
def sparse_row_product(x_row, cols, W, out_row):
    """out_row[H] = sum of x_row[k] * W[k, :] over the nonzero columns k, recorded in cols."""
    p = 0
    for k in range(x_row.size):
        if x_row[k] != 0:
            cols[p] = k
            p += 1
    out_row[:] = 0
    for q in range(p):
        k = cols[q]
        v = x_row[k]
        for j in range(out_row.size):
            out_row[j] += v * W[k, j]


@jit
def scatter_rows(x, nz, coef, dz, lo, hi, target):
    """target[k, lo:hi] += coef * x[i, k] * dz[i, lo:hi] for every recorded nonzero x[i, k]."""
    n = x.shape[0]
    for i in range(n):
        for p in range(nz[i], nz[i + 1]):
            k = nz[n + 1 + p]
            v = coef * x[i, k]
            for j in range(lo, hi):
                target[k, j] += v * dz[i, j]


def column_block(h, threads):
    """Columns per task of the column-blocked loops: every one of ``threads`` busy, at most
    SCATTER_BLOCK, a multiple of 8."""
    per_thread = -(-h // threads)
    return min(SCATTER_BLOCK, -(-per_thread // 8) * 8)


@twin
def train_step(
    x, xw, cast, t, W1, b1, W2, b2, lr, update, max_nnz, block, nz, z1, dy, dz1, dW1, db1, dW2, db2
):
    """Loss of the batch; gradients into dW1, db1, dW2, db2 (and params -= lr * grads if
    ``update``). z1[N, H], dy[N, C], dz1[N, H] are work buffers (z1 ends as the hidden
    activations, dy as dLoss/dlogits). With ``update`` and a sparse x, dW1 is not written:
    the W1 rows at nonzero columns are updated directly."""
    n, k = x.shape
    h = W1.shape[1]
    c = W2.shape[1]
    # -- first layer: pick the sparse path from the nonzero count --------------------
    for i in prange(n):
        nz[i + 1] = count_nonzero(x[i])
    nz[0] = 0
    for i in range(n):
        nz[i + 1] += nz[i]
    sparse = nz[n] <= max_nnz
    if sparse:
        for i in prange(n):
            sparse_row_product(x[i], nz[n + 1 + nz[i] :], W1, z1[i])
    else:
        if cast:
            for i in prange(n):
                for j in range(k):
                    xw[i, j] = x[i, j]
        np.dot(xw, W1, z1)
    for i in prange(n):
        for j in range(h):
            v = z1[i, j] + b1[j]
            z1[i, j] = 0 if v <= 0 else v
    # -- second layer, softmax, cross-entropy ----------------------------------------
    np.dot(z1, W2, dy)
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
    np.dot(z1.T, dy, dW2)
    np.dot(dy, W2.T, dz1)
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
    # -- first-layer weight gradient, or the update itself ---------------------------
    if sparse:
        target = W1 if update else dW1
        if not update:
            for r in prange(k):
                dW1[r, :] = 0
        coef = -lr if update else 1.0
        for b in prange((h + block - 1) // block):
            lo = b * block
            scatter_rows(x, nz, coef, dz1, lo, min(lo + block, h), target)
    else:
        np.dot(xw.T, dz1, dW1)
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
