"""Numerical gradients and the book's gradient check: backprop against central differences."""

from typing import NamedTuple

import numpy as np

# The book's step for central differences (common/gradient.py).
STEP = 1e-4


def numerical_gradient(f, x, h=STEP):
    """d f() / d x by central differences, as the book's ``common/gradient.py``.

    ``x`` is perturbed *in place* one entry at a time (and restored), so ``f`` must read
    the very array ``x`` (e.g. a network parameter held by reference). Returns an array
    of x's shape and dtype.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        idx = it.multi_index
        tmp_val = x[idx]
        x[idx] = float(tmp_val) + h
        fxh1 = f(x)
        x[idx] = tmp_val - h
        fxh2 = f(x)
        grad[idx] = (fxh1 - fxh2) / (2 * h)
        x[idx] = tmp_val
        it.iternext()
    return grad


class Difference(NamedTuple):
    """How far one backprop gradient is from its numerical estimate.

    max_abs: max |backprop - numerical| over the entries.
    max_rel: max_abs divided by the largest |entry| of either gradient (0 if both are 0).
    """

    max_abs: float
    max_rel: float


def compare(backprop, numerical):
    """``Difference`` between two gradients of the same shape."""
    backprop, numerical = np.asarray(backprop), np.asarray(numerical)
    if backprop.shape != numerical.shape:
        raise ValueError(f"gradients differ in shape: {backprop.shape} vs {numerical.shape}")
    max_abs = float(np.max(np.abs(backprop - numerical), initial=0.0))
    scale = max(float(np.max(np.abs(g), initial=0.0)) for g in (backprop, numerical))
    return Difference(max_abs, max_abs / scale if scale > 0 else 0.0)


def gradient_check(net, x, t):
    """{param name: Difference} between ``net.gradient`` and ``net.numerical_gradient``.

    ``net`` is any network with the book's interface (TwoLayerNet, MultiLayerNet); use a
    small batch, since the numerical gradient runs two forward passes per parameter entry.
    """
    numerical = net.numerical_gradient(x, t)
    backprop = net.gradient(x, t)
    return {key: compare(backprop[key], numerical[key]) for key in numerical}
