"""ReLU on flat (1-D, C-contiguous) arrays: ``out = x`` where ``x > 0`` else 0.

The comparison is the book's ``x <= 0``: NaN is not masked and passes through, -0.0 is.
"""

from numba import prange

from fastbp.kernels.dispatch import twin


@twin
def relu_forward(x, out, mask):
    """out[n] = 0 where x <= 0 else x; mask[n] (bool) = x <= 0."""
    for i in prange(x.size):
        masked = x[i] <= 0
        mask[i] = masked
        out[i] = 0 if masked else x[i]


@twin
def relu_backward(dout, mask, dx):
    """dx[n] = 0 where mask else dout."""
    for i in prange(dout.size):
        dx[i] = 0 if mask[i] else dout[i]
