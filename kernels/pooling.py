"""Max pooling over (pool_h, pool_w) windows, parallel over the N*C image planes.

x[M, H, W] holds the M = N*C planes of an NCHW batch (C-contiguous, one float dtype),
out[M, OH, OW] the window maxima and arg[M, OH, OW] (int64) each window's argmax as a
flat index i*pool_w + j into the window (the book's ``arg_max`` values). Positions a
window takes from the padding count as 0, as in the book's zero-padded im2col; ties and
NaN resolve like ``np.argmax`` (the first maximum, the first NaN).
"""

import numpy as np
from numba import prange

from fastbp.kernels.dispatch import twin


@twin
def maxpool_forward(x, out, arg, ph, pw, stride, pad):
    """out[m, oy, ox] = max of the window at (oy*stride - pad, ox*stride - pad); arg too."""
    m_count, h, w = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for m in prange(m_count):
        for oy in range(oh):
            for ox in range(ow):
                best = 0.0
                best_k = -1
                for i in range(ph):
                    y = oy * stride + i - pad
                    for j in range(pw):
                        xx = ox * stride + j - pad
                        v = x[m, y, xx] if 0 <= y < h and 0 <= xx < w else 0.0
                        if best_k < 0 or v > best or (np.isnan(v) and not np.isnan(best)):
                            best = v
                            best_k = i * pw + j
                out[m, oy, ox] = best
                arg[m, oy, ox] = best_k


@twin
def maxpool_backward(dout, arg, dx, ph, pw, stride, pad):
    """dx[M, H, W] = each dout[m, oy, ox] added at its window's argmax (0 elsewhere)."""
    m_count, oh, ow = dout.shape
    h, w = dx.shape[1], dx.shape[2]
    for m in prange(m_count):
        dx[m] = 0
        for oy in range(oh):
            for ox in range(ow):
                k = arg[m, oy, ox]
                y = oy * stride + k // pw - pad
                xx = ox * stride + k % pw - pad
                if 0 <= y < h and 0 <= xx < w:
                    dx[m, y, xx] += dout[m, oy, ox]
