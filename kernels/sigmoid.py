"""Logistic sigmoid on flat (1-D, C-contiguous) arrays, stable for any |x|.

Both loops are branch-free and call only ``fast_exp``, so LLVM vectorises them; float32
data is computed in float32.
"""

from numba import prange

from fastbp.kernels.dispatch import twin
from fastbp.kernels.fastexp import fast_exp, typed


@twin
def sigmoid_forward(x, out):
    """out[n] = 1 / (1 + exp(-x)); exp only ever sees -|x|, so it cannot overflow."""
    for i in prange(x.size):
        one = typed(1, x[i])
        z = fast_exp(-abs(x[i]))
        out[i] = (one if x[i] >= 0 else z) / (one + z)


@twin
def sigmoid_backward(dout, y, dx):
    """dx[n] = dout * (1 - y) * y, with y the forward output."""
    for i in prange(dout.size):
        dx[i] = dout[i] * (typed(1, y[i]) - y[i]) * y[i]
