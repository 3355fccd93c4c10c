"""Max pooling over (pool_h, pool_w) windows, parallel over the N*C image planes.

x[M, H, W] holds the M = N*C planes of an NCHW batch (C-contiguous, one float dtype),
out[M, OH, OW] the window maxima and arg[M, OH, OW] (int64) each window's argmax as a
flat index i*pool_w + j into the window (the book's ``arg_max`` values). Positions a
window takes from the padding count as 0, as in the book's zero-padded im2col; ties and
NaN resolve like ``np.argmax`` (the first maximum, the first NaN).

The comparisons are selects, not branches (random data mispredicts half of them: the
branchy loop was measured 8x slower); a window holding NaN is redone by ``_first_nan``.
``maxpool2x2_forward`` is the unrolled form of the book's 2x2 windows without padding.
"""

from numba import njit, prange

from fastbp.kernels.dispatch import FASTMATH, twin

OPTIONS = {"cache": True, "nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}


@njit(**OPTIONS)
def _first_nan(plane, y0, x0, ph, pw):
    """Flat index of the first NaN of the (inside) window at (y0, x0), or -1."""
    for i in range(ph):
        for j in range(pw):
            v = plane[y0 + i, x0 + j]
            if v != v:
                return i * pw + j
    return -1


@twin
def maxpool_forward(x, out, arg, ph, pw, stride, pad):
    """out[m, oy, ox] = max of the window at (oy*stride - pad, ox*stride - pad); arg too."""
    m_count, h, w = x.shape
    oh, ow = out.shape[1], out.shape[2]
    for m in prange(m_count):
        plane = x[m]
        for oy in range(oh):
            y0 = oy * stride - pad
            for ox in range(ow):
                x0 = ox * stride - pad
                if y0 >= 0 and x0 >= 0 and y0 + ph <= h and x0 + pw <= w:
                    best = plane[y0, x0]
                    k = 0
                    nan = False
                    for i in range(ph):
                        row = plane[y0 + i]
                        for j in range(pw):
                            v = row[x0 + j]
                            take = v > best
                            best = v if take else best
                            k = i * pw + j if take else k
                            nan |= v != v
                    if nan:
                        k = _first_nan(plane, y0, x0, ph, pw)
                        best = plane[y0 + k // pw, x0 + k % pw]
                else:  # a border window: padding reads as 0
                    best = 0.0
                    k = -1
                    for i in range(ph):
                        y = y0 + i
                        for j in range(pw):
                            xx = x0 + j
                            v = plane[y, xx] if 0 <= y < h and 0 <= xx < w else 0.0
                            if k < 0 or v > best or (v != v and best == best):
                                best = v
                                k = i * pw + j
                out[m, oy, ox] = best
                arg[m, oy, ox] = k


@twin
def maxpool2x2_forward(x, out, arg, stride):
    """maxpool_forward for 2x2 windows and no padding (the book's nets), unrolled."""
    oh, ow = out.shape[1], out.shape[2]
    for m in prange(x.shape[0]):
        plane = x[m]
        for oy in range(oh):
            top, bottom = plane[oy * stride], plane[oy * stride + 1]
            for ox in range(ow):
                x0 = ox * stride
                a, b, c, d = top[x0], top[x0 + 1], bottom[x0], bottom[x0 + 1]
                best, k = a, 0
                take = b > best
                best, k = (b, 1) if take else (best, k)
                take = c > best
                best, k = (c, 2) if take else (best, k)
                take = d > best
                best, k = (d, 3) if take else (best, k)
                if (a != a) | (b != b) | (c != c) | (d != d):
                    k = _first_nan(plane, oy * stride, x0, 2, 2)
                    best = plane[oy * stride + k // 2, x0 + k % 2]
                out[m, oy, ox] = best
                arg[m, oy, ox] = k


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
