"""Logistic sigmoid on flat (1-D, C-contiguous) arrays, stable for any |x|."""

import numpy as np
from numba import prange

from fastbp.kernels.dispatch import twin


@twin
def sigmoid_forward(x, out):
    """out[n] = 1 / (1 + exp(-x)); exp only ever sees -|x|, so it cannot overflow."""
    for i in prange(x.size):
        z = np.exp(-abs(x[i]))
        out[i] = 1 / (1 + z) if x[i] >= 0 else z / (1 + z)


@twin
def sigmoid_backward(dout, y, dx):
    """dx[n] = dout * (1 - y) * y, with y the forward output."""
    for i in prange(dout.size):
        dx[i] = dout[i] * (1.0 - y[i]) * y[i]
