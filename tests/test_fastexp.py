"""fast_exp against np.exp over the whole input range of each float type.

The comparison is with np.exp evaluated in float64 (float32 inputs are exact in float64),
so the measured error is fast_exp's own, not NumPy's float32 exp error.
"""

import numpy as np
import pytest
from numba import njit

from fastbp.kernels.fastexp import fast_exp, pow2, typed

# Max relative error for normal results (float64: ~1 ulp; float32: ~1.3 ulp).
REL_TOL = {np.float32: 2.5e-7, np.float64: 3e-16}
# Inputs spanning zero, the overflow and the subnormal ranges, and past both clamps.
RANGE = {np.float32: (-110.0, 95.0), np.float64: (-760.0, 720.0)}


@njit(cache=True)
def exp_loop(x, out):
    for i in range(x.size):
        out[i] = fast_exp(x[i])


def inputs(dtype):
    lo, hi = RANGE[dtype]
    rng = np.random.default_rng(0)
    parts = [
        np.linspace(lo, hi, 400_001),
        rng.uniform(-3, 3, 100_000),
        rng.uniform(lo, hi, 100_000),
    ]
    return np.concatenate(parts).astype(dtype)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


def test_relative_error_over_the_whole_range(dtype):
    x = inputs(dtype)
    out = np.empty_like(x)
    exp_loop(x, out)
    assert out.dtype == dtype
    with np.errstate(over="ignore"):
        exact = np.exp(x.astype(np.float64))
    info = np.finfo(dtype)
    normal = (exact >= info.tiny) & (exact <= info.max)
    rel = np.abs(out[normal] - exact[normal]) / exact[normal]
    assert rel.max() < REL_TOL[dtype]
    # Past the overflow threshold inf, below the subnormal range exactly 0, like np.exp.
    assert np.isposinf(out[exact > info.max]).all()
    assert (out[exact < info.smallest_subnormal / 2] == 0).all()


def test_subnormal_results_within_one_step(dtype):
    info = np.finfo(dtype)
    lo = np.log(info.smallest_subnormal)
    x = np.linspace(lo, np.log(info.tiny), 50_001).astype(dtype)
    out = np.empty_like(x)
    exp_loop(x, out)
    exact = np.exp(x.astype(np.float64))
    assert np.abs(out - exact).max() <= info.smallest_subnormal


def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0], dtype)
    out = np.empty_like(x)
    exp_loop(x, out)
    assert np.isnan(out[0])
    np.testing.assert_array_equal(out[1:5], [np.inf, 0.0, 1.0, 1.0])
    np.testing.assert_allclose(out[5:], np.exp(x[5:].astype(np.float64)), rtol=REL_TOL[dtype])


def test_python_fallback_matches_compiled(dtype):
    """Without JIT the same code runs on NumPy scalars and gives the same bits."""
    x = np.array([-745.0, -100.5, -1.25, 0.5, 3.0, 80.0], dtype)
    out = np.empty_like(x)
    exp_loop(x, out)
    python = np.array([fast_exp(v) for v in x])
    assert python.dtype == dtype
    np.testing.assert_array_equal(python, out)


def test_helpers_keep_the_float_type(dtype):
    @njit
    def helpers(x):
        third = typed(1, x) / typed(3, x[0])
        return third, third + x[0], pow2(x[0] * 0 + 3, x[0])

    # Numba returns scalars as Python floats; a third rounded to float32 shows the type.
    third, third_plus, eight = helpers(np.zeros(1, dtype))
    assert third == third_plus == np.dtype(dtype).type(1 / 3)
    assert eight == 8
    assert (
        helpers.nopython_signatures[0].return_type.types[0].bitwidth == np.dtype(dtype).itemsize * 8
    )
