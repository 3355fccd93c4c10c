"""The book's ch.5 TwoLayerNet, its code unchanged, runs on fastbp's layers.

``DropInTwoLayerNet`` is the book's class (``fastbp.reference.TwoLayerNet``: predict, loss,
accuracy, gradient and numerical_gradient verbatim) with one change, the one a reader
makes: its OrderedDict of layers is built from ``fastbp.layers`` instead of
``common.layers``. Training uses the book's in-place update ``params[key] -= lr * grad``,
which reaches the Affine layers only because they hold W and b by reference.
"""

from collections import OrderedDict

import numpy as np
import pytest
from helpers import assert_same_array

from fastbp import layers as fast
from fastbp import reference as book

KEYS = ("W1", "b1", "W2", "b2")


class DropInTwoLayerNet(book.TwoLayerNet):
    """The book's TwoLayerNet after ``from fastbp.layers import *``."""

    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        super().__init__(input_size, hidden_size, output_size, weight_init_std)
        self.layers = OrderedDict()
        self.layers["Affine1"] = fast.Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = fast.Relu()
        self.layers["Affine2"] = fast.Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = fast.SoftmaxWithLoss()


def seeded(net, rng, weight_init_std):
    """``net`` with its weights redrawn from ``rng``, in place (the layers keep them)."""
    for key in ("W1", "W2"):
        net.params[key][...] = weight_init_std * rng.standard_normal(net.params[key].shape)
    return net


def copy_params(source, target):
    """Give ``target`` the parameter values of ``source``, in place."""
    for key in KEYS:
        target.params[key][...] = source.params[key]


def blobs(rng, n_per_class, n_classes=3, n_features=8, x_dtype=np.float64):
    """A learnable problem: Gaussian clusters around random centres, shuffled."""
    centres = 2.0 * rng.standard_normal((n_classes, n_features))
    t = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[t] + rng.standard_normal((t.size, n_features))
    order = rng.permutation(t.size)
    return x[order].astype(x_dtype), t[order]


@pytest.mark.parametrize("onehot", [False, True], ids=["index", "onehot"])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_trains_and_matches_the_book_at_every_step(rng, x_dtype, onehot):
    x, t = blobs(rng, 150, x_dtype=x_dtype)
    if onehot:
        t = np.eye(3)[t]
    (x_train, x_test), (t_train, t_test) = np.split(x, [300]), np.split(t, [300])
    net = seeded(DropInTwoLayerNet(8, 16, 3), rng, 0.01)
    book_net = book.TwoLayerNet(8, 16, 3)
    learning_rate, batch_size = 0.1, 32
    losses = []
    for _ in range(300):  # the book's train_neural_net.py loop, shortened
        batch_mask = rng.choice(x_train.shape[0], batch_size)
        x_batch, t_batch = x_train[batch_mask], t_train[batch_mask]
        grad = net.gradient(x_batch, t_batch)
        copy_params(net, book_net)
        book_grad = book_net.gradient(x_batch, t_batch)
        for key in KEYS:
            assert_same_array(grad[key], book_grad[key], rtol=1e-12)
        losses.append(net.lastLayer.loss)
        for key in KEYS:
            net.params[key] -= learning_rate * grad[key]
    assert net.layers["Affine1"].W is net.params["W1"]
    assert np.mean(losses[-20:]) < 0.1 * losses[0]
    assert net.accuracy(x_train, t_train) > 0.95
    assert net.accuracy(x_test, t_test) > 0.95


def test_numerical_gradient_matches_backprop(rng):
    """The book's gradient check; numerical_gradient perturbs params in place."""
    x, t = blobs(rng, 2)
    net = seeded(DropInTwoLayerNet(8, 5, 3), rng, 0.3)
    params = {key: value.copy() for key, value in net.params.items()}
    numerical = net.numerical_gradient(x, t)
    for key in KEYS:
        np.testing.assert_array_equal(net.params[key], params[key])  # restored exactly
    backprop = net.gradient(x, t)
    for key in KEYS:
        # Central differences with the book's h = 1e-4 are accurate to about h**2, and the
        # book's loss adds 1e-7 inside the log, which backprop ignores: ~1e-6 in all.
        np.testing.assert_allclose(numerical[key], backprop[key], rtol=1e-4, atol=1e-5)
