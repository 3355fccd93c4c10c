"""Issue 10's findings that run in-process: optimizer state, mixed-dtype Affine, lazy import.

(The crash-prone scenarios are in tests/test_stress.py, each in a subprocess.)
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest

from fastbp import layers, optimizers
from fastbp import reference as ref

OPTIMIZERS = ("Momentum", "AdaGrad", "Adam")
STATE = {"Momentum": "v", "AdaGrad": "h", "Adam": "m"}


def two_params(rng):
    return {"W": rng.standard_normal((3, 4)), "b": rng.standard_normal(4)}


def grads_like(params, rng):
    return {k: rng.standard_normal(p.shape) for k, p in params.items()}


def stepped(name, rng):
    """(fastbp optimizer, book optimizer, params of each, grads) after one common step."""
    params, grads = two_params(rng), None
    grads = grads_like(params, rng)
    ours, book = getattr(optimizers, name)(lr=0.1), getattr(ref, name)(lr=0.1)
    ours_params = {k: p.copy() for k, p in params.items()}
    book_params = {k: p.copy() for k, p in params.items()}
    ours.update(ours_params, grads)
    book.update(book_params, grads)
    return ours, book, ours_params, book_params, grads


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("restore", [np.asfortranarray, lambda a: a.astype(">f8")])
def test_restored_state_in_another_layout_is_stored_like_numpy(rng, name, restore):
    ours, book, ours_params, book_params, grads = stepped(name, rng)
    state = STATE[name]
    for opt in (ours, book):
        W = getattr(opt, state)["W"]
        getattr(opt, state)["W"] = restore(np.stack([W[0], W[1], W[2]]))
    for _ in range(2):
        ours.update(ours_params, grads)
        book.update(book_params, grads)
    for key in ours_params:
        np.testing.assert_allclose(ours_params[key], book_params[key], rtol=1e-12)
        np.testing.assert_allclose(getattr(ours, state)[key], getattr(book, state)[key], rtol=1e-12)


def test_momentum_replaces_integer_or_read_only_state_like_numpy(rng, tmp_path):
    ours, book, ours_params, book_params, grads = stepped("Momentum", rng)
    np.save(tmp_path / "v.npy", ours.v["b"])
    for opt in (ours, book):
        opt.v["W"] = (100 * opt.v["W"]).astype(np.int64)
        opt.v["b"] = np.load(tmp_path / "v.npy", mmap_mode="r")
    ours.update(ours_params, grads)
    book.update(book_params, grads)
    for key in ours_params:
        np.testing.assert_allclose(ours_params[key], book_params[key], rtol=1e-12)
        assert ours.v[key].dtype == book.v[key].dtype == np.float64
        np.testing.assert_allclose(ours.v[key], book.v[key], rtol=1e-12)


@pytest.mark.parametrize("name", ["AdaGrad", "Adam"])
@pytest.mark.parametrize("bad", ["int64", "read-only", "float16"])
def test_in_place_state_that_cannot_be_updated_raises_before_any_update(rng, tmp_path, name, bad):
    ours, _, params, _, grads = stepped(name, rng)
    states = getattr(ours, STATE[name])
    if bad == "int64":
        states["b"] = states["b"].astype(np.int64)
    elif bad == "float16":
        states["b"] = states["b"].astype(np.float16)
    else:
        np.save(tmp_path / "s.npy", states["b"])
        states["b"] = np.load(tmp_path / "s.npy", mmap_mode="r")
    before = {k: p.copy() for k, p in params.items()}
    saved = {k: np.array(v) for k, v in states.items()}
    with pytest.raises((TypeError, ValueError), match=r"\['b'\]"):
        ours.update(params, grads)
    for key in params:  # "W" comes first and was not updated either
        np.testing.assert_array_equal(params[key], before[key])
        np.testing.assert_array_equal(states[key], saved[key])


@pytest.mark.parametrize("name", ["SGD", *OPTIMIZERS])
def test_grad_overlapping_its_param_gives_numpys_result(name):
    results = []
    for module in (optimizers, ref):
        buffer = np.linspace(-1, 1, 13)
        params = {"W": buffer[1:]}  # the grad is the same memory shifted by one element
        grads = {"W": buffer[:-1]}
        opt = getattr(module, name)(lr=0.1)
        for _ in range(2):
            opt.update(params, grads)
        results.append(buffer)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-12)


def test_affine_float32_data_with_a_float64_bias_warns_nothing():
    x = np.full((2, 3), 3e38, np.float32)
    W = np.ones((3, 2), np.float32)
    b = np.zeros(2)
    dout = np.full((2, 2), 3e38, np.float32)
    layer = layers.Affine(W, b)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = layer.forward(x)
        dx = layer.backward(dout)
    book = ref.Affine(W, b)
    with np.errstate(all="ignore"):
        expected_out = book.forward(x)
        expected_dx = book.backward(dout)
    assert out.dtype == expected_out.dtype == np.float64
    assert dx.dtype == expected_dx.dtype == np.float32 and np.isinf(dx).all()
    assert layer.dW.dtype == book.dW.dtype and layer.db.dtype == book.db.dtype


IMPORT_CHECK = """
import sys
import fastbp.layers
from fastbp.layers import AddLayer, MulLayer
assert MulLayer().forward(2.0, 3.0) == 6.0
print("numba" in sys.modules, "fastbp.kernels" in sys.modules)
import numpy as np
fastbp.layers.Relu().forward(np.ones(2))
print("numba" in sys.modules, type(fastbp.layers.relu_forward).__name__)
"""


def test_importing_the_layers_loads_no_numba_until_a_kernel_layer_runs():
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "Twin"]
