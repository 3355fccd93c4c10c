"""Shared data builders and comparisons for the kernel, layer and network tests.

Tolerances (``rtol_for``): float64 results must agree to 1e-12 relative, float32 results
to 1e-5, i.e. a few hundred ulps of slack for a different summation order, far below what
any real bug (a wrong index, a missing term, a float32 intermediate) produces. Entries
that are sums of terms of both signs (a GEMM, a gradient) can cross zero, where a relative
bound alone is meaningless: their absolute rounding error scales with the size of the
terms, not of the result. ``assert_close`` therefore also allows an absolute error of the
same rtol times the largest |expected| entry, which is tiny next to any real error.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import settings

from fastbp import kernels, layers
from fastbp.lazy import LazyKernel

# The kernels behind fastbp.layers (issue 3): every serial/parallel twin it calls (bound
# there to a stand-in until first used).
CORE_KERNELS = tuple(
    sorted(
        name
        for name, obj in vars(layers).items()
        if isinstance(obj, (kernels.dispatch.Twin, LazyKernel))
    )
)
FLOATS = (np.float32, np.float64)
INDEX_DTYPES = (np.int64, np.int32, np.uint8)
LAYOUTS = ("C", "F", "strided", "transposed")

# hypothesis: modest example counts; no deadline because the first call compiles.
PROPERTY = settings(max_examples=40, deadline=None)


def rtol_for(*dtypes):
    """1e-5 if any of ``dtypes`` is float32 (the result is only float32-accurate), else 1e-12."""
    return 1e-5 if any(np.dtype(d) == np.float32 for d in dtypes) else 1e-12


def assert_close(actual, expected, rtol):
    """Same shape, and |actual - expected| <= rtol * (|expected| + max |expected|)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    finite = np.abs(expected[np.isfinite(expected)])
    scale = finite.max() if finite.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * scale, equal_nan=True)


def assert_same_array(actual, expected, rtol):
    """``assert_close`` plus an equal dtype: the drop-in promise covers result dtypes too."""
    assert np.asarray(actual).dtype == np.asarray(expected).dtype
    assert_close(actual, expected, rtol)


def assert_loss_close(loss, expected, rtol):
    """Relative to the loss, or absolute near 0: each -log(y + 1e-7) term of the mean
    carries an absolute rounding error of about the dtype's eps (log(1 + d) ~ d)."""
    assert loss == pytest.approx(expected, rel=rtol, abs=rtol)


def normal(rng, shape, dtype, scale=1.0):
    """Standard normal values times ``scale``, rounded once to ``dtype``."""
    return (scale * rng.standard_normal(shape)).astype(dtype)


def index_labels(rng, n, c, dtype=np.int64):
    """n class indices in [0, c) of an integer ``dtype``."""
    return rng.integers(0, c, size=n).astype(dtype)


def one_hot(labels, c, dtype=np.float64):
    """One-hot rows [len(labels), c] of ``dtype`` for class indices ``labels``."""
    return np.eye(c, dtype=dtype)[labels]


def in_layout(a, layout):
    """The values of ``a`` in a new array with the given memory layout.

    "C" and "F" are contiguous copies; "strided" is a view taking every other element of
    the last axis of a bigger buffer; "transposed" is the transpose view of a C array.
    """
    if layout == "C":
        return np.ascontiguousarray(a).copy()
    if layout == "F":
        return np.asfortranarray(a).copy()
    if layout == "strided":
        buffer = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        buffer[..., ::2] = a
        return buffer[..., ::2]
    if layout == "transposed":
        return np.ascontiguousarray(a.T).T
    raise ValueError(f"unknown layout {layout!r}")


@contextlib.contextmanager
def untouched(*arrays):
    """Assert that the block leaves every array in ``arrays`` bit-for-bit unchanged."""
    copies = [np.array(a, copy=True) for a in arrays]
    yield
    for a, before in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, before, strict=True)
