"""Optimizers: one step against the book's NumPy code, state, validation, training."""

import numpy as np
import pytest

from fastbp import optimizers, reference
from fastbp.cli import OPTIMIZERS
from fastbp.data import load_mnist
from fastbp.kernels import force_path
from fastbp.nets import TwoLayerNet
from fastbp.train import blas_threads, train

NAMES = ["SGD", "Momentum", "AdaGrad", "Adam"]
KWARGS = {
    "SGD": {"lr": 0.1},
    "Momentum": {"lr": 0.05, "momentum": 0.8},
    "AdaGrad": {"lr": 0.2},
    "Adam": {"lr": 0.01, "beta1": 0.8, "beta2": 0.99},
}
RTOL = {np.float64: 1e-13, np.float32: 2e-6}


def problem(dtype, grad_dtype=None, seed=0):
    """params and a few steps of grads, shaped like a small TwoLayerNet's."""
    rng = np.random.default_rng(seed)
    shapes = {"W1": (7, 5), "b1": (5,), "W2": (5, 3), "b2": (3,)}
    params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    grads = [
        {k: rng.standard_normal(s).astype(grad_dtype or dtype) for k, s in shapes.items()}
        for _ in range(3)
    ]
    return params, grads


def run(module, name, params, grads):
    params = {k: v.copy() for k, v in params.items()}
    opt = getattr(module, name)(**KWARGS[name])
    for g in grads:
        opt.update(params, g)
    return params, opt


@pytest.mark.parametrize("path", ["serial", "parallel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", NAMES)
def test_steps_match_the_book(name, dtype, path):
    params, grads = problem(dtype)
    expected, ref_opt = run(reference, name, params, grads[:1])
    with force_path(path):
        got, opt = run(optimizers, name, params, grads[:1])
        for key in params:
            assert got[key].dtype == dtype
            np.testing.assert_allclose(got[key], expected[key], rtol=RTOL[dtype], atol=0)
        # two more steps: the state (v, h, m, iter) carries over like the book's
        expected, _ = run(reference, name, params, grads)
        got, _ = run(optimizers, name, params, grads)
    for key in params:
        np.testing.assert_allclose(got[key], expected[key], rtol=RTOL[dtype] * 10, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_follow_numpy(name):
    params, grads = problem(np.float32, grad_dtype=np.float64)
    expected, _ = run(reference, name, params, grads)
    got, _ = run(optimizers, name, params, grads)
    for key in params:
        assert got[key].dtype == np.float32
        np.testing.assert_allclose(got[key], expected[key], rtol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_updates_in_place_and_allocates_state_once(name):
    params, grads = problem(np.float64)
    originals = dict(params)
    opt = getattr(optimizers, name)(**KWARGS[name])
    opt.update(params, grads[0])
    states = {s: dict(getattr(opt, s)) for s in opt.state_names}
    opt.update(params, grads[1])
    for key in params:
        assert params[key] is originals[key]
        for s in opt.state_names:
            assert getattr(opt, s)[key] is states[s][key]
            assert getattr(opt, s)[key].shape == params[key].shape


def test_state_names_and_defaults_are_the_book_s():
    assert optimizers.SGD().lr == 0.01
    m = optimizers.Momentum()
    assert (m.lr, m.momentum, m.v) == (0.01, 0.9, None)
    assert optimizers.AdaGrad().lr == 0.01
    a = optimizers.Adam()
    assert (a.lr, a.beta1, a.beta2, a.iter, a.m, a.v) == (0.001, 0.9, 0.999, 0, None, None)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_raises_before_any_update(name):
    params, grads = problem(np.float64)
    before = {k: v.copy() for k, v in params.items()}
    opt = getattr(optimizers, name)()
    bad_shape = {**grads[0], "b2": np.zeros(4)}
    with pytest.raises(ValueError, match=r"grads\['b2'\] has shape \(4,\)"):
        opt.update(params, bad_shape)
    with pytest.raises(ValueError, match=r"grads has no entry for params\['W2'\]"):
        opt.update(params, {k: v for k, v in grads[0].items() if k != "W2"})
    with pytest.raises(TypeError, match=r"grads\['W1'\] must be a float32 or float64"):
        opt.update(params, {**grads[0], "W1": grads[0]["W1"].astype(int)})
    with pytest.raises(TypeError, match=r"params\['b1'\] must be a float32 or float64"):
        opt.update({**params, "b1": np.zeros(5, int)}, grads[0])
    with pytest.raises(ValueError, match=r"params\['W1'\] must be a writable C-contiguous"):
        opt.update({**params, "W1": np.asfortranarray(params["W1"])}, grads[0])
    with pytest.raises(TypeError, match="must be a NumPy array"):
        opt.update({**params, "b1": [0.0] * 5}, grads[0])
    for key in params:
        np.testing.assert_array_equal(params[key], before[key])
    assert getattr(opt, "iter", 0) == 0


@pytest.mark.parametrize("name", ["Momentum", "AdaGrad", "Adam"])
def test_state_rejects_different_parameters(name):
    params, grads = problem(np.float64)
    opt = getattr(optimizers, name)()
    opt.update(params, grads[0])
    with pytest.raises(ValueError, match="use a new optimizer"):
        opt.update({**params, "b2": np.zeros(6)}, {**grads[1], "b2": np.zeros(6)})


def test_non_contiguous_grads_are_accepted():
    params, grads = problem(np.float64)
    strided = {k: np.asfortranarray(g) for k, g in grads[0].items()}
    expected, _ = run(reference, "Adam", params, grads[:1])
    got, _ = run(optimizers, "Adam", params, [strided])
    for key in params:
        np.testing.assert_allclose(got[key], expected[key], rtol=1e-13)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_trains_to_90_percent_with_its_default_rate(name):
    """TwoLayerNet on the embedded split, 4 epochs, with ``fastbp train``'s default rates."""
    data = load_mnist()
    rng = np.random.default_rng(0)
    net = TwoLayerNet(784, 50, 10, rng=rng, dtype=np.float32)
    class_name, lr = OPTIMIZERS[name]
    with blas_threads(1):  # as fastbp train runs: small GEMMs, one thread
        history = train(net, getattr(optimizers, class_name)(lr=lr), data, 100, 4, rng)
    assert history.test_acc[-1] >= 0.90, history.test_acc
