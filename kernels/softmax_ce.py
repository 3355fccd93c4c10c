"""Fused softmax + cross-entropy on logits x[N, C].

Labels ``t`` come in either form the book uses: class indices t[N] (any integer dtype,
already checked to lie in [0, C)) or one-hot rows t[N, C] (already checked to be one-hot).
The index form never builds a one-hot matrix. The loss follows the book's
``cross_entropy_error``: mean over rows of -log(y[label] + 1e-7).
"""

import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.fastexp import fast_exp, typed
from fastbp.reference import LOG_EPS  # the book's guard against log(0)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def label_of(t, i):
    """Class index of row i: t[i] for index labels, the position of the 1 for one-hot rows."""
    if t.ndim == 1:
        return t[i]
    return np.argmax(t[i])


@register_jitable(fastmath={"contract"})  # no reassoc: its additions keep their order
def row_sum(y, i):
    """Sum of y[i, :] in one fixed order: four interleaved partial sums, then the tail.

    The order is written out because a ``reassoc`` sum is not deterministic: LLVM may
    vectorise it differently in each compilation, and the parallel build loaded from
    Numba's cache (linked and optimised again on load) differed from the one compiled in
    the process by an ulp in ~15% of the softmax outputs (C >= 37). Independent partial
    sums still run four additions at a time.
    """
    c = y.shape[1]
    s0 = s1 = s2 = s3 = typed(0, y)
    end = c - c % 4
    for j in range(0, end, 4):
        s0 += y[i, j]
        s1 += y[i, j + 1]
        s2 += y[i, j + 2]
        s3 += y[i, j + 3]
    total = (s0 + s1) + (s2 + s3)
    for j in range(end, c):
        total += y[i, j]
    return total


@njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def softmax_row(x, i, y):
    """y[i, :] = softmax(x[i, :]) in x's dtype, max subtracted first (y may be x itself).

    Four passes (max, exp, ``row_sum``, scale); the same bits in every build, compiled or
    loaded from the cache. Shared with kernels/two_layer_step.py.
    """
    c = x.shape[1]
    row_max = x[i, 0]
    for j in range(1, c):
        row_max = max(row_max, x[i, j])
    for j in range(c):
        y[i, j] = fast_exp(x[i, j] - row_max)
    scale = typed(1, row_max) / row_sum(y, i)
    for j in range(c):
        y[i, j] *= scale


@twin
def softmax_ce_forward(x, t, y):
    """y[N, C] = softmax(x) row by row (max subtracted first); returns the mean loss.

    Three vectorisable passes per row (max, exp and sum, scale), all in x's dtype.
    """
    n = x.shape[0]
    total = 0.0
    for i in prange(n):
        softmax_row(x, i, y)
        total += -np.log(y[i, label_of(t, i)] + LOG_EPS)
    return total / n


@twin
def softmax_ce_backward(y, t, scale, dx):
    """dx[N, C] = (y - onehot(t)) * scale, with scale = dout / N."""
    n, c = y.shape
    scale = typed(scale, dx)
    for i in prange(n):
        if t.ndim == 1:
            for j in range(c):
                dx[i, j] = y[i, j] * scale
            dx[i, t[i]] = (y[i, t[i]] - 1) * scale
        else:
            for j in range(c):
                dx[i, j] = (y[i, j] - t[i, j]) * scale
