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

import functools

import numpy as np

from fastbp import checks
from fastbp.lazy import LazyKernel
from fastbp.reference import AddLayer, MulLayer

__all__ = ["AddLayer", "Affine", "MulLayer", "Relu", "Sigmoid", "SoftmaxWithLoss"]

# The kernels, imported (with Numba) on the first call of a kernel-backed layer.
_kernel = functools.partial(LazyKernel, globals(), "fastbp.kernels")
# The affine kernels through their wrappers, which choose the blocks (kernels/affine.py).
affine_backward = LazyKernel(globals(), "fastbp.kernels.affine", "affine_backward", "backward")
affine_forward = LazyKernel(globals(), "fastbp.kernels.affine", "affine_forward", "forward")
relu_backward = _kernel("relu_backward")
relu_forward = _kernel("relu_forward")
sigmoid_backward = _kernel("sigmoid_backward")
sigmoid_forward = _kernel("sigmoid_forward")
softmax_ce_backward = _kernel("softmax_ce_backward")
softmax_ce_forward = _kernel("softmax_ce_forward")


def _flat(a):
    """1-D view of a C-contiguous array (``ravel`` never copies one, and is the cheaper call)."""
    return a.ravel()


def _cast(a, dtype):
    """``a`` in ``dtype``; a narrowing cast overflows to inf silently, like the NumPy
    expression computed in ``dtype`` does (no RuntimeWarning, even under np.errstate)."""
    if a.dtype == dtype:
        return a
    with np.errstate(over="ignore"):
        return a.astype(dtype)


class Relu:
    """ReLU of any shape and float dtype. ``mask`` (bool, x's shape) marks x <= 0."""

    def __init__(self):
        self.mask = None

    def forward(self, x):
        x = checks.computable(checks.float_array("x", x), None)
        out = np.empty(x.shape, x.dtype)
        mask = np.empty(x.shape, np.bool_)
        relu_forward(_flat(x), _flat(out), _flat(mask))
        self.mask = mask
        return out

    def backward(self, dout):
        mask = checks.state(self, "mask", self.mask, (np.dtype(np.bool_),))
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward input", mask.shape)
        dout = checks.computable(dout, None)
        dx = np.empty(dout.shape, dout.dtype)
        relu_backward(_flat(dout), _flat(mask), _flat(dx))
        return dx


class Sigmoid:
    """Logistic sigmoid of any shape and float dtype; ``out`` keeps the forward output."""

    def __init__(self):
        self.out = None

    def forward(self, x):
        x = checks.computable(checks.float_array("x", x), None)
        out = np.empty(x.shape, x.dtype)
        sigmoid_forward(_flat(x), _flat(out))
        self.out = out
        return out

    def backward(self, dout):
        out = checks.state(self, "out", self.out, checks.FLOAT_DTYPES)
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward output", out.shape)
        dout = checks.computable(dout, None)
        dx = np.empty(dout.shape, np.result_type(dout, out))
        sigmoid_backward(_flat(dout), _flat(out), _flat(dx))
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
        # What backward needs, set in one assignment by forward: (x's shape, x's dtype,
        # the 2-D x in the forward's compute dtype, C-contiguous).
        self._forward = None

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
        x2 = checks.computable(flat, None)  # a float32 x is cast by rows in the kernel
        out = np.empty((x2.shape[0], W.shape[1]), dtype)
        affine_forward(out, x2, W, b)
        # State changes only after validation, so a rejected x leaves backward consistent.
        self.original_x_shape, self.x = x.shape, flat
        self._forward = (x.shape, flat.dtype, x2)
        return out

    def adopt_forward(self, x):
        """Record x[N, ...] as the input of a forward pass computed elsewhere (the fused
        step of ``fastbp.nets.TwoLayerNet``), as ``forward(x)`` would (x, backward)."""
        x = checks.frozen(x)
        flat = x.reshape(x.shape[0], -1)
        self._forward = (x.shape, flat.dtype, checks.computable(flat, None))
        self.original_x_shape, self.x = x.shape, flat

    def backward(self, dout):
        state = self._forward
        checks.after_forward(self, state)
        x_shape, x_dtype, x2 = state
        dout = checks.float_array("dout", dout, ndim=2)
        n, k = x2.shape
        W_given, _ = self._params()
        m = W_given.shape[1]
        checks.same_shape("W", W_given, "the W used in forward", (k, m))
        checks.same_shape("dout", dout, "the forward output", (n, m))
        # x2 is x in its own dtype (forward cast it by rows); cast here for the GEMMs.
        dtype = np.result_type(dout, x_dtype, W_given)
        W = checks.computable(W_given, dtype)
        x = checks.computable(x2, dtype)
        d = checks.computable(dout, dtype)
        dx = np.empty((n, k), dtype)
        dW = np.empty((k, m), dtype)
        db = np.empty(m, dtype)
        affine_backward(d, x, W, dx, dW, db, True)
        # NumPy's dtypes for the book's expressions: dW = x.T @ dout, db = sum(dout).
        self.dW = _cast(dW, np.result_type(x_dtype, dout))
        self.db = _cast(db, dout.dtype)
        return _cast(dx, np.result_type(dout, W_given)).reshape(x_shape)


class SoftmaxWithLoss:
    """Softmax followed by cross-entropy loss for logits x[N, C] (or one sample x[C]).

    ``t`` is either class indices t[N] (integers in [0, C)) or one-hot rows t[N, C]. The
    loss has x's dtype; ``y`` keeps the softmax output and ``t`` the labels as given.
    """

    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None
        # What backward needs, set in one assignment by forward: (shape of the logits x,
        # the validated labels in 2-D form, the softmax output y in 2-D form (N, C)).
        self._forward = None

    def forward(self, x, t):
        x = checks.batch("x", x)
        shape, given_t = x.shape, t
        t = checks.frozen(t)
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
        self._forward = (shape, t, y)
        self.t, self.loss, self.y = given_t, loss, y.reshape(shape)
        return loss

    def adopt_forward(self, y, t, loss):
        """Record softmax output y[N, C] (a new array), labels t and their loss of a
        forward pass computed elsewhere (the fused step), as ``forward`` would."""
        labels = checks.labels(checks.frozen(t), *y.shape, y.dtype)
        self._forward = (y.shape, labels, y)
        self.t, self.loss, self.y = t, loss, y

    def backward(self, dout=1):
        """dx = dout * (y - onehot(t)) / N, in x's shape; ``dout`` is a real scalar."""
        state = self._forward
        checks.after_forward(self, state)
        shape, t, y = state
        dout = checks.scalar("dout", dout)
        dtype = np.result_type(y, t) if t.ndim == 2 else y.dtype
        dx = np.empty(y.shape, dtype)
        softmax_ce_backward(y, t, dout / y.shape[0], dx)
        return dx.reshape(shape)
