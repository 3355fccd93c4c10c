"""The book's ``common/util.py``: im2col/col2im (Numba kernels), output sizes, curve
smoothing and dataset shuffling, with the book's arguments and results.

``im2col`` returns the book's layout col[N*OH*OW, C*FH*FW] (rows ordered by image, then
output position; columns by channel, then filter row and column) and ``col2im`` takes it.
The arrays have the input's dtype when it is float32 or float64 (the book's are always
float64) and float64 otherwise, and are C-contiguous.
"""

import numpy as np

from fastbp import checks
from fastbp.lazy import LazyKernel

# The kernels, imported (with Numba) on first use.
im2col_kernel = LazyKernel(globals(), "fastbp.kernels.conv", "im2col_kernel", "im2col")
col2im_kernel = LazyKernel(globals(), "fastbp.kernels.conv", "col2im_kernel", "col2im")

__all__ = ["col2im", "conv_output_size", "im2col", "shuffle_dataset", "smooth_curve"]

# smooth_curve: Kaiser window of 11 points with beta 2, as in the book.
SMOOTH_WINDOW, SMOOTH_BETA = 11, 2


def conv_output_size(input_size, filter_size, stride=1, pad=0):
    """(input_size + 2*pad - filter_size) / stride + 1 (a float, as in the book)."""
    return (input_size + 2 * pad - filter_size) / stride + 1


def real_images(name, x):
    """x as a non-empty 4-D (N, C, H, W) NumPy array of a real dtype (float16 and integer
    images too, as the book's im2col takes them), native byte order."""
    x = checks.native(np.asarray(x))
    if x.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    return x


def image_dtype(*arrays):
    """The compute dtype for images: NumPy's result type if float32/float64, else float64."""
    dtype = np.result_type(*arrays)
    return dtype if dtype in checks.FLOAT_DTYPES else np.dtype(np.float64)


def count(name, value, minimum):
    """``value`` as a Python int >= minimum (integers only, no bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def window_geometry(shape, fh, fw, stride, pad):
    """(fh, fw, stride, pad, oh, ow) of windows fh x fw over images of ``shape`` (N, C, H,
    W), validated: at least one output position along each axis."""
    fh, fw = count("filter height", fh, 1), count("filter width", fw, 1)
    stride, pad = count("stride", stride, 1), count("pad", pad, 0)
    h, w = shape[2], shape[3]
    if h + 2 * pad < fh or w + 2 * pad < fw:
        raise ValueError(
            f"a {fh}x{fw} window does not fit images of {h}x{w} with pad {pad} "
            f"(input shape {tuple(shape)})"
        )
    return fh, fw, stride, pad, (h + 2 * pad - fh) // stride + 1, (w + 2 * pad - fw) // stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    """col[N*OH*OW, C*FH*FW]: every filter-sized patch of input_data[N, C, H, W] as a row."""
    x = real_images("input_data", input_data)
    dtype = image_dtype(x)
    fh, fw, stride, pad, oh, ow = window_geometry(x.shape, filter_h, filter_w, stride, pad)
    n, c = x.shape[:2]
    col = np.empty((n, c * fh * fw, oh * ow), dtype)
    im2col_kernel(checks.c_array(x, dtype), col, fh, fw, stride, pad, oh, ow)
    return col.transpose(0, 2, 1).reshape(n * oh * ow, c * fh * fw)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    """images[N, C, H, W] (input_shape) with each row of col[N*OH*OW, C*FH*FW] added back
    onto its patch (overlaps summed, the padding cropped): the adjoint of ``im2col``."""
    shape = tuple(count("input_shape entries", s, 1) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}")
    fh, fw, stride, pad, oh, ow = window_geometry(shape, filter_h, filter_w, stride, pad)
    n, c = shape[:2]
    col = checks.float_array("col", col)
    rows, k = n * oh * ow, c * fh * fw
    checks.same_shape("col", col, f"im2col of {shape}", (rows, k))
    patches = np.ascontiguousarray(col.reshape(n, oh * ow, k).transpose(0, 2, 1))
    img = np.empty(shape, col.dtype)
    col2im_kernel(patches, img, fh, fw, stride, pad, oh, ow)
    return img


def smooth_curve(x):
    """x smoothed by a normalized 11-point Kaiser window (beta 2), the ends reflected;
    same length as x (for loss curves)."""
    x = np.asarray(x)
    k = SMOOTH_WINDOW
    padded = np.concatenate([x[k - 1 : 0 : -1], x, x[-1:-k:-1]])
    w = np.kaiser(k, SMOOTH_BETA)
    y = np.convolve(w / w.sum(), padded, mode="valid")
    return y[5 : len(y) - 5]


def shuffle_dataset(x, t):
    """(x, t) reordered by one ``np.random.permutation`` of the samples (the book's global
    random state, so ``np.random.seed`` reproduces its order)."""
    permutation = np.random.permutation(x.shape[0])  # noqa: NPY002 (the book's global state)
    return x[permutation], t[permutation]
