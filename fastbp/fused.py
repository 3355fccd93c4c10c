"""The two-layer net's whole train step as one compiled call (``kernels/train_step.py``).

``TwoLayerStep(W1, b1, W2, b2)`` computes the loss and gradients of
Affine -> ReLU -> Affine -> SoftmaxWithLoss, or the loss and an in-place SGD update, in a
single kernel call per step. It holds the params by reference (``sgd_step`` updates them
in place, and in-place changes by the caller take effect on the next call) and owns the
work buffers: allocated on the first call, reused after, enlarged only when a batch is
larger than any before. The math is the book's ``TwoLayerNet.gradient`` in the weights'
dtype (a float32 batch with float64 weights is cast once per call into a buffer).

Sparse batches (MNIST images are about 80% zeros) take a first layer that only touches
the W1 rows at nonzero pixels; it is chosen per batch from the nonzero count against
``SPARSE_DENSITY`` (by the weights' dtype: it pays in float64, where BLAS is slower) and
gives the dense path's results to rounding.
"""

import numba
import numpy as np

from fastbp import checks
from fastbp.kernels.dispatch import SPARSE_DENSITY
from fastbp.kernels.train_step import column_block, train_step

PARAM_NAMES = ("W1", "b1", "W2", "b2")


def _params(W1, b1, W2, b2):
    """The four params, checked: one float dtype, consistent shapes, C-contiguous."""
    params = dict(zip(PARAM_NAMES, (W1, b1, W2, b2), strict=True))
    for name, p in params.items():
        checks.updatable(name, p, ndim=2 if name[0] == "W" else 1)
        if p.dtype != W1.dtype:
            raise TypeError(f"{name} has dtype {p.dtype}, expected {W1.dtype} like W1")
    k, h = W1.shape
    c = W2.shape[1]
    for name, shape in (("b1", (h,)), ("W2", (h, c)), ("b2", (c,))):
        checks.same_shape(name, params[name], "W1 and W2 imply", shape)
    return params


class TwoLayerStep:
    """Fused gradient / SGD step for params W1[K, H], b1[H], W2[H, C], b2[C].

    ``sparse``: "auto" (pick per batch by density), True (always the sparse first layer)
    or False (always dense BLAS). Use ``from_params(net.params)`` for a book-style net.
    The buffers make a step object single-threaded: give each thread its own.
    """

    def __init__(self, W1, b1, W2, b2, sparse="auto"):
        if sparse not in ("auto", True, False):
            raise ValueError(f"sparse must be 'auto', True or False, got {sparse!r}")
        self.params = _params(W1, b1, W2, b2)
        self.sparse = sparse
        self.dtype = W1.dtype
        self.loss = None
        self._grads = None  # the reused gradient buffers, allocated on first use
        self._capacity = 0  # rows the batch buffers hold
        self._rows = None  # (n, z1, dy, dz1, xw) views for the last batch size
        self._nz = None  # sparse first layer: positions of x's nonzeros by row and column
        self._xw = None  # x cast to the weights' dtype, allocated on the first mixed batch
        self._last = None  # (rows, max_nnz) of the last call

    @classmethod
    def from_params(cls, params, sparse="auto"):
        """A step on ``params['W1']``, ``['b1']``, ``['W2']``, ``['b2']`` (by reference)."""
        return cls(*(params[name] for name in PARAM_NAMES), sparse=sparse)

    @property
    def grads(self):
        """The reused gradient buffers {'W1', 'b1', 'W2', 'b2'} (params' shapes and dtype)."""
        if self._grads is None:
            self._grads = self._new_grads()
        return self._grads

    def _new_grads(self):
        return {name: np.empty_like(p) for name, p in self.params.items()}

    def _max_nnz(self, n, k):
        if self.sparse == "auto":
            return int(SPARSE_DENSITY[self.dtype.name] * n * k)
        return n * k if self.sparse else -1

    def _batch_buffers(self, n, k, cast):
        """(z1, dy, dz1, xw, nz) for a batch of n rows, enlarging them if needed."""
        h, c = self.params["W2"].shape
        if n > self._capacity:
            self._capacity = n
            self._z1 = np.empty((n, h), self.dtype)
            self._dy = np.empty((n, c), self.dtype)
            self._dz1 = np.empty((n, h), self.dtype)
            cap = max(self._max_nnz(n, k), 0)
            self._nz = np.empty(n + 1 + k + 1 + n + 2 * cap, np.int32)
            self._xw = None
            self._rows = None
        if cast and self._xw is None:
            self._xw = np.empty((self._capacity, k), self.dtype)
        if self._rows is None or self._rows[0] != n or (cast and self._rows[4] is None):
            xw = None if self._xw is None else self._xw[:n]
            self._rows = (n, self._z1[:n], self._dy[:n], self._dz1[:n], xw)
        return self._rows[1:] + (self._nz,)

    def _run(self, x, t, lr, update, grads):
        x = checks.batch("x", x, min_ndim=2)
        n = x.shape[0]
        x = x.reshape(n, -1)
        W1, b1, W2, b2 = (self.params[name] for name in PARAM_NAMES)
        k, h = W1.shape
        if x.shape[1] != k:
            raise ValueError(f"x has {x.shape[1]} features per sample, but W1 expects {k}")
        x = checks.computable(x, None)
        if not x.flags.writeable:  # the kernel's one signature takes writeable arrays
            x = x.copy()
        t = checks.labels(t, n, W2.shape[1], self.dtype)
        if t.ndim == 2:  # checked one-hot: the kernel reads class indices
            t = t.argmax(axis=1)
        cast = x.dtype != self.dtype
        z1, dy, dz1, xw, nz = self._batch_buffers(n, k, cast)
        build = train_step.pick(x.size)
        threads = 1 if build is train_step.serial else numba.get_num_threads()
        max_nnz = self._max_nnz(n, k)
        g = grads
        loss = build(
            x, xw if cast else x, cast, t, W1, b1, W2, b2, self.dtype.type(lr), update, max_nnz,
            column_block(h, threads), nz, z1, dy, dz1, g["W1"], g["b1"], g["W2"], g["b2"],
        )  # fmt: skip
        self.loss = self.dtype.type(loss)
        self._last = (n, max_nnz)
        return self.loss

    @property
    def used_sparse(self):
        """Whether the last call took the sparse first layer (None before any call)."""
        if self._last is None:
            return None
        n, max_nnz = self._last
        return bool(self._nz[n] <= max_nnz)

    def gradient(self, x, t, reuse=True, out=None):
        """{'W1', 'b1', 'W2', 'b2'} gradients of the loss of batch x[N, K] (or x[N, ...])
        with labels t (indices t[N] or one-hot t[N, C]); the loss is kept in ``self.loss``.

        With ``reuse`` (default) the arrays are this object's buffers (the same arrays on
        every call) and the next call overwrites them; ``reuse=False`` returns new arrays.
        ``out``: a dict of four writeable C-contiguous arrays of the params' shapes and
        dtype to write the gradients into instead (e.g. views into one flat buffer).
        """
        if out is not None:
            for name, p in self.params.items():
                g = out[name]
                if not (isinstance(g, np.ndarray) and g.dtype == p.dtype and g.shape == p.shape):
                    raise ValueError(f"out[{name!r}] must be a {p.dtype} array of shape {p.shape}")
                if not (g.flags.c_contiguous and g.flags.writeable):
                    raise ValueError(f"out[{name!r}] must be writeable and C-contiguous")
        grads = out if out is not None else self.grads if reuse else self._new_grads()
        self._run(x, t, 0.0, False, grads)
        return dict(grads)

    def sgd_step(self, x, t, lr):
        """One SGD step on batch (x, t): every param -= lr * its gradient, in place.
        Returns the loss of the batch before the update. ``grads`` is scratch space here
        (the sparse path skips the W1 rows it does not update): call ``gradient`` for them."""
        lr = checks.scalar("lr", lr)
        return self._run(x, t, lr, True, self.grads)
