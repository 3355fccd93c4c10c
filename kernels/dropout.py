"""Dropout on flat (1-D, C-contiguous) arrays, given the uniform draws of the mask.

The draws come from the caller (the book's ``np.random.rand``), so a seeded NumPy state
reproduces the book's masks exactly; the kernels fuse the comparison and the products
(``x * mask`` as in NumPy: a dropped NaN or inf gives NaN).
"""

from numba import prange

from fastbp.kernels.dispatch import twin


@twin
def dropout_forward(x, draws, ratio, out, mask):
    """mask[n] = draws[n] > ratio; out[n] = x[n] * mask[n] (NaN and inf stay NaN)."""
    for i in prange(x.size):
        keep = draws[i] > ratio
        mask[i] = keep
        out[i] = x[i] * (1.0 if keep else 0.0)


@twin
def dropout_backward(dout, mask, dx):
    """dx[n] = dout[n] * mask[n]."""
    for i in prange(dout.size):
        dx[i] = dout[i] * (1.0 if mask[i] else 0.0)
