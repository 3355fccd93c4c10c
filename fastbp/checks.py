"""Input validation for the layers: every check runs in Python before a kernel does.

Numba kernels skip bounds checks, so a bad label or shape must never reach one. Each
check is O(1) except the label checks, which are one compiled pass over ``t`` (N or N*C
elements, ``fastbp.kernels.labels``), small next to the N*C softmax itself. The label
checks can never be skipped. Every error names the argument.

NaN and inf are *not* rejected: they propagate exactly as in NumPy (IEEE rules), which is
the documented result. Only float32 and float64 data are accepted: integer, bool,
complex, object and float16 arrays raise ``TypeError`` (cast with ``.astype`` first).
Lists, read-only, strided, Fortran-ordered and non-native-byte-order arrays are accepted
and converted (copied only when needed); inputs are never modified.
"""

import functools

import numpy as np

from fastbp.lazy import LazyKernel

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# The label checks' compiled loops, imported (with Numba) on their first call.
_kernel = functools.partial(LazyKernel, globals(), "fastbp.kernels.labels")
first_bad_index = _kernel("first_bad_index")
first_bad_onehot_row = _kernel("first_bad_onehot_row")
first_bad_onehot_row_classes = _kernel("first_bad_onehot_row_classes")


def frozen(a):
    """``a`` as a new ndarray object (a view, no copy) with its own shape and strides.

    Every array a public call checks goes through this first: another thread resizing the
    caller's array in place (``a.shape = ...``) cannot change what was checked before the
    kernel runs on it.
    """
    return np.asarray(a).view()


def native(a):
    """``a`` in native byte order (Numba cannot read byte-swapped arrays)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def float_array(name, a, ndim=None, min_ndim=0):
    """``a`` as a float32/float64 ndarray of the given rank (``frozen``); lists are converted."""
    if type(a) is np.ndarray:  # the common case: a view, and FLOAT_DTYPES are native
        view = a.view()
        rank = (ndim is None or view.ndim == ndim) and view.ndim >= min_ndim
        if rank and view.dtype in FLOAT_DTYPES:
            return view
    a = native(frozen(a))
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be a float32 or float64 array, got dtype {a.dtype}; "
            f"convert it first, e.g. {name}.astype(np.float64)"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {a.shape}")
    return a


def bias(name, b, d, dtype):
    """A bias of d entries as a float (d,) array: given as shape (d,) or (1, d), or as a
    Python number (the book's ``Convolution(w, 0)``), which broadcasts like the book's
    ``... + self.b`` and, like it, leaves the result dtype alone (a (d,) array in
    ``dtype``, the weights')."""
    if type(b) in (int, float):  # not bool, nor NumPy's scalars (they set the dtype)
        return np.full(d, b, dtype)
    b = float_array(name, b)
    if b.shape == (d,):
        return b
    if b.shape != (1, d):  # a (1, d) row broadcasts in the book's NumPy too
        raise ValueError(f"{name} has shape {b.shape}, expected ({d},) or (1, {d}) to match W")
    return b.reshape(d)


def updatable(name, p, ndim=None):
    """A ``frozen`` view of ``p`` (its memory: updating the view updates ``p``), checked to
    be updatable in place: a writable, C-contiguous, native-byte-order float32/float64
    ndarray (no conversion: the caller's array is it)."""
    if type(p) is np.ndarray:  # the common case in one test (the same checks as below)
        view = p.view()
        flags = view.flags
        ready = flags.c_contiguous and flags.writeable and view.dtype in FLOAT_DTYPES
        if ready and (ndim is None or view.ndim == ndim):
            return view
    if not isinstance(p, np.ndarray):
        raise TypeError(
            f"{name} must be a NumPy array (it is updated in place), got {type(p).__name__}"
        )
    p = frozen(p)
    float_array(name, p, ndim=ndim)
    if not (p.flags.c_contiguous and p.flags.writeable and p.dtype.isnative):
        raise ValueError(
            f"{name} must be a writable C-contiguous array in native byte order "
            "to be updated in place"
        )
    return p


def batch(name, a, min_ndim=1):
    """A float array whose first axis is a non-empty batch."""
    a = float_array(name, a, min_ndim=min_ndim)
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); a batch needs at least one sample")
    return a


def same_shape(name, a, expected_name, shape):
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} like {expected_name}")


def c_array(a, dtype):
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one).

    Unlike ``np.ascontiguousarray``, a 0-d array stays 0-d.
    """
    return np.asarray(a, dtype=dtype, order="C")


def labels(t, n, c, float_dtype, classes=None):
    """Validate labels for N rows of C classes: indices t[N] (or an integer column t[N, 1],
    as the book reads it when C > 1) or one-hot rows t[N, C].

    Returns a C-contiguous array the softmax kernels can read without bounds checks. Index
    labels are returned as a private ``intp`` copy, so that changing the caller's ``t``
    after ``forward`` can never send an out-of-range index to ``backward``'s kernel.
    One-hot labels come back in ``np.result_type(float_dtype, t.dtype)``, the dtype of
    the book's ``y - t`` for logits of ``float_dtype`` (exact: the values are 0 and 1).
    ``classes``: an intp[N] array that one-hot labels' class indices are written into,
    in the same compiled pass as their check (index labels: left alone).
    """
    t = native(np.asarray(t))
    if t.ndim == 2 and t.shape == (n, 1) and c != 1 and t.dtype.kind in "iu":
        t = t.reshape(n)  # an (N, 1) integer column is class indices, as in the book
    if t.ndim == 1:
        if t.dtype.kind not in "iu":
            raise TypeError(
                f"t: class-index labels must be integers, got dtype {t.dtype} "
                "(pass one-hot labels as a 2-D array of shape (N, C))"
            )
        if t.shape[0] != n:
            raise ValueError(f"t has {t.shape[0]} labels for a batch of {n} rows")
        t = t.astype(np.intp)  # the copy is checked, then used: no window for a change
        bad = first_bad_index(t, c)
        if bad >= 0:
            raise ValueError(
                f"t: label {t[bad]} (t[{bad}]) is out of range for {c} classes (0..{c - 1})"
            )
        return t
    if t.ndim == 2:
        if t.shape != (n, c):
            raise ValueError(f"t: one-hot labels have shape {t.shape}, expected {(n, c)}")
        # The common case (the logits' dtype) without np.result_type (~1 us on dtypes).
        dtype = t.dtype if t.dtype == float_dtype else None
        if dtype is None and t.dtype.kind in "biuf":
            dtype = np.result_type(float_dtype, t.dtype)
        if dtype is None or dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"t: one-hot labels must be bool, integer, float16, float32 or float64, "
                f"got dtype {t.dtype}"
            )
        # Converted first (0 and 1 are exact in any float; other values stay other values),
        # so the check runs on float32/float64 only.
        t = np.ascontiguousarray(t, dtype=dtype)
        if classes is None:
            bad = first_bad_onehot_row(t)
        else:
            bad = first_bad_onehot_row_classes(t, classes)
        if bad >= 0:
            raise ValueError(
                f"t: one-hot rows must hold a single 1 and zeros elsewhere (row {bad} does not)"
            )
        return t
    raise ValueError(f"t must be 1-D class indices or 2-D one-hot rows, got shape {t.shape}")


def sample_labels(t, c):
    """Labels of a single sample with C logits, in batch form: one index -> t[1], C one-hot
    values -> t[1, C] (the book's rule: a t with C entries is one-hot)."""
    t = np.asarray(t)
    if t.size == c:
        return t.reshape(1, c)
    if t.size == 1:
        return t.reshape(1)
    raise ValueError(
        f"t: a single sample of {c} logits needs one class index or {c} one-hot values, "
        f"got shape {t.shape}"
    )


def scalar(name, v):
    """``v`` as a Python float; accepts real numbers and 0-d real arrays."""
    a = np.asarray(v)
    if a.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got shape {a.shape}")
    if a.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a real number, got {type(v).__name__} ({a.dtype})")
    return float(a)


def after_forward(layer, state):
    """Raise a clear error when ``backward`` is called before ``forward``."""
    if state is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward")


def state(layer, name, value, dtypes):
    """A layer's state array ``value`` (``layer.name``, read once by the caller) as a
    ``frozen`` C-contiguous array of one of ``dtypes``: what ``backward`` passes its kernel,
    however the attribute was changed since ``forward``."""
    after_forward(layer, value)
    a = native(frozen(value))
    if a.dtype not in dtypes:
        raise TypeError(
            f"{type(layer).__name__}.{name} has dtype {a.dtype}; backward needs "
            f"{' or '.join(d.name for d in dtypes)} (as forward sets it)"
        )
    return c_array(a, None)
