"""TwoLayerNet and MultiLayerNet: book API, agreement with the NumPy reference, gradients."""

import numpy as np
import pytest

from fastbp import reference
from fastbp.gradcheck import gradient_check
from fastbp.kernels.labels import argmax_matches
from fastbp.layers import Affine, Relu, Sigmoid, SoftmaxWithLoss
from fastbp.nets import MultiLayerNet, TwoLayerNet


def batch(n=8, features=12, classes=5, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(dtype)
    t = rng.integers(0, classes, n)
    return x, t, np.eye(classes)[t]


def twin_nets(seed=3, sizes=(12, 9, 5), std=0.5):
    """A fastbp and a reference TwoLayerNet with the same weights (global np.random state)."""
    np.random.seed(seed)  # noqa: NPY002
    net = TwoLayerNet(*sizes, weight_init_std=std)
    np.random.seed(seed)  # noqa: NPY002
    ref = reference.TwoLayerNet(*sizes, weight_init_std=std)
    return net, ref


def test_two_layer_net_has_the_book_structure():
    net = TwoLayerNet(12, 9, 5)
    assert list(net.params) == ["W1", "b1", "W2", "b2"]
    assert list(net.layers) == ["Affine1", "Relu1", "Affine2"]
    assert isinstance(net.layers["Relu1"], Relu) and isinstance(net.lastLayer, SoftmaxWithLoss)
    assert isinstance(net.layers["Affine1"], Affine)
    assert net.params["W1"] is net.layers["Affine1"].W
    assert net.params["b2"] is net.layers["Affine2"].b
    assert net.params["W1"].shape == (12, 9) and net.params["b2"].shape == (5,)
    assert net.params["W1"].dtype == np.float64 and not net.params["b1"].any()


@pytest.mark.parametrize("one_hot", [False, True])
def test_two_layer_net_matches_the_book(one_hot):
    net, ref = twin_nets()
    np.testing.assert_array_equal(net.params["W2"], ref.params["W2"])
    x, t, t1 = batch()
    labels = t1 if one_hot else t
    np.testing.assert_allclose(net.predict(x), ref.predict(x), rtol=1e-12)
    np.testing.assert_allclose(net.loss(x, labels), ref.loss(x, labels), rtol=1e-12)
    assert net.accuracy(x, labels) == ref.accuracy(x, labels)
    grads, ref_grads = net.gradient(x, labels), ref.gradient(x, labels)
    for key in ref_grads:
        np.testing.assert_allclose(grads[key], ref_grads[key], rtol=1e-12, atol=1e-15)


def test_in_place_updates_reach_the_layers():
    net, ref = twin_nets()
    x, t, _ = batch()
    for _ in range(3):
        for model in (net, ref):
            grads = model.gradient(x, t)
            for key in model.params:
                model.params[key] -= 0.5 * grads[key]
    np.testing.assert_allclose(net.loss(x, t), ref.loss(x, t), rtol=1e-12)
    assert net.params["W1"] is net.layers["Affine1"].W


def test_numerical_gradient_matches_the_book():
    net, ref = twin_nets(sizes=(4, 3, 2))
    x, t, _ = batch(n=3, features=4, classes=2)
    ours, theirs = net.numerical_gradient(x, t), ref.numerical_gradient(x, t)
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-9, atol=1e-12)


def test_float32_net_keeps_float32():
    net = TwoLayerNet(12, 9, 5, weight_init_std=0.5, dtype=np.float32, rng=0)
    x, t, _ = batch(dtype=np.float32)
    for _ in range(2):
        grads = net.gradient(x, t)
        assert all(g.dtype == np.float32 for g in grads.values())
        for key in net.params:
            net.params[key] -= 0.1 * grads[key]
    assert all(p.dtype == np.float32 for p in net.params.values())
    assert net.loss(x, t).dtype == np.float32 and net.predict(x).dtype == np.float32
    assert net.params["W1"] is net.layers["Affine1"].W


def test_float32_net_agrees_with_float64_net():
    net32 = TwoLayerNet(12, 9, 5, weight_init_std=0.5, dtype=np.float32, rng=4)
    net64 = TwoLayerNet(12, 9, 5, weight_init_std=0.5, rng=4)
    np.testing.assert_array_equal(net32.params["W1"], net64.params["W1"].astype(np.float32))
    x, t, _ = batch(dtype=np.float32)
    g32, g64 = net32.gradient(x, t), net64.gradient(x, t)
    for key in g64:
        np.testing.assert_allclose(g32[key], g64[key], rtol=1e-4, atol=1e-6)


def test_seeded_rng_is_reproducible():
    a, b, c = (TwoLayerNet(12, 9, 5, rng=seed) for seed in (7, 7, 8))
    np.testing.assert_array_equal(a.params["W1"], b.params["W1"])
    assert not np.array_equal(a.params["W1"], c.params["W1"])
    expected = 0.01 * np.random.default_rng(7).standard_normal((12, 9))
    np.testing.assert_array_equal(a.params["W1"], expected)


def test_multi_layer_net_structure_and_he_xavier_init():
    np.random.seed(5)  # noqa: NPY002
    net = MultiLayerNet(12, [9, 7], 5)
    np.random.seed(5)  # noqa: NPY002
    draws = [np.random.randn(*shape) for shape in ((12, 9), (9, 7), (7, 5))]  # noqa: NPY002
    for i, (fan_in, draw) in enumerate(zip((12, 9, 7), draws, strict=True), start=1):
        np.testing.assert_allclose(net.params[f"W{i}"], np.sqrt(2.0 / fan_in) * draw, rtol=1e-15)
    assert list(net.layers) == [
        "Affine1",
        "Activation_function1",
        "Affine2",
        "Activation_function2",
        "Affine3",
    ]
    assert net.last_layer is net.lastLayer and net.hidden_layer_num == 2
    sig = MultiLayerNet(12, [9], 5, activation="sigmoid", weight_init_std="xavier", rng=0)
    assert isinstance(sig.layers["Activation_function1"], Sigmoid)
    expected = np.sqrt(1.0 / 12) * np.random.default_rng(0).standard_normal((12, 9))
    np.testing.assert_allclose(sig.params["W1"], expected, rtol=1e-15)
    fixed = MultiLayerNet(12, [9], 5, weight_init_std=0.25, rng=0)
    np.testing.assert_allclose(fixed.params["W1"], expected * 0.25 / np.sqrt(1.0 / 12))


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("decay", [0.0, 0.1])
def test_multi_layer_net_gradient_matches_numerical(activation, decay):
    net = MultiLayerNet(6, [5, 4], 3, activation, weight_decay_lambda=decay, rng=2)
    x, t, t1 = batch(n=4, features=6, classes=3, seed=1)
    for labels in (t, t1):
        for key, diff in gradient_check(net, x, labels).items():
            assert diff.max_abs < 1e-6 and diff.max_rel < 1e-5, (key, diff)


def test_weight_decay_adds_the_l2_penalty():
    plain = MultiLayerNet(6, [5], 3, rng=2)
    decayed = MultiLayerNet(6, [5], 3, weight_decay_lambda=0.3, rng=2)
    x, t, _ = batch(n=4, features=6, classes=3)
    penalty = 0.15 * sum(np.sum(plain.params[k] ** 2) for k in ("W1", "W2"))
    np.testing.assert_allclose(decayed.loss(x, t), plain.loss(x, t) + penalty, rtol=1e-13)
    g, gd = plain.gradient(x, t), decayed.gradient(x, t)
    np.testing.assert_allclose(gd["W1"], g["W1"] + 0.3 * plain.params["W1"], rtol=1e-13)
    np.testing.assert_array_equal(gd["b1"], g["b1"])


@pytest.mark.parametrize("extend", [False, True])
@pytest.mark.parametrize("decay", [0, 0.3])
def test_a_nan_weight_makes_the_loss_nan_with_or_without_decay(extend, decay):
    """Without decay the penalty is not computed; a NaN weight still gives a NaN loss
    (through the forward pass), as the book's 0 * sum(W**2) does."""
    from fastbp.nets import MultiLayerNetExtend

    cls = MultiLayerNetExtend if extend else MultiLayerNet
    net = cls(6, [5], 3, weight_decay_lambda=decay, rng=2)
    x, t, _ = batch(n=4, features=6, classes=3)
    assert np.isfinite(net.loss(x, t))
    net.params["W2"][0, 0] = np.nan
    assert np.isnan(net.loss(x, t))


def test_accuracy_with_index_and_one_hot_labels():
    net = TwoLayerNet(12, 9, 5, weight_init_std=1.0, rng=0)
    x, t, t1 = batch(n=50)
    expected = np.mean(net.predict(x).argmax(axis=1) == t)
    assert net.accuracy(x, t) == net.accuracy(x, t1) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dtype": np.int64}, TypeError, "dtype"),
        ({"dtype": np.float16}, TypeError, "dtype"),
        ({"activation": "tanh"}, ValueError, "activation"),
        ({"weight_init_std": "lecun"}, ValueError, "weight_init_std"),
        ({"weight_decay_lambda": -1}, ValueError, "weight_decay_lambda"),
        ({"hidden_size_list": [4, 0]}, ValueError, "positive integers"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    args = {"input_size": 6, "hidden_size_list": [4], "output_size": 3, **kwargs}
    with pytest.raises(error, match=match):
        MultiLayerNet(**args)


def test_two_layer_net_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive integers"):
        TwoLayerNet(784, 50.5, 10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("n", "c"), [(1, 1), (1, 10), (7, 3), (2000, 10)])
def test_argmax_matches_counts_as_np_argmax(dtype, n, c):
    rng = np.random.default_rng(n * c)
    scores = rng.integers(0, 3, (n, c)).astype(dtype)  # many ties: the first one counts
    scores[rng.random((n, c)) < 0.05] = np.nan  # the first NaN counts, as in np.argmax
    scores[rng.random((n, c)) < 0.05] = -np.inf
    classes = rng.integers(0, c, n)
    expected = np.sum(scores.argmax(axis=1) == classes)
    assert argmax_matches(scores, classes) == expected
    assert argmax_matches(scores, scores.argmax(axis=1)) == n


def test_accuracy_is_the_books_value_and_type():
    net = TwoLayerNet(12, 9, 5, weight_init_std=1.0, rng=0)
    x, t, _ = batch(n=50)
    accuracy = net.accuracy(x, t)
    expected = np.sum(net.predict(x).argmax(axis=1) == t) / float(x.shape[0])
    assert accuracy == expected
    assert type(accuracy) is type(expected)
