"""Numerical gradients and the gradient check of TwoLayerNet on real MNIST images."""

import numpy as np
import pytest

from fastbp.data import load_mnist
from fastbp.gradcheck import STEP, compare, gradient_check, numerical_gradient
from fastbp.nets import TwoLayerNet


def test_numerical_gradient_of_a_known_function_restores_x():
    x = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5]])
    before = x.copy()
    grad = numerical_gradient(lambda _: np.sum(x**3), x)
    np.testing.assert_allclose(grad, 3 * before**2, rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(x, before)


def test_compare_reports_abs_and_relative_difference():
    assert compare(np.array([1.0, -4.0]), np.array([1.5, -4.0])) == (0.5, 0.125)
    assert compare(np.zeros(3), np.zeros(3)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="shape"):
        compare(np.zeros(3), np.zeros(4))


def test_two_layer_net_backprop_matches_numerical_gradient_on_mnist():
    (x, t), _ = load_mnist(one_hot_label=True)
    x, t = x[:3], t[:3]
    net = TwoLayerNet(784, 10, 10, rng=1)
    # Central differences are only valid away from ReLU's kink: no hidden pre-activation may
    # lie within a few steps h of 0 (seed 0 has one at 7.5e-5 < h, like the book's nets can).
    assert np.abs(x @ net.params["W1"]).min() > 10 * STEP
    diffs = gradient_check(net, x, t)
    assert set(diffs) == {"W1", "b1", "W2", "b2"}
    for key, diff in diffs.items():
        # max_rel is ~1e-6 by design: the loss is -log(y + 1e-7), backprop uses y - t.
        assert diff.max_abs < 1e-6 and diff.max_rel < 1e-5, (key, diff)


def test_gradient_check_catches_a_wrong_gradient():
    (x, t), _ = load_mnist()
    net = TwoLayerNet(784, 4, 10, weight_init_std=0.1, rng=1)
    right = net.gradient

    def wrong(x, t):
        grads = right(x, t)
        return {**grads, "b2": grads["b2"] * 1.01}

    net.gradient = wrong
    diffs = gradient_check(net, x[:3], t[:3])
    assert diffs["b2"].max_rel > 1e-3 and diffs["W2"].max_abs < 1e-6
