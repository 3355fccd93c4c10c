"""Input validation for the layers: every check runs in Python before a kernel does.

Numba kernels skip bounds checks, so a bad label or shape must never reach one. Each
check is O(1) except the label checks, which are one vectorised pass over ``t`` (N or
N*C elements, small next to the N*C softmax itself). Every error names the argument.

NaN and inf are *not* rejected: they propagate exactly as in NumPy (IEEE rules), which is
the documented result. Only float32 and float64 data are accepted: integer, bool,
complex, object and float16 arrays raise ``TypeError`` (cast with ``.astype`` first).
"""

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name, a, ndim=None, min_ndim=0):
    """``a`` as a float32/float64 ndarray of the given rank; lists are converted."""
    a = np.asarray(a)
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


def batch(name, a, min_ndim=1):
    """A float array whose first axis is a non-empty batch."""
    a = float_array(name, a, min_ndim=min_ndim)
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); a batch needs at least one sample")
    return a


def same_shape(name, a, expected_name, shape):
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} like {expected_name}")


def computable(a, dtype):
    """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(a, dtype=dtype)


def labels(t, n, c):
    """Validate labels for N rows of C classes: indices t[N] or one-hot rows t[N, C].

    Returns a C-contiguous array the softmax kernels can read without bounds checks.
    """
    t = np.asarray(t)
    if t.ndim == 1:
        if t.dtype.kind not in "iu":
            raise TypeError(
                f"t: class-index labels must be integers, got dtype {t.dtype} "
                "(pass one-hot labels as a 2-D array of shape (N, C))"
            )
        if t.shape[0] != n:
            raise ValueError(f"t has {t.shape[0]} labels for a batch of {n} rows")
        low, high = t.min(), t.max()
        if low < 0 or high >= c:
            bad = low if low < 0 else high
            raise ValueError(f"t: label {bad} is out of range for {c} classes (0..{c - 1})")
        return np.ascontiguousarray(t)
    if t.ndim == 2:
        if t.shape != (n, c):
            raise ValueError(f"t: one-hot labels have shape {t.shape}, expected {(n, c)}")
        if t.dtype.kind not in "biuf":
            raise TypeError(f"t: one-hot labels must be numeric, got dtype {t.dtype}")
        if not (((t == 0) | (t == 1)).all() and (t.sum(axis=1) == 1).all()):
            raise ValueError("t: one-hot rows must hold a single 1 and zeros elsewhere")
        return np.ascontiguousarray(t)
    raise ValueError(f"t must be 1-D class indices or 2-D one-hot rows, got shape {t.shape}")
