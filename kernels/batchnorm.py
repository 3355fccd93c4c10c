"""Batch normalization over the rows of x[N, D] (the book's per-feature statistics).

Training mode normalizes each column by its batch mean and variance, keeping the
intermediates the backward pass needs; inference mode uses given running statistics.
Every array is C-contiguous with one float dtype; per-column vectors are [D]. The loops
run over blocks of columns, so in the parallel build each thread owns whole columns and
no two threads ever add into the same sum.
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.dispatch import twin

# Columns per parallel task: wide strips, so that each pass streams rows (64 columns ran
# the 3000x576 forward 2x slower than 1024, from strided reads).
COLUMN_BLOCK = 512


@njit(inline="always", cache=True, nogil=True)
def column_block(block, d):
    """Columns [lo, hi) of block ``block`` of the d columns (COLUMN_BLOCK wide, the last
    one cut at d)."""
    lo = block * COLUMN_BLOCK
    return lo, min(lo + COLUMN_BLOCK, d)


@twin
def batchnorm_forward(x, gamma, beta, eps, out, xc, xn, mu, var, std):
    """mu, var = column mean and variance of x; std = sqrt(var + eps); xc = x - mu;
    xn = xc / std; out = gamma * xn + beta."""
    n, d = x.shape
    for block in prange((d + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo, hi = column_block(block, d)
        mu[lo:hi] = 0
        var[lo:hi] = 0
        for i in range(n):
            for j in range(lo, hi):
                mu[j] += x[i, j]
        for j in range(lo, hi):
            mu[j] /= n
        for i in range(n):
            for j in range(lo, hi):
                c = x[i, j] - mu[j]
                xc[i, j] = c
                var[j] += c * c
        for j in range(lo, hi):
            var[j] /= n
            std[j] = np.sqrt(var[j] + eps)
        for i in range(n):
            for j in range(lo, hi):
                v = xc[i, j] / std[j]
                xn[i, j] = v
                out[i, j] = gamma[j] * v + beta[j]


@twin
def batchnorm_inference(x, gamma, beta, mean, std, out):
    """out = gamma * ((x - mean) / std) + beta, std the running sqrt(var + eps)."""
    n, d = x.shape
    for i in prange(n):
        for j in range(d):
            out[i, j] = gamma[j] * ((x[i, j] - mean[j]) / std[j]) + beta[j]


@twin
def batchnorm_backward(dout, gamma, xc, xn, std, dx, dgamma, dbeta, dvar, dmu):
    """The book's gradients: dbeta = sum(dout), dgamma = sum(xn * dout), and dx through
    the mean and variance (dvar[D], dmu[D] are scratch)."""
    n, d = dout.shape
    for block in prange((d + COLUMN_BLOCK - 1) // COLUMN_BLOCK):
        lo, hi = column_block(block, d)
        dbeta[lo:hi] = 0
        dgamma[lo:hi] = 0
        dvar[lo:hi] = 0
        dmu[lo:hi] = 0
        for i in range(n):
            for j in range(lo, hi):
                g = dout[i, j]
                dbeta[j] += g
                dgamma[j] += xn[i, j] * g
                dvar[j] += gamma[j] * g * xc[i, j] / (std[j] * std[j])
        for j in range(lo, hi):
            dvar[j] = 0.5 * -dvar[j] / std[j]
        for i in range(n):
            for j in range(lo, hi):
                dxc = gamma[j] * dout[i, j] / std[j] + (2.0 / n) * xc[i, j] * dvar[j]
                dx[i, j] = dxc
                dmu[j] += dxc
        for i in range(n):
            for j in range(lo, hi):
                dx[i, j] -= dmu[j] / n
