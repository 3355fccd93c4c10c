"""Affine layer: ``out = x @ W + b`` and its gradients.

All arrays are C-contiguous and share one float dtype (float32 or float64); the caller
(``fastbp.layers.Affine``) validates and casts. The GEMMs are BLAS calls made outside any
parallel loop, so BLAS threads and Numba threads never run at the same time.
"""

from numba import prange

from fastbp.kernels.blas import gemm
from fastbp.kernels.dispatch import twin

# Columns per parallel task in the bias-gradient column sum.
COLUMN_BLOCK = 64


@twin
def affine_forward(out, x, W, b):
    """out[N, M] = x[N, K] @ W[K, M] + b[M], written in place."""
    gemm(x, W, out, False, False)
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += b[j]


@twin
def affine_backward(dout, x, W, dx, dW, db, need_dx):
    """dx[N, K] = dout @ W.T (if ``need_dx``), dW[K, M] = x.T @ dout, db[M] = dout summed."""
    if need_dx:
        gemm(dout, W, dx, False, True)
    gemm(x, dout, dW, True, False)
    n, m = dout.shape
    # Each task owns a block of columns, so no two threads add into the same db entry.
    for block in prange((m + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo = block * COLUMN_BLOCK
        hi = min(lo + COLUMN_BLOCK, m)
        db[lo:hi] = 0
        for i in range(n):
            for j in range(lo, hi):
                db[j] += dout[i, j]
