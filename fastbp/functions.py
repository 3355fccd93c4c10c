"""The book's ``common/functions.py`` names, which its ``common/layers.py`` star-imports.

Plain NumPy with the book's semantics (they are one or two ufunc calls each, which no
kernel call would beat); ``from fastbp.layers import *`` re-exports them, so scripts that
call ``softmax`` or ``cross_entropy_error`` after the star import keep working.
``sigmoid`` and ``softmax`` are ``fastbp.reference``'s overflow-free forms of the book's.
"""

import numpy as np

from fastbp.reference import cross_entropy_error, sigmoid, softmax

__all__ = [
    "cross_entropy_error",
    "identity_function",
    "relu",
    "relu_grad",
    "sigmoid",
    "sigmoid_grad",
    "softmax",
    "softmax_loss",
    "step_function",
    "sum_squared_error",
]


def identity_function(x):
    """x itself."""
    return x


def step_function(x):
    """1 where x > 0 else 0, as a NumPy int array."""
    return np.array(x > 0, dtype=int)


def sigmoid_grad(x):
    """d sigmoid(x) / dx = (1 - sigmoid(x)) * sigmoid(x)."""
    y = sigmoid(x)
    return (1.0 - y) * y


def relu(x):
    """max(0, x) elementwise."""
    return np.maximum(0, x)


def relu_grad(x):
    """1 where x >= 0 else 0, in x's dtype (the book's convention at 0)."""
    return (np.asarray(x) >= 0).astype(np.asarray(x).dtype)


def sum_squared_error(y, t):
    """0.5 * sum((y - t)**2)."""
    return 0.5 * np.sum((y - t) ** 2)


def softmax_loss(X, t):
    """cross_entropy_error(softmax(X), t)."""
    return cross_entropy_error(softmax(X), t)
