"""Numerical edge cases: extreme logits, saturated sigmoid, float32 range, NaN rules.

Every case runs on both kernel builds (serial and parallel), and the layers run inside
``np.errstate(all="raise")`` with warnings turned into errors: they must give the
documented finite (or NaN) result without a warning or an exception. Under
``NUMBA_DISABLE_JIT=1`` the kernel bodies run as NumPy scalar code, which flags underflow
like any NumPy code does, so only the values are checked there.
"""

import contextlib
import warnings

import numba
import numpy as np
import pytest

from fastbp import layers
from fastbp import reference as ref
from fastbp.kernels import force_path

PATHS = ("serial", "parallel")
FLOATS = (np.float32, np.float64)


@pytest.fixture(params=PATHS, autouse=True)
def path(request):
    """Runs each test on one kernel build."""
    with force_path(request.param):
        yield request.param


@contextlib.contextmanager
def strict():
    """Every floating-point warning or error flag raises an exception (JIT builds only)."""
    if numba.config.DISABLE_JIT:
        with np.errstate(all="ignore"):
            yield
        return
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _softmax(x, t):
    layer = layers.SoftmaxWithLoss()
    with strict():
        loss = layer.forward(x, t)
        return loss, layer.y, layer.backward()


def _sigmoid(x, dout):
    layer = layers.Sigmoid()
    with strict():
        return layer.forward(x), layer.backward(dout)


def _relu(x, dout):
    layer = layers.Relu()
    with strict():
        return layer.forward(x), layer.mask, layer.backward(dout)


def _reference_softmax(x, t):
    """The reference's stable softmax-CE, evaluated in float64 outside the strict block."""
    with np.errstate(all="ignore"):
        loss, y = ref.softmax_ce_forward(x.astype(np.float64), t)
        return loss, y, ref.softmax_ce_backward(y, t)


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_extreme_logits(dtype):
    """Logits of +-1e4: finite loss and gradient equal to the stable reference's."""
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, 0, -1e4]])
    t = np.array([1, 0, 2, 0])  # includes labels whose probability underflows to 0
    loss, y, dx = _softmax(x.astype(dtype), t)
    want_loss, want_y, want_dx = _reference_softmax(x, t)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    assert np.isfinite(loss) and np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert loss.dtype == dtype and y.dtype == dtype and dx.dtype == dtype
    np.testing.assert_allclose(loss, want_loss, rtol=rtol)
    np.testing.assert_allclose(y, want_y, rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(dx, want_dx, rtol=rtol, atol=1e-30)


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_saturates_exactly(dtype):
    x = np.array([-1000.0, -1e4, -np.inf, 1000.0, 1e4, np.inf], dtype)
    out, dx = _sigmoid(x, np.ones_like(x))
    np.testing.assert_array_equal(out, [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(dx, np.zeros_like(x))
    assert out.dtype == dtype and dx.dtype == dtype


@pytest.mark.parametrize("dtype", FLOATS)
def test_sigmoid_whole_range(dtype):
    """Accurate against the float64 reference from -1e4 to 1e4, tails included."""
    x = np.concatenate([-np.geomspace(1e4, 1e-8, 400), [0.0], np.geomspace(1e-8, 1e4, 400)])
    out, _ = _sigmoid(x.astype(dtype), np.ones(x.size, dtype))
    with np.errstate(all="ignore"):
        want = ref.sigmoid(x.astype(dtype).astype(np.float64))
    tiny = np.finfo(dtype).tiny  # below it float32 results are subnormal: absolute error
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out, want, rtol=rtol, atol=tiny)


def test_float32_finite_where_float64_is():
    """Every layer's float32 result is finite wherever the float64 one is."""
    rng = np.random.default_rng(0)
    x = rng.choice([-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4], size=(64, 10))
    x *= rng.uniform(0.5, 1.0, size=x.shape)
    t = rng.integers(0, 10, size=64)
    for run in (lambda a: _softmax(a, t), lambda a: _sigmoid(a, a), lambda a: _relu(a, a)):
        for r64, r32 in zip(run(x), run(x.astype(np.float32)), strict=True):
            assert np.all(np.isfinite(r64))
            assert np.all(np.isfinite(r32))


def test_relu_passes_nan_like_the_book():
    """x <= 0 is False for NaN: NaN is not masked, so it passes through, and so does dout."""
    x = np.array([[np.nan, -1.0, 2.0], [0.0, np.nan, -np.inf]])
    dout = np.arange(6.0).reshape(2, 3) + 1
    out, mask, dx = _relu(x, dout)
    np.testing.assert_array_equal(out, [[np.nan, 0, 2], [0, np.nan, 0]])
    np.testing.assert_array_equal(mask, x <= 0)
    np.testing.assert_array_equal(dx, [[1, 0, 3], [0, 5, 0]])


def test_sigmoid_of_nan_is_nan():
    out, dx = _sigmoid(np.array([np.nan, 0.0, -np.nan]), np.ones(3))
    np.testing.assert_array_equal(out, [np.nan, 0.5, np.nan])
    np.testing.assert_array_equal(dx, [np.nan, 0.25, np.nan])


@pytest.mark.parametrize("column", [0, 2])
def test_softmax_nan_stays_in_its_row(column):
    """A NaN logit makes its row of y and dx NaN and the mean loss NaN; other rows are exact."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    t = np.array([0, 1, 2, 1])
    x[1, column] = np.nan
    loss, y, dx = _softmax(x, t)
    _, want_y, want_dx = _reference_softmax(x, t)
    assert np.isnan(loss)
    assert np.all(np.isnan(y[1])) and np.all(np.isnan(dx[1]))
    np.testing.assert_allclose(y, want_y, rtol=1e-12)  # NaN where the reference has NaN
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12)


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_softmax_infinite_logits_follow_numpy(bad):
    """+inf gives a NaN row (inf - inf), as in NumPy; a single -inf gives probability 0."""
    x = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])
    x[0, 1] = bad
    t = np.array([1, 2])
    loss, y, dx = _softmax(x, t)
    want_loss, want_y, want_dx = _reference_softmax(x, t)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(y, want_y, rtol=1e-12)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-12)


def test_affine_nan_and_inf_follow_numpy():
    rng = np.random.default_rng(2)
    x, W, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal(2)
    x[0, 1], W[2, 1] = np.nan, np.inf
    layer = layers.Affine(W, b)
    with strict():
        out = layer.forward(x)
    with np.errstate(all="ignore"):
        want = ref.affine_forward(x, W, b)
    np.testing.assert_allclose(out, want, rtol=1e-12)
    assert np.isnan(out[0]).all() and np.isinf(out[1:, 1]).all()
