"""The two-layer net's whole train step as one compiled call (``kernels/two_layer_step.py``).

``TwoLayerStep(W1, b1, W2, b2)`` computes the loss and gradients of
Affine -> ReLU -> Affine -> SoftmaxWithLoss, or the loss and an in-place SGD update, in a
single kernel call per step. It holds the params by reference (``sgd_step`` updates them
in place, and in-place changes by the caller take effect on the next call) and owns the
work buffers: allocated on the first call, reused after, enlarged only when a batch is
larger than any before. The math is the book's ``TwoLayerNet.gradient`` in the weights'
dtype (a float32 batch with float64 weights is cast by rows inside the kernel).

Above the measured crossover the batch is split over Numba's threads, each calling the
BLAS single-threaded on its own rows (``fastbp.kernels.blas``); below it, or with one
Numba thread, one block runs with the BLAS's own threads.

Every call reads the params, the gradient buffers and ``sparse`` afresh and checks them
(shape, dtype, layout) before the kernel runs, so changing any of them between calls is
safe. One step object may be shared by threads: calls take turns (a lock).

Sparse batches (MNIST images are about 80% zeros) can take a first layer that only touches
the W1 rows at nonzero pixels; with ``sparse="auto"`` the first call of each shape in a
process times it against the BLAS and the shape keeps the faster
(``dispatch.choose_sparse``); it gives the dense path's results to rounding.
"""

import math
import operator
import threading

import numpy as np

from fastbp import checks
from fastbp.kernels import nonzeros
from fastbp.kernels.blas import plan
from fastbp.kernels.dispatch import choose_sparse, sparse_density
from fastbp.kernels.two_layer_step import two_layer_step

PARAM_NAMES = ("W1", "b1", "W2", "b2")
SPARSE_CHOICES = ("auto", True, False)
# What a forward-only call passes for the gradients: empty arrays of their types (the
# kernel touches none of them, so one set per dtype serves every call and thread).
_NO_GRADS = {
    np.dtype(dtype): [np.empty((0,) * ndim, dtype) for ndim in (2, 1, 2, 1)]
    for dtype in checks.FLOAT_DTYPES
}


def _params(arrays):
    """The four params (``arrays``: W1, b1, W2, b2 read once from the params dict) as
    checked views: one float dtype, consistent shapes, C-contiguous and writeable."""
    W1, b1, W2, b2 = (
        checks.updatable(name, p, ndim=ndim)
        for name, p, ndim in zip(PARAM_NAMES, arrays, (2, 1, 2, 1), strict=True)
    )
    (h, c), dtype = W2.shape, W1.dtype
    same_dtype = b1.dtype is dtype and W2.dtype is dtype and b2.dtype is dtype
    if same_dtype and W1.shape[1] == h and b1.shape == (h,) and b2.shape == (c,):
        return W1, b1, W2, b2  # the common case, in one test
    for name, p in zip(PARAM_NAMES[1:], (b1, W2, b2), strict=True):
        if p.dtype != dtype:
            raise TypeError(f"{name} has dtype {p.dtype}, expected {dtype} like W1")
    h, c = W1.shape[1], W2.shape[1]
    for name, p, shape in (("b1", b1, (h,)), ("W2", W2, (h, c)), ("b2", b2, (c,))):
        checks.same_shape(name, p, "W1 and W2 imply", shape)
    return W1, b1, W2, b2


def _read(params):
    """(W1, b1, W2, b2) as they are in the dict ``params`` now."""
    return tuple(params[name] for name in PARAM_NAMES)


def _sparse(sparse):
    if type(sparse) is str and sparse == "auto":  # the default, in one test
        return sparse
    if not any(sparse is choice or sparse == choice for choice in SPARSE_CHOICES):
        raise ValueError(f"sparse must be 'auto', True or False, got {sparse!r}")
    return sparse if isinstance(sparse, str) else bool(sparse)


def _grad_buffers(grads, params, label, disjoint=()):
    """The four gradient arrays read once from ``grads`` (called ``label`` in errors),
    checked against the params.

    ``disjoint``: the four arrays an earlier call found not to share memory with these
    same params (an ndarray's memory never moves); an array that is the one in its
    place there skips the overlap check."""
    out = []
    for i, (name, p) in enumerate(zip(PARAM_NAMES, params, strict=True)):
        g = grads[name]
        if not (isinstance(g, np.ndarray) and g.dtype == p.dtype and g.shape == p.shape):
            raise ValueError(f"{label}[{name!r}] must be a {p.dtype} array of shape {p.shape}")
        flags = g.flags
        if not (flags.c_contiguous and flags.writeable and g.dtype.isnative):
            raise ValueError(f"{label}[{name!r}] must be writeable and C-contiguous")
        known = i < len(disjoint) and g is disjoint[i]
        if not known and any(np.may_share_memory(g, q) for q in params):
            raise ValueError(f"{label}[{name!r}] must not share memory with a parameter")
        out.append(g)
    return out


class TwoLayerStep:
    """Fused gradient / SGD step for params W1[K, H], b1[H], W2[H, C], b2[C].

    ``sparse``: "auto" (whichever was timed faster at this shape), True (always the
    sparse first layer) or False (always dense BLAS). Use ``from_params(net.params)``
    for a book-style net.
    After a call: ``loss``, ``hidden`` (the ReLU output z1[N, H]) and ``probs`` (the
    softmax output y[N, C]) describe that batch, until the next call overwrites them.
    """

    def __init__(self, W1, b1, W2, b2, sparse="auto"):
        self.params = dict(zip(PARAM_NAMES, (W1, b1, W2, b2), strict=True))
        _params(_read(self.params))
        self.sparse = _sparse(sparse)
        self.loss = None
        self.hidden = None
        self.probs = None
        self._grads = None  # the reused gradient buffers, allocated on first use
        self._work = {}  # name -> reused work buffer (grown, never shrunk)
        self._views = None  # (sizes, views into _work) of the last call
        self._used_sparse = None
        self._disjoint = ((), ())  # (params, grads) last checked not to share memory
        self._lock = threading.Lock()

    @classmethod
    def from_params(cls, params, sparse="auto"):
        """A step on ``params['W1']``, ``['b1']``, ``['W2']``, ``['b2']`` (by reference)."""
        return cls(*(params[name] for name in PARAM_NAMES), sparse=sparse)

    @property
    def grads(self):
        """The reused gradient buffers {'W1', 'b1', 'W2', 'b2'} (params' shapes and dtype)."""
        with self._lock:
            if self._grads is None:
                self._grads = self._new_grads(_params(_read(self.params)))
            return self._grads

    @staticmethod
    def _new_grads(params):
        return {name: np.empty_like(p) for name, p in zip(PARAM_NAMES, params, strict=True)}

    def _buffer(self, name, shape, dtype):
        """A reused work array of ``shape`` and ``dtype`` (a view into a larger one)."""
        size = math.prod(shape)
        held = self._work.get(name)
        if held is None or held.dtype != dtype or held.size < size:
            held = self._work[name] = np.empty(size, dtype)
        return held[:size].reshape(shape)

    def _buffers(self, n, k, h, c, dtype, blocks, cast, max_nnz):
        """(xw or None, nz, z1, y, dy, dz1, dW2p, db1p, db2p, lossp) for this
        call's sizes (see ``kernels/two_layer_step.py``); the views of the last sizes are
        kept, so a run of equal batches builds none."""
        key = (n, k, h, c, dtype, blocks, cast, max_nnz)
        if self._views is None or self._views[0] != key:
            buf = self._buffer
            views = (buf("xw", (n, k), dtype) if cast else None,)
            nz_size = nonzeros.buffer_size(n, k, blocks, max(max_nnz, 0))
            views += (buf("nz", (nz_size,), np.int64),)
            views += (buf("z1", (n, h), dtype), buf("y", (n, c), dtype))
            views += (buf("dy", (n, c), dtype), buf("dz1", (n, h), dtype))
            views += (buf("dW2p", (blocks, h, c), dtype), buf("db1p", (blocks, h), dtype))
            views += (buf("db2p", (blocks, c), dtype), buf("lossp", (blocks,), np.float64))
            self._views = (key, views)
        return self._views[1]

    def _run(self, x, t, lr, update, grads, label="grads", backward=True, fresh=False):
        """The kernel call of every public method; returns (the loss, or with ``fresh``
        (loss, hidden, probs, labels): the forward state in new arrays of this call's own,
        which another thread's call cannot overwrite, and the checked labels; the gradient
        arrays written, empty without ``backward``). ``grads``:
        None (this object's buffers), "new" (new arrays) or a dict of four arrays to write
        the gradients into."""
        x = checks.batch("x", x, min_ndim=2)
        n = x.shape[0]
        x = x.reshape(n, -1)
        with self._lock:
            arrays = _read(self.params)
            params = _params(arrays)
            sparse = _sparse(self.sparse)
            W1, b1, W2, b2 = params
            dtype = W1.dtype
            (k, h), c = W1.shape, W2.shape[1]
            if x.shape[1] != k:
                raise ValueError(f"x has {x.shape[1]} features per sample, but W1 expects {k}")
            x = checks.c_array(x, None)
            if not x.flags.writeable:  # the kernel's one signature takes writeable arrays
                x = x.copy()
            classes = np.empty(n, np.intp)  # the kernel's labels: class indices
            labels = checks.labels(t, n, c, dtype, classes)
            t = classes if labels.ndim == 2 else labels
            # Without backward the kernel touches no gradient: empty arrays of their types.
            g = self._grad_arrays(grads, arrays, params, label) if backward else _NO_GRADS[dtype]
            build, blocks, own = plan(two_layer_step, x.size * h)
            cast = x.dtype != dtype
            lr = dtype.type(lr)

            def run(density, update, rows=n):  # the kernel on the first ``rows`` rows
                max_nnz = int(density * rows * k) if density >= 0 else -1
                xw, nz, z1, y, dy, dz1, *parts = self._buffers(
                    rows, k, h, c, dtype, blocks, cast, max_nnz
                )
                if fresh:  # this call's own arrays, which no later call writes: no copies
                    z1, y = np.empty_like(z1), np.empty_like(y)
                xs = x[:rows]
                loss, used_sparse = build(
                    xs, xw if cast else xs, cast, t[:rows], W1, b1, W2, b2, lr, update,
                    max_nnz, nz, z1, y, dy, dz1, *g, *parts, own, backward,
                )  # fmt: skip
                return loss, used_sparse, z1, y

            if sparse == "auto":  # as timed at this shape (``dispatch.choose_sparse``)
                key = ("two_layer_step", x.dtype, dtype, blocks, n.bit_length(), k, h, backward)
                density = sparse_density(key)
                if density is None:
                    density = choose_sparse(key, n, lambda d, rows: run(d, False, rows)[1])
            else:
                density = 1.0 if sparse else -1.0
            loss, used_sparse, z1, y = run(density, update)
            self.loss = dtype.type(loss)
            self.hidden, self.probs = z1, y
            self._used_sparse = bool(used_sparse)
            result = (self.loss, z1, y, labels) if fresh else self.loss
            return result, dict(zip(PARAM_NAMES, g, strict=True)) if backward else None

    def _grad_arrays(self, grads, arrays, params, label):
        """The checked gradient arrays of a call (see ``_run``); ``arrays`` are the
        params as read from the dict. Arrays found disjoint from those same params are
        remembered, so a run of calls on the same arrays checks overlaps once."""
        if isinstance(grads, str):  # "new": made here like the params, so nothing to check
            return [np.empty_like(p) for p in params]
        if grads is None:
            if self._grads is None:
                self._grads = self._new_grads(params)
            grads = self._grads
        held_arrays, held_grads = self._disjoint
        same = bool(held_arrays) and all(map(operator.is_, arrays, held_arrays))
        g = _grad_buffers(grads, params, label, disjoint=held_grads if same else ())
        self._disjoint = (arrays, tuple(g))
        return g

    @property
    def used_sparse(self):
        """Whether the last call took the sparse first layer (None before any call)."""
        return self._used_sparse

    def gradient(self, x, t, reuse=True, out=None, forward=False):
        """{'W1', 'b1', 'W2', 'b2'} gradients of the loss of batch x[N, K] (or x[N, ...])
        with labels t (indices t[N] or one-hot t[N, C]); the loss is kept in ``self.loss``.

        With ``reuse`` (default) the arrays are this object's buffers (the same arrays on
        every call) and the next call overwrites them; ``reuse=False`` returns new arrays.
        ``out``: a dict of four writeable C-contiguous arrays of the params' shapes and
        dtype to write the gradients into instead (e.g. views into one flat buffer).
        ``forward``: return (gradients, (loss, hidden, probs, labels)): this call's
        forward state in new arrays (safe when other threads share the step) and the
        labels as checked (``fastbp.checks.labels``).
        """
        label = "grads" if out is None else "out"
        grads = None if reuse else "new"
        if out is not None:
            grads = {name: out[name] for name in PARAM_NAMES}
        state, grads = self._run(x, t, 0.0, False, grads, label, fresh=forward)
        return (grads, state) if forward else grads

    def loss_of(self, x, t, forward=False):
        """The loss of batch (x, t) alone: the forward pass (``hidden``, ``probs`` as after
        ``gradient``), no gradient is computed and ``grads`` are left as they were.
        ``forward``: return (loss, hidden, probs, labels), as in ``gradient``."""
        return self._run(x, t, 0.0, False, None, backward=False, fresh=forward)[0]

    def sgd_step(self, x, t, lr):
        """One SGD step on batch (x, t): every param -= lr * its gradient, in place.
        Returns the loss of the batch before the update. ``grads`` is scratch space here
        (the sparse path skips the W1 rows it does not update): call ``gradient`` for them."""
        lr = checks.scalar("lr", lr)
        return self._run(x, t, lr, True, None)[0]
