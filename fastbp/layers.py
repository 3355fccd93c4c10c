"""Drop-in layers for the book's ``common/layers.py``: same names, arguments and attributes.

Swap ``from common.layers import ...`` for ``from fastbp.layers import ...`` and the rest of
the code runs unchanged. Each class validates its input (``fastbp.checks``) and calls one
kernel; ``MulLayer`` and ``AddLayer`` are the book's own classes (plain scalar or ufunc
arithmetic, which no kernel call could beat), re-exported from ``fastbp.reference``.
Result dtypes follow NumPy's rules for the book's expressions, e.g. float32 images
through float64 weights give float64 outputs. Differences from the book, all deliberate:

- inputs are never modified (the book's ``Relu.backward`` zeroes ``dout`` in place);
- ``SoftmaxWithLoss.backward(dout)`` scales by ``dout`` (the book ignores it; dout=1 agrees);
- a single 1-D sample's gradient is that of a batch of one (the book divides a one-hot
  gradient by C there and cannot index with a scalar label);
- bad input raises ``TypeError``/``ValueError`` naming the argument instead of broadcasting
  or indexing out of bounds.
"""

import numpy as np

from fastbp import checks
from fastbp.kernels import (
    affine,
    relu_backward,
    relu_forward,
    sigmoid_backward,
    sigmoid_forward,
    softmax_ce_backward,
    softmax_ce_forward,
)
from fastbp.reference import AddLayer, MulLayer

__all__ = ["AddLayer", "Affine", "MulLayer", "Relu", "Sigmoid", "SoftmaxWithLoss"]


def _flat(a):
    """1-D view of a C-contiguous array (``ravel`` never copies one, and is the cheaper call)."""
    return a.ravel()


class Relu:
    """ReLU of any shape and float dtype. ``mask`` (bool, x's shape) marks x <= 0."""

    def __init__(self):
        self.mask = None

    def forward(self, x):
        x = checks.computable(checks.float_array("x", x), None)
        out = np.empty(x.shape, x.dtype)
        self.mask = np.empty(x.shape, np.bool_)
        relu_forward(_flat(x), _flat(out), _flat(self.mask))
        return out

    def backward(self, dout):
        checks.after_forward(self, self.mask)
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward input", self.mask.shape)
        dout = checks.computable(dout, None)
        dx = np.empty(dout.shape, dout.dtype)
        relu_backward(_flat(dout), _flat(self.mask), _flat(dx))
        return dx


class Sigmoid:
    """Logistic sigmoid of any shape and float dtype; ``out`` keeps the forward output."""

    def __init__(self):
        self.out = None

    def forward(self, x):
        x = checks.computable(checks.float_array("x", x), None)
        self.out = np.empty(x.shape, x.dtype)
        sigmoid_forward(_flat(x), _flat(self.out))
        return self.out

    def backward(self, dout):
        checks.after_forward(self, self.out)
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward output", self.out.shape)
        dout = checks.computable(dout, None)
        dx = np.empty(dout.shape, np.result_type(dout, self.out))
        sigmoid_backward(_flat(dout), _flat(self.out), _flat(dx))
        return dx


class Affine:
    """out[N, M] = x[N, ...] @ W[K, M] + b[M], with x flattened to K features per sample.

    ``W`` and ``b`` are held by reference, never copied, so in-place updates of the
    caller's params (``params['W1'] -= lr * grad``) and in-place perturbations for
    numerical gradients take effect on the next call. ``x`` is the 2-D view of the input,
    ``original_x_shape`` its shape; ``backward`` returns dx in that shape.
    """

    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None
        self._x = None  # self.x, C-contiguous

    def _params(self):
        W = checks.float_array("W", self.W, ndim=2)
        b = checks.float_array("b", self.b)
        m = W.shape[1]
        if b.shape not in ((m,), (1, m)):  # a (1, M) row broadcasts in the book's NumPy too
            raise ValueError(f"b has shape {b.shape}, expected ({m},) or (1, {m}) to match W")
        return W, b.reshape(m)

    def forward(self, x):
        x = checks.batch("x", x, min_ndim=2)
        flat = x.reshape(x.shape[0], -1)
        W, b = self._params()
        if flat.shape[1] != W.shape[0]:
            raise ValueError(
                f"x has {flat.shape[1]} features per sample (shape {x.shape}), "
                f"but W expects {W.shape[0]} (W shape {W.shape})"
            )
        dtype = np.result_type(flat, W, b)
        W, b = checks.computable(W, dtype), checks.computable(b, dtype)
        # State changes only after validation, so a rejected x leaves backward consistent.
        self.original_x_shape, self.x = x.shape, flat
        self._x = checks.computable(flat, None)  # float32 x is cast by rows in the kernel
        out = np.empty((self._x.shape[0], W.shape[1]), dtype)
        affine.forward(out, self._x, W, b)
        return out

    def backward(self, dout):
        checks.after_forward(self, self._x)
        dout = checks.float_array("dout", dout, ndim=2)
        n, k = self._x.shape
        W_given, _ = self._params()
        m = W_given.shape[1]
        checks.same_shape("W", W_given, "the W used in forward", (k, m))
        checks.same_shape("dout", dout, "the forward output", (n, m))
        dtype = np.result_type(dout, self._x, W_given)
        W = checks.computable(W_given, dtype)
        x = checks.computable(self._x, dtype)
        d = checks.computable(dout, dtype)
        dx = np.empty((n, k), dtype)
        dW = np.empty((k, m), dtype)
        db = np.empty(m, dtype)
        affine.backward(d, x, W, dx, dW, db, True)
        # NumPy's dtypes for the book's expressions: dW = x.T @ dout, db = sum(dout).
        self.dW = dW.astype(np.result_type(self.x, dout), copy=False)
        self.db = db.astype(dout.dtype, copy=False)
        return dx.astype(np.result_type(dout, W_given), copy=False).reshape(self.original_x_shape)


class SoftmaxWithLoss:
    """Softmax followed by cross-entropy loss for logits x[N, C] (or one sample x[C]).

    ``t`` is either class indices t[N] (integers in [0, C)) or one-hot rows t[N, C]. The
    loss has x's dtype; ``y`` keeps the softmax output and ``t`` the labels as given.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None
        self._t = None  # validated labels, 2-D form for a single sample
        self._y = None  # the softmax output y, 2-D (N, C)
        self._shape = None  # shape of the logits x

    def forward(self, x, t):
        x = checks.batch("x", x)
        shape, given_t = x.shape, t
        if x.ndim == 1:
            x = x.reshape(1, -1)
            t = checks.sample_labels(t, x.shape[1])
        if x.ndim != 2:
            raise ValueError(f"x must be 1-D or 2-D logits, got shape {x.shape}")
        t = checks.labels(t, *x.shape, x.dtype)
        x = checks.computable(x, None)
        y = np.empty(x.shape, x.dtype)
        loss = x.dtype.type(softmax_ce_forward(x, t, y))
        # State changes only after validation, so rejected labels leave backward consistent.
        self._shape, self.t, self._t, self._y = shape, given_t, t, y
        self.loss, self.y = loss, y.reshape(shape)
        return self.loss

    def backward(self, dout=1):
        """dx = dout * (y - onehot(t)) / N, in x's shape; ``dout`` is a real scalar."""
        checks.after_forward(self, self._t)
        dout = checks.scalar("dout", dout)
        t, y = self._t, self._y
        dtype = np.result_type(y, t) if t.ndim == 2 else y.dtype
        dx = np.empty(y.shape, dtype)
        softmax_ce_backward(y, t, dout / y.shape[0], dx)
        return dx.reshape(self._shape)
