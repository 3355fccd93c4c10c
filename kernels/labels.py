"""Label validation in one compiled pass (``fastbp.checks.labels`` calls these).

The softmax kernels index by label without bounds checks, so every label is checked
before one runs. NumPy's ``min``/``max`` and one-hot comparisons make several passes and
temporaries, which cost a third of a (100, 50) SoftmaxWithLoss step; these loops make
one pass and allocate nothing. Each returns -1 when all is well, else the position of
the first bad label (or row), for the error message.
"""

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def first_bad_index(t, c):
    """First i with t[i] outside [0, c), or -1."""
    for i in range(t.size):
        if t[i] < 0 or t[i] >= c:
            return i
    return -1


@njit(cache=True, nogil=True)
def first_bad_onehot_row(t):
    """First row of t[N, C] that is not one 1 among zeros (NaN counts as bad), or -1."""
    for i in range(t.shape[0]):
        ones = 0
        others = 0
        for j in range(t.shape[1]):  # no early exit: the row loop vectorises
            v = t[i, j]
            ones += v == 1
            others += (v != 0) & (v != 1)
        if ones != 1 or others != 0:
            return i
    return -1


@njit(cache=True, nogil=True)
def first_bad_onehot_row_classes(t, classes):
    """``first_bad_onehot_row``, also writing each good row's class (the column of its 1)
    into classes[N] (intp), up to the first bad row."""
    for i in range(t.shape[0]):
        ones = 0
        others = 0
        at = 0
        for j in range(t.shape[1]):
            v = t[i, j]
            ones += v == 1
            others += (v != 0) & (v != 1)
            at = j if v == 1 else at
        if ones != 1 or others != 0:
            return i
        classes[i] = at
    return -1


@njit(cache=True, nogil=True)
def argmax_matches(scores, classes):
    """Rows i of scores[N, C] whose ``np.argmax`` (the first largest entry, or the first
    NaN) is classes[i]."""
    count = 0
    for i in range(scores.shape[0]):
        best, top = 0, scores[i, 0]
        for j in range(1, scores.shape[1]):
            if np.isnan(top):
                break
            v = scores[i, j]
            if v > top or np.isnan(v):
                best, top = j, v
        count += best == classes[i]
    return count
