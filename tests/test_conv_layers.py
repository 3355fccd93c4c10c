# ruff: noqa: NPY002 (the book draws from the global np.random state; the tests seed it)
"""Chapter 6-8 layers (Dropout, BatchNormalization, Convolution, Pooling) and fastbp.util
against their NumPy twins in fastbp.reference, on both kernel builds.

Geometries cover stride 1 and 2, pad 0 and 1, odd image and filter sizes, a batch of one
and several channels; inputs come float32 and float64, C-ordered and strided.
"""

import numpy as np
import pytest
from helpers import FLOATS, assert_close, assert_same_array, in_layout, normal, rtol_for, untouched

from fastbp import kernels, util
from fastbp import layers as fast
from fastbp import reference as ref

F32, F64 = np.float32, np.float64
# (x shape N, C, H, W), (filter FN, FH, FW), stride, pad
CONV_CASES = {
    "mnist_like": ((2, 1, 12, 12), (3, 5, 5), 1, 0),
    "stride2_pad1": ((3, 2, 9, 7), (4, 3, 3), 2, 1),
    "odd_pad1": ((1, 3, 7, 5), (2, 3, 2), 1, 1),
    "batch1_1x1": ((1, 2, 5, 5), (3, 1, 1), 1, 0),
    "stride2_odd": ((2, 3, 11, 10), (5, 4, 3), 2, 0),
}
# (x shape), (pool_h, pool_w), stride, pad
POOL_CASES = {
    "book_2x2": ((3, 4, 8, 8), (2, 2), 2, 0),
    "2x2_odd": ((2, 3, 7, 9), (2, 2), 2, 0),
    "2x2_stride1": ((1, 2, 5, 6), (2, 2), 1, 0),
    "3x2_pad1": ((2, 3, 7, 6), (3, 2), 2, 1),
    "3x3_stride1": ((1, 1, 6, 7), (3, 3), 1, 0),
}


@pytest.fixture(params=["serial", "parallel"])
def path(request):
    with kernels.force_path(request.param):
        yield request.param


@pytest.fixture(params=FLOATS, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


def strided(a):
    return in_layout(a, "strided")


# -- util ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_and_col2im_match_the_reference(rng, path, dtype, case):
    shape, (_, fh, fw), stride, pad = CONV_CASES[case]
    x = strided(normal(rng, shape, dtype))
    with untouched(x):
        col = util.im2col(x, fh, fw, stride, pad)
    assert_same_array(col, ref.im2col(x, fh, fw, stride, pad), 0)
    d = normal(rng, col.shape, dtype)
    img = util.col2im(d, shape, fh, fw, stride, pad)
    assert_same_array(img, ref.col2im(d, shape, fh, fw, stride, pad), rtol_for(dtype))


def test_util_helpers_follow_the_book(rng):
    assert util.conv_output_size(28, 5) == 24.0
    assert util.conv_output_size(7, 3, 2, 1) == 4.0
    loss = rng.random(50)
    smooth = util.smooth_curve(loss)
    assert smooth.shape == loss.shape
    np.testing.assert_allclose(util.smooth_curve(np.ones(30)), 1.0, rtol=1e-12)
    x, t = rng.random((20, 1, 2, 2)), np.arange(20)
    np.random.seed(5)
    xs, ts = util.shuffle_dataset(x, t)
    np.random.seed(5)
    order = np.random.permutation(20)
    np.testing.assert_array_equal(ts, order)
    np.testing.assert_array_equal(xs, x[order])


def test_im2col_takes_integer_and_float16_images_as_the_book(rng):
    x = rng.integers(0, 255, (2, 1, 5, 5)).astype(np.uint8)
    col = util.im2col(x, 3, 3)
    assert col.dtype == F64
    assert_same_array(col, ref.im2col(x.astype(F64), 3, 3), 0)
    assert util.im2col(x.astype(np.float16), 3, 3).dtype == F64


# -- Convolution -----------------------------------------------------------------------


def conv_data(rng, case, x_dtype, w_dtype):
    shape, (fn, fh, fw), stride, pad = CONV_CASES[case]
    x = normal(rng, shape, x_dtype)
    W = normal(rng, (fn, shape[1], fh, fw), w_dtype)
    b = normal(rng, fn, w_dtype)
    return x, W, b, stride, pad


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("x_dtype,w_dtype", [(F32, F32), (F64, F64), (F32, F64)])
def test_convolution_matches_the_reference(rng, path, case, x_dtype, w_dtype):
    x, W, b, stride, pad = conv_data(rng, case, x_dtype, w_dtype)
    layer = fast.Convolution(W, b, stride, pad)
    rtol = rtol_for(x_dtype, w_dtype)
    x_given = strided(x)
    with untouched(x_given, W, b):
        out = layer.forward(x_given)
    assert_same_array(out, ref.conv_forward(x, W, b, stride, pad), rtol)
    assert layer.x is x_given and layer.W is W and layer.b is b
    assert_close(layer.col, ref.im2col(x, *W.shape[2:], stride, pad), 0)
    assert_close(layer.col_W, W.reshape(W.shape[0], -1).T, 0)
    dout = strided(normal(rng, out.shape, out.dtype))
    with untouched(dout):
        dx = layer.backward(dout)
    ex, edW, edb = ref.conv_backward(dout, x.astype(out.dtype), W.astype(out.dtype), stride, pad)
    assert_same_array(dx, ex, rtol)
    assert_same_array(layer.dW, edW, rtol)
    assert_same_array(layer.db, edb, rtol)


@pytest.mark.parametrize("bias", [0, 0.5])
@pytest.mark.parametrize("dtype", [F32, F64])
def test_convolution_takes_a_number_as_bias_like_the_book(rng, bias, dtype):
    """ch07/apply_filter.py builds ``Convolution(w, 0)``: the number broadcasts, and the
    result dtype stays that of x and W."""
    x, W, _, stride, pad = conv_data(rng, "stride2_pad1", dtype, dtype)
    layer, book = fast.Convolution(W, bias, stride, pad), ref.Convolution(W, bias, stride, pad)
    assert_same_array(layer.forward(x), book.forward(x), rtol_for(dtype, dtype))
    dout = normal(rng, book.forward(x).shape, dtype)
    assert_same_array(layer.backward(dout), book.backward(dout), rtol_for(dtype, dtype))
    assert_same_array(layer.db, book.db, rtol_for(dtype, dtype))


def test_convolution_holds_W_by_reference(rng):
    x, W, b, stride, pad = conv_data(rng, "stride2_pad1", F64, F64)
    layer = fast.Convolution(W, b, stride, pad)
    layer.forward(x)
    W *= 2.0
    b += 1.0
    assert_close(layer.forward(x), ref.conv_forward(x, W, b, stride, pad), 1e-12)


# -- Pooling ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", POOL_CASES)
def test_pooling_matches_the_reference(rng, path, dtype, case):
    shape, (ph, pw), stride, pad = POOL_CASES[case]
    x = normal(rng, shape, dtype)
    x.reshape(-1)[::7] = 0.5  # ties: the first maximum wins, as np.argmax
    x.reshape(-1)[3] = np.nan  # a NaN wins its window, as np.max and np.argmax
    x_given = strided(x)
    layer = fast.Pooling(ph, pw, stride, pad)
    with untouched(x_given):
        out = layer.forward(x_given)
    expected, arg = ref.maxpool_forward(x, ph, pw, stride, pad)
    assert_same_array(out, expected, 0)
    np.testing.assert_array_equal(layer.arg_max, arg.transpose(0, 2, 3, 1).reshape(-1))
    dout = strided(normal(rng, out.shape, dtype))
    dx = layer.backward(dout)
    assert_same_array(dx, ref.maxpool_backward(dout, arg, shape, ph, pw, stride, pad), 1e-6)


def test_pooling_attributes_are_the_books_values(rng):
    x = normal(rng, (2, 3, 6, 6), F64)
    layer, book_layer = fast.Pooling(2, 2), ref.Pooling(2, 2)
    layer.forward(x)
    book_layer.forward(x)
    assert layer.x is x
    np.testing.assert_array_equal(layer.arg_max, book_layer.arg.transpose(0, 2, 3, 1).ravel())


# -- BatchNormalization ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 3), (7, 13), (100, 700), (4, 2, 3, 3)])
@pytest.mark.parametrize("x_dtype,p_dtype", [(F32, F32), (F64, F64), (F32, F64)])
def test_batchnorm_matches_the_reference(rng, path, shape, x_dtype, p_dtype):
    d = int(np.prod(shape[1:]))
    gamma, beta = normal(rng, d, p_dtype) + 1, normal(rng, d, p_dtype)
    layer = fast.BatchNormalization(gamma, beta, momentum=0.8)
    book_layer = ref.BatchNormalization(gamma.copy(), beta.copy(), momentum=0.8)
    rtol = rtol_for(x_dtype, p_dtype)
    for _ in range(2):
        x = strided(3 * normal(rng, shape, x_dtype) + 1)
        with untouched(x):
            out = layer.forward(x)
        assert_same_array(out, book_layer.forward(x), 100 * rtol)  # 1/std amplifies rounding
        assert_close(layer.running_mean, book_layer.running_mean, rtol)
        assert_close(layer.running_var, book_layer.running_var, rtol)
        dout = strided(normal(rng, shape, out.dtype))
        dx = layer.backward(dout)
        assert_close(dx, book_layer.backward(dout), 100 * rtol)
        assert_close(layer.dgamma, book_layer.dgamma, 100 * rtol)
        assert_close(layer.dbeta, book_layer.dbeta, rtol)
    x = normal(rng, shape, x_dtype)
    assert_same_array(layer.forward(x, False), book_layer.forward(x, False), 10 * rtol)
    assert layer.gamma is gamma


def test_batchnorm_running_statistics_start_as_the_books():
    layer = fast.BatchNormalization(np.ones(2), np.zeros(2))
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    layer.forward(x, train_flg=False)  # the book's zeros: x / sqrt(0 + 1e-6)
    np.testing.assert_array_equal(layer.running_mean, np.zeros(2))
    layer.forward(x)
    np.testing.assert_allclose(layer.running_mean, [0.2, 0.4])
    np.testing.assert_allclose(layer.running_var, [0.1, 0.4])


# -- Dropout ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1,), (7, 13), (300, 400), (2, 3, 4, 5)])
def test_dropout_draws_the_books_mask(rng, path, dtype, shape):
    x = strided(normal(rng, shape, dtype))
    layer, book_layer = fast.Dropout(0.3), ref.Dropout(0.3)
    np.random.seed(7)
    with untouched(x):
        out = layer.forward(x)
    np.random.seed(7)
    assert_same_array(out, book_layer.forward(x), 0)
    np.testing.assert_array_equal(layer.mask, book_layer.mask)
    dout = strided(normal(rng, shape, dtype))
    assert_same_array(layer.backward(dout), book_layer.backward(dout), 0)
    assert_same_array(layer.forward(x, False), book_layer.forward(x, False), 0)


def test_dropout_keeps_nan_like_numpy():
    layer = fast.Dropout(1.0)  # drops everything
    np.random.seed(0)
    out = layer.forward(np.array([np.nan, np.inf, 1.0]))
    np.testing.assert_array_equal(out, [np.nan, np.nan, 0.0])


# -- star import and bad input ----------------------------------------------------------


def test_star_import_gives_the_books_names():
    names = {}
    exec("from fastbp.layers import *", names)
    expected = {"np", "im2col", "col2im", "softmax", "sigmoid", "cross_entropy_error"}
    expected |= {"Relu", "Sigmoid", "Affine", "SoftmaxWithLoss", "Dropout"}
    expected |= {"BatchNormalization", "Convolution", "Pooling", "relu", "step_function"}
    assert expected <= set(names)


@pytest.mark.parametrize(
    "build, x, error, match",
    [
        (lambda: fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)), np.ones((1, 2, 5, 5)),
         ValueError, "channels"),
        (lambda: fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(3)), np.ones((1, 1, 5, 5)),
         ValueError, "b has shape"),
        (lambda: fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)), np.ones((1, 1, 2, 5)),
         ValueError, "does not fit"),
        (lambda: fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(2), stride=0),
         np.ones((1, 1, 5, 5)), ValueError, "stride"),
        (lambda: fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(2)), np.ones((5, 5)),
         ValueError, "4-D"),
        (lambda: fast.Pooling(2, 2, pad=-1), np.ones((1, 1, 4, 4)), ValueError, "pad"),
        (lambda: fast.Pooling(2.5, 2), np.ones((1, 1, 4, 4)), TypeError, "filter height"),
        (lambda: fast.Pooling(2, 2), np.ones((1, 1, 4, 4), complex), TypeError, "x must"),
        (lambda: fast.BatchNormalization(np.ones(3), np.zeros(3)), np.ones((2, 4)),
         ValueError, "gamma"),
        (lambda: fast.Dropout(0.5), np.ones(3, int), TypeError, "x must"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument(build, x, error, match):
    with pytest.raises(error, match=match):
        build().forward(x)


def test_backward_before_forward_is_a_clear_error():
    layers = [fast.Convolution(np.ones((1, 1, 1, 1)), np.ones(1)), fast.Pooling(2, 2)]
    layers += [fast.Dropout(), fast.BatchNormalization(np.ones(1), np.ones(1))]
    for layer in layers:
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize("layer", ["Convolution", "Pooling"])
def test_backward_checks_dout_shape(rng, layer):
    x = normal(rng, (2, 1, 6, 6), F64)
    obj = (
        fast.Convolution(np.ones((2, 1, 3, 3)), np.ones(2))
        if layer == "Convolution"
        else (fast.Pooling(2, 2))
    )
    out = obj.forward(x)
    with pytest.raises(ValueError, match="dout has shape"):
        obj.backward(np.ones((out.shape[0] + 1, *out.shape[1:])))
