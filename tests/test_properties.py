"""Property tests (hypothesis): random shapes, dtypes and values through fastbp.layers.

Shapes include 0-d and empty arrays for the elementwise layers; values include NaN, inf
and signed zeros where NumPy's rules define the result.
"""

import numpy as np
from helpers import (
    FLOATS,
    INDEX_DTYPES,
    PROPERTY,
    assert_close,
    assert_loss_close,
    assert_same_array,
    rtol_for,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastbp import layers as fast
from fastbp import reference as book

float_dtypes = st.sampled_from(FLOATS)


@st.composite
def float_arrays(draw, shape, bound=None):
    """Arrays of a drawn float dtype; any float (NaN, inf too) unless ``bound`` is given."""
    dtype = draw(float_dtypes)
    width = np.dtype(dtype).itemsize * 8
    elements = st.floats(width=width) if bound is None else st.floats(-bound, bound, width=width)
    return draw(hnp.arrays(dtype, shape, elements=elements))


any_shape = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)


def logits_and_labels(bound):
    """(x[N, C], t[N]) with class indices of a drawn integer dtype."""

    @st.composite
    def draw_pair(draw):
        n, c = draw(st.integers(1, 8)), draw(st.integers(1, 10))
        x = draw(float_arrays((n, c), bound))
        dtype = draw(st.sampled_from(INDEX_DTYPES))
        return x, draw(hnp.arrays(dtype, n, elements=st.integers(0, c - 1)))

    return draw_pair()


@PROPERTY
@given(x=float_arrays(any_shape), data=st.data())
def test_relu_matches_book(x, data):
    dout = data.draw(float_arrays(st.just(x.shape)))
    layer, book_layer = fast.Relu(), book.Relu()
    out, dx = layer.forward(x), layer.backward(dout)
    expected = book_layer.forward(x)
    np.testing.assert_array_equal(out, expected, strict=True)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))
    np.testing.assert_array_equal(layer.mask, np.asarray(book_layer.mask), strict=True)
    np.testing.assert_array_equal(dx, book_layer.backward(dout.copy()), strict=True)


@PROPERTY
@given(x=float_arrays(any_shape), data=st.data())
def test_sigmoid_matches_reference(x, data):
    dout = data.draw(float_arrays(st.just(x.shape), bound=1e3))
    layer = fast.Sigmoid()
    out, dx = layer.forward(x), layer.backward(dout)
    with np.errstate(invalid="ignore"):  # NumPy warns on logaddexp(0, inf); y is right
        expected = book.sigmoid(x)
    assert_same_array(out, expected, rtol_for(x.dtype))
    # From the layer's own y: near y = 1 (x = 7 in float32) the book's (1 - y) turns
    # y's last-bit difference into a relative one of ~1e-4, which is y's, not backward's.
    expected_dx = book.sigmoid_backward(dout, out)
    assert_same_array(dx, expected_dx, rtol_for(x.dtype, dout.dtype))


@PROPERTY
@given(pair=logits_and_labels(bound=50))
def test_softmax_rows_are_distributions(pair):
    x, t = pair
    layer = fast.SoftmaxWithLoss()
    loss = layer.forward(x, t)
    rtol = rtol_for(x.dtype)
    assert ((layer.y >= 0) & (layer.y <= 1)).all()
    np.testing.assert_allclose(layer.y.sum(axis=1), 1, rtol=rtol)
    expected_loss, expected_y = book.softmax_ce_forward(x, t)
    assert_same_array(layer.y, expected_y, rtol)
    assert_loss_close(loss, expected_loss, rtol)


@PROPERTY
@given(pair=logits_and_labels(bound=50), shift=st.floats(-100, 100))
def test_softmax_is_shift_invariant(pair, shift):
    x, t = pair
    x = x.astype(np.float64)
    layer, shifted = fast.SoftmaxWithLoss(), fast.SoftmaxWithLoss()
    loss, shifted_loss = layer.forward(x, t), shifted.forward(x + shift, t)
    # x + shift is rounded: the logits themselves move by up to |shift| * 2**-53.
    assert_close(shifted.y, layer.y, rtol=1e-12)
    np.testing.assert_allclose(shifted_loss, loss, rtol=1e-12, atol=1e-12)


@PROPERTY
@given(pair=logits_and_labels(bound=2))
def test_softmax_ce_gradient_is_the_loss_gradient(pair):
    """backward() against central differences of forward() in every logit."""
    x, t = pair
    x, h = x.astype(np.float64), 1e-5
    layer = fast.SoftmaxWithLoss()
    layer.forward(x, t)
    dx = layer.backward()
    numerical = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[idx] = h
        probe = fast.SoftmaxWithLoss()
        numerical[idx] = (probe.forward(x + step, t) - probe.forward(x - step, t)) / (2 * h)
    # Truncation and rounding are ~1e-10; the loss's log(y + 1e-7), whose 1e-7 backprop
    # ignores, shifts the gradient by up to 1e-7 / y <= 3e-5 relative for |x| <= 2.
    np.testing.assert_allclose(dx, numerical, rtol=1e-4, atol=1e-6)


@PROPERTY
@given(
    sizes=st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
    dtypes=st.tuples(float_dtypes, float_dtypes, float_dtypes),
    data=st.data(),
)
def test_affine_matches_book(sizes, dtypes, data):
    (n, k, m), (x_dtype, w_dtype, b_dtype) = sizes, dtypes
    x = data.draw(hnp.arrays(x_dtype, (n, k), elements=st.floats(-10, 10, width=32)))
    W = data.draw(hnp.arrays(w_dtype, (k, m), elements=st.floats(-10, 10, width=32)))
    b = data.draw(hnp.arrays(b_dtype, m, elements=st.floats(-10, 10, width=32)))
    layer, book_layer = fast.Affine(W, b), book.Affine(W, b)
    out = layer.forward(x)
    dx = layer.backward(out)
    expected = book_layer.forward(x)
    assert_same_array(out, expected, rtol_for(x.dtype, W.dtype))
    assert_same_array(dx, book_layer.backward(expected), rtol_for(x.dtype, W.dtype))
    assert_same_array(layer.dW, book_layer.dW, rtol_for(x.dtype, W.dtype))
    assert_same_array(layer.db, book_layer.db, rtol_for(x.dtype, W.dtype))
