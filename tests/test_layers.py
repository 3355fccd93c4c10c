"""fastbp.layers against the book's layer classes (fastbp.reference), attribute by attribute.

Every check compares outputs, gradients, the attributes the book's code reads (``mask``,
``out``, ``W``/``b``/``x``/``dW``/``db``/``original_x_shape``, ``loss``/``y``/``t``) and
result dtypes with what the book's NumPy code gives for the same input, and checks that
no input is modified. The book's ``Relu.backward`` zeroes ``dout`` in place, so it is
always handed a copy.
"""

import numpy as np
import pytest
from helpers import (
    CORE_KERNELS,
    FLOATS,
    INDEX_DTYPES,
    LAYOUTS,
    assert_loss_close,
    assert_same_array,
    in_layout,
    index_labels,
    normal,
    one_hot,
    rtol_for,
    untouched,
)

from fastbp import layers as fast
from fastbp import reference as book

F32, F64 = np.float32, np.float64
SHAPES = {"batch1": (1, 1), "odd": (7, 13), "nd": (2, 3, 4, 5)}
# Affine input shapes (N, ...) flattened to K = 13 or 784 features.
AFFINE_X = {"batch1": (1, 13), "odd": (7, 13), "images": (3, 1, 28, 28)}


@pytest.fixture(params=FLOATS, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


def with_zeros(x):
    """``x`` with every fifth entry exactly 0 (where ReLU's x <= 0 mask flips)."""
    x.reshape(-1)[::5] = 0
    return x


@pytest.mark.parametrize(
    "name", ["MulLayer", "AddLayer", "Relu", "Sigmoid", "Affine", "SoftmaxWithLoss"]
)
def test_public_attributes_are_the_books(name):
    args = (np.ones((2, 3)), np.ones(3)) if name == "Affine" else ()
    layer, book_layer = getattr(fast, name)(*args), getattr(book, name)(*args)
    public = {key for key in vars(layer) if not key.startswith("_")}
    assert public == set(vars(book_layer))
    for key in public:
        assert getattr(layer, key) is getattr(book_layer, key)  # None, or W and b themselves


# -- Relu, Sigmoid -----------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_relu_matches_book(rng, dtype, shape, layout):
    x = in_layout(with_zeros(normal(rng, shape, dtype)), layout)
    dout = in_layout(normal(rng, shape, dtype), layout)
    layer, book_layer = fast.Relu(), book.Relu()
    with untouched(x, dout):
        out = layer.forward(x)
        dx = layer.backward(dout)
    np.testing.assert_array_equal(out, book_layer.forward(x), strict=True)
    np.testing.assert_array_equal(layer.mask, book_layer.mask, strict=True)
    np.testing.assert_array_equal(dx, book_layer.backward(dout.copy()), strict=True)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_sigmoid_matches_book(rng, dtype, shape, layout):
    x = in_layout(normal(rng, shape, dtype, scale=4), layout)
    dout = in_layout(normal(rng, shape, dtype), layout)
    layer, book_layer = fast.Sigmoid(), book.Sigmoid()
    with untouched(x, dout):
        out = layer.forward(x)
        dx = layer.backward(dout)
    rtol = rtol_for(dtype)
    assert out is layer.out  # the book returns its attribute itself
    assert_same_array(out, book_layer.forward(x), rtol)
    assert_same_array(dx, book_layer.backward(dout), rtol)


@pytest.mark.parametrize("layer_class", ["Relu", "Sigmoid"])
@pytest.mark.parametrize(("x_dtype", "dout_dtype"), [(F32, F64), (F64, F32)])
def test_activation_gradient_dtype_follows_numpy(rng, layer_class, x_dtype, dout_dtype):
    x, dout = normal(rng, (4, 6), x_dtype), normal(rng, (4, 6), dout_dtype)
    layer, book_layer = getattr(fast, layer_class)(), getattr(book, layer_class)()
    layer.forward(x)
    book_layer.forward(x)
    # The book computes (1.0 - out) in out's dtype, so float32 accuracy is all it has.
    assert_same_array(layer.backward(dout), book_layer.backward(dout.copy()), rtol_for(F32))


def test_zero_dimensional_input_keeps_its_shape():
    x = np.array(-2.5)
    for name in ("Relu", "Sigmoid"):
        out = getattr(fast, name)().forward(x)
        assert out.shape == ()
        assert out == getattr(book, name)().forward(x)


# -- Affine ------------------------------------------------------------------------------


def check_affine(x, W, b, dout):
    """Run fastbp's and the book's Affine on the same data and compare everything."""
    layer, book_layer = fast.Affine(W, b), book.Affine(W, b)
    with untouched(x, W, b, dout):
        out = layer.forward(x)
        dx = layer.backward(dout)
    expected = book_layer.forward(x)
    expected_dx = book_layer.backward(dout)
    # Tolerance of each result: the precision the book computes it in.
    assert_same_array(out, expected, rtol_for(np.result_type(x, W)))
    assert_same_array(dx, expected_dx, rtol_for(np.result_type(dout, W)))
    assert_same_array(layer.dW, book_layer.dW, rtol_for(np.result_type(x, dout)))
    assert_same_array(layer.db, book_layer.db, rtol_for(dout.dtype))
    assert layer.W is W
    assert layer.b is b
    assert layer.original_x_shape == book_layer.original_x_shape == x.shape
    np.testing.assert_array_equal(layer.x, book_layer.x, strict=True)


def affine_data(rng, x_shape, x_dtype, w_dtype, b_dtype, dout_dtype=None, m=5):
    """x, W[K, m], b[m] and dout[N, m] (in the forward output's dtype unless given)."""
    k = int(np.prod(x_shape[1:]))
    x, W, b = normal(rng, x_shape, x_dtype), normal(rng, (k, m), w_dtype), normal(rng, m, b_dtype)
    dout_dtype = dout_dtype or np.result_type(x, W, b)
    return x, W, b, normal(rng, (x_shape[0], m), dout_dtype)


@pytest.mark.parametrize(
    "dtypes",
    [(F64, F64, F64), (F32, F32, F32), (F32, F64, F64), (F64, F32, F32), (F32, F32, F64)]
    + [(F32, F32, F32, F64), (F64, F64, F64, F32), (F32, F64, F64, F32)],
    ids=lambda d: "-".join(np.dtype(t).name for t in d),
)
@pytest.mark.parametrize("x_shape", AFFINE_X.values(), ids=AFFINE_X.keys())
def test_affine_matches_book(rng, x_shape, dtypes):
    """dtypes: x, W, b (and dout; by default the dtype of the forward output)."""
    check_affine(*affine_data(rng, x_shape, *dtypes))


@pytest.mark.parametrize("bias", [0, -1.5])
@pytest.mark.parametrize("dtypes", [(F32, F32), (F32, F64), (F64, F64)], ids=str)
def test_affine_takes_a_number_as_bias_like_the_book(rng, bias, dtypes):
    """The number broadcasts as in the book's ``x @ W + b`` and leaves the dtypes alone."""
    x, W, _, dout = affine_data(rng, (7, 6), *dtypes, dtypes[1])
    layer, book_layer = fast.Affine(W, bias), book.Affine(W, bias)
    out, expected = layer.forward(x), book_layer.forward(x)
    assert_same_array(out, expected, rtol_for(np.result_type(x, W)))
    assert_same_array(layer.backward(dout), book_layer.backward(dout), rtol_for(out.dtype))
    assert_same_array(layer.db, book_layer.db, rtol_for(dout.dtype))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("x_shape", AFFINE_X.values(), ids=AFFINE_X.keys())
def test_affine_accepts_any_layout(rng, x_shape, layout):
    x, W, b, dout = affine_data(rng, x_shape, F32, F64, F64)
    check_affine(*(in_layout(a, layout if a.ndim > 1 else "strided") for a in (x, W, b, dout)))


@pytest.mark.parametrize("w_layout", ["C", "F", "strided"])
def test_affine_sees_in_place_updates_of_its_params(rng, w_layout):
    x, W, b, dout = affine_data(rng, (6, 4), F64, F64, F64)
    W = in_layout(W, w_layout)
    layer = fast.Affine(W, b)
    layer.forward(x)
    layer.backward(dout)
    # SGD as the book writes it: the caller's arrays are updated in place.
    W -= 0.1 * layer.dW
    b -= 0.1 * layer.db
    before = layer.forward(x)
    np.testing.assert_allclose(before, book.affine_forward(x, W, b), rtol=1e-12, atol=1e-12)
    # A numerical-gradient perturbation: out[:, 0] moves by h * x[:, 0], out[:, 1] by h.
    h = 1e-4
    W[0, 0] += h
    b[1] += h
    change = layer.forward(x) - before
    expected = np.zeros_like(change)
    expected[:, 0] = h * x[:, 0]
    expected[:, 1] = h
    np.testing.assert_allclose(change, expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("n", [300, 700])  # 700: the trial runs take the first 512 rows
@pytest.mark.parametrize("dtypes", [(F32, F64), (F64, F64), (F32, F32)], ids=str)
def test_affine_on_a_sparse_batch_keeps_one_first_layer(rng, monkeypatch, dtypes, n):
    """Mostly-zero images: the first forward and backward of the shape time the sparse
    layer against the BLAS; every later call gives the same bits, the book's to rounding."""
    from fastbp.kernels import dispatch

    monkeypatch.setattr(dispatch, "_sparse_choices", {})
    x, W, b, dout = affine_data(rng, (n, 1, 28, 28), *dtypes, dtypes[1])
    x *= rng.random(x.shape) < 0.2
    layer, book_layer = fast.Affine(W, b), book.Affine(W, b)
    out, dx = layer.forward(x), layer.backward(dout)
    dW = layer.dW.copy()
    assert sorted(key[0] for key in dispatch._sparse_choices) == [
        "affine_backward",
        "affine_forward",
    ]
    rtol = rtol_for(np.result_type(*dtypes))
    assert_same_array(out, book_layer.forward(x), rtol)
    assert_same_array(dx, book_layer.backward(dout), rtol)
    assert_same_array(dW, book_layer.dW, rtol)
    for _ in range(2):
        np.testing.assert_array_equal(layer.forward(x), out, strict=True)
        np.testing.assert_array_equal(layer.backward(dout), dx, strict=True)
        np.testing.assert_array_equal(layer.dW, dW, strict=True)


# -- SoftmaxWithLoss -------------------------------------------------------------------------

LABELS = [np.dtype(d).name for d in INDEX_DTYPES] + [
    f"onehot-{np.dtype(d).name}" for d in (F64, F32, np.int64, np.uint8, np.bool_)
]


def make_labels(rng, n, c, kind):
    """Class indices of dtype ``kind`` or one-hot rows of dtype ``kind[7:]``."""
    if kind.startswith("onehot-"):
        return one_hot(index_labels(rng, n, c), c, kind.removeprefix("onehot-"))
    return index_labels(rng, n, c, kind)


@pytest.mark.parametrize("labels", LABELS)
@pytest.mark.parametrize("shape", [(1, 10), (7, 13)], ids=["batch1", "odd"])
def test_softmax_with_loss_matches_book(rng, dtype, shape, labels):
    x = normal(rng, shape, dtype, scale=3)
    t = make_labels(rng, *shape, labels)
    layer, book_layer = fast.SoftmaxWithLoss(), book.SoftmaxWithLoss()
    with untouched(x, t):
        loss = layer.forward(x, t)
        dx = layer.backward()
    rtol = rtol_for(dtype)
    expected_loss = book_layer.forward(x, t)
    assert type(loss) is type(expected_loss)
    assert_loss_close(loss, expected_loss, rtol)
    assert layer.loss is loss
    assert layer.t is t
    assert_same_array(layer.y, book_layer.y, rtol)
    assert_same_array(dx, book_layer.backward(), rtol)


def test_softmax_with_loss_scales_the_gradient_by_dout(rng):
    """A documented difference: the book ignores dout, fastbp multiplies by it."""
    x, t = normal(rng, (5, 4), F64), index_labels(rng, 5, 4)
    layer = fast.SoftmaxWithLoss()
    layer.forward(x, t)
    np.testing.assert_allclose(layer.backward(2.5), 2.5 * layer.backward(), rtol=1e-15)


@pytest.mark.parametrize(
    "label",
    [3, np.int64(3), np.array([3]), np.array([3], np.uint8), one_hot(3, 13)],
    ids=["int", "np.int64", "array1", "array1-uint8", "onehot"],
)
def test_softmax_with_loss_single_sample(rng, dtype, label):
    """A 1-D x is one sample, as in the book's cross_entropy_error."""
    x = normal(rng, 13, dtype, scale=3)
    layer, book_layer = fast.SoftmaxWithLoss(), book.SoftmaxWithLoss()
    rtol = rtol_for(dtype)
    loss = layer.forward(x, label)
    assert_loss_close(loss, book_layer.forward(x, label), rtol)
    assert layer.t is label
    assert_same_array(layer.y, book_layer.y, rtol)
    # The book's backward mishandles a single sample (it divides a one-hot gradient by C
    # and cannot index with a scalar label): compare with the batch of one instead.
    batch_layer = book.SoftmaxWithLoss()
    batch_layer.forward(x[np.newaxis], np.reshape(label, (1, -1) if np.size(label) > 1 else 1))
    assert_same_array(layer.backward(), batch_layer.backward()[0], rtol)


# -- MulLayer, AddLayer ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["MulLayer", "AddLayer"])
def test_mul_and_add_layers_broadcast_like_book(rng, name):
    x, y, dout = normal(rng, (3, 4), F32), normal(rng, 4, F64), normal(rng, (3, 4), F64)
    layer, book_layer = getattr(fast, name)(), getattr(book, name)()
    with untouched(x, y, dout):
        out = layer.forward(x, y)
        grads = layer.backward(dout)
    np.testing.assert_array_equal(out, book_layer.forward(x, y), strict=True)
    for grad, expected in zip(grads, book_layer.backward(dout), strict=True):
        np.testing.assert_array_equal(grad, expected, strict=True)
    assert vars(layer).keys() == vars(book_layer).keys()
    for key, value in vars(layer).items():
        assert value is getattr(book_layer, key)


# -- bad input: clear errors, raised before any kernel runs and before any state changes ---


@pytest.fixture
def forbid_kernels(monkeypatch):
    """Call it to make every kernel that fastbp.layers calls fail the test."""

    def kernel(*args):
        pytest.fail("a kernel ran on invalid input")

    def forbid():
        for name in CORE_KERNELS:
            monkeypatch.setattr(fast, name, kernel)

    return forbid


def ready_layers(rng):
    """Each layer after a valid forward and backward, and the data it ran on."""
    x, W, b, dout = affine_data(rng, (4, 3), F64, F64, F64)
    t = index_labels(rng, 4, 5)
    layers = {"relu": fast.Relu(), "sigmoid": fast.Sigmoid(), "affine": fast.Affine(W, b)}
    for layer in layers.values():
        layer.forward(x)
    layers["relu"].backward(x)
    layers["sigmoid"].backward(x)
    layers["affine"].backward(dout)
    layers["softmax"] = fast.SoftmaxWithLoss()
    layers["softmax"].forward(normal(rng, (4, 5), F64), t)
    layers["softmax"].backward()
    return layers


BAD_CALLS = {
    # name: (layer, method, args, exception, message pattern)
    "label-too-large": ("softmax", "forward", (np.zeros((2, 5)), [0, 5]), ValueError, "range"),
    "label-negative": ("softmax", "forward", (np.zeros((2, 5)), [0, -1]), ValueError, "range"),
    "label-count": ("softmax", "forward", (np.zeros((2, 5)), [0, 1, 2]), ValueError, "labels"),
    "onehot-width": ("softmax", "forward", (np.zeros((2, 5)), np.eye(4)[:2]), ValueError, "t"),
    "softmax-int-x": ("softmax", "forward", (np.zeros((2, 5), int), [0, 1]), TypeError, "x"),
    "softmax-empty": ("softmax", "forward", (np.zeros((0, 5)), []), ValueError, "empty"),
    "affine-features": ("affine", "forward", (np.zeros((4, 2)),), ValueError, "features"),
    "affine-int-x": ("affine", "forward", (np.zeros((4, 3), int),), TypeError, "x"),
    "affine-bool-x": ("affine", "forward", (np.zeros((4, 3), bool),), TypeError, "x"),
    "affine-empty": ("affine", "forward", (np.zeros((0, 3)),), ValueError, "empty"),
    "affine-dout-shape": ("affine", "backward", (np.zeros((4, 4)),), ValueError, "dout"),
    "affine-int-dout": ("affine", "backward", (np.zeros((4, 2), int),), TypeError, "dout"),
    "relu-int-x": ("relu", "forward", (np.zeros((4, 3), int),), TypeError, "x"),
    "relu-bool-x": ("relu", "forward", (np.zeros((4, 3), bool),), TypeError, "x"),
    "relu-dout-shape": ("relu", "backward", (np.zeros((3, 4)),), ValueError, "dout"),
    "sigmoid-int-x": ("sigmoid", "forward", (np.zeros((4, 3), np.int32),), TypeError, "x"),
    "sigmoid-dout-shape": ("sigmoid", "backward", (np.zeros(12),), ValueError, "dout"),
}


@pytest.mark.parametrize("case", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_before_any_kernel_runs(rng, forbid_kernels, case):
    name, method, args, error, pattern = case
    layer = ready_layers(rng)[name]
    state = dict(vars(layer))
    forbid_kernels()
    with untouched(*args), pytest.raises(error, match=pattern):
        getattr(layer, method)(*args)
    # A failed call leaves the layer as it was, so a later backward stays consistent.
    assert vars(layer).keys() == state.keys()
    for key, value in vars(layer).items():
        assert value is state[key], f"{key} changed"
