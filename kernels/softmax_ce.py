"""Fused softmax + cross-entropy on logits x[N, C].

Labels ``t`` come in either form the book uses: class indices t[N] (any integer dtype,
already checked to lie in [0, C)) or one-hot rows t[N, C] (already checked to be one-hot).
The index form never builds a one-hot matrix. The loss follows the book's
``cross_entropy_error``: mean over rows of -log(y[label] + 1e-7).
"""

import numpy as np
from numba import njit, prange

from fastbp.kernels.dispatch import FASTMATH, twin
from fastbp.kernels.fastexp import fast_exp, typed

# The book's guard against log(0) in cross_entropy_error.
LOG_EPS = 1e-7


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def label_of(t, i):
    """Class index of row i: t[i] for index labels, the position of the 1 for one-hot rows."""
    if t.ndim == 1:
        return t[i]
    return np.argmax(t[i])


@njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def softmax_row(x, i, y):
    """y[i, :] = softmax(x[i, :]) in x's dtype, max subtracted first (y may be x itself).

    Three vectorisable passes (max, exp and sum, scale). Shared with kernels/train_step.py.
    """
    c = x.shape[1]
    row_max = x[i, 0]
    for j in range(1, c):
        row_max = max(row_max, x[i, j])
    row_sum = typed(0, row_max)
    for j in range(c):
        e = fast_exp(x[i, j] - row_max)
        y[i, j] = e
        row_sum += e
    scale = typed(1, row_sum) / row_sum
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
