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

from fastbp import checks, functions, reference, util
from fastbp.functions import *  # noqa: F403 (the book's layers star-import its functions)
from fastbp.lazy import LazyKernel
from fastbp.reference import AddLayer, MulLayer
from fastbp.util import col2im, im2col

__all__ = ["AddLayer", "Affine", "MulLayer", "Relu", "Sigmoid", "SoftmaxWithLoss"]

# The kernels, imported (with Numba) on the first call of a kernel-backed layer; the affine
# and convolution kernels through their wrappers, which choose the blocks (kernels/affine.py,
# kernels/conv.py).
_kernel = functools.partial(LazyKernel, globals(), "fastbp.kernels")
affine_backward = LazyKernel(globals(), "fastbp.kernels.affine", "affine_backward", "backward")
affine_forward = LazyKernel(globals(), "fastbp.kernels.affine", "affine_forward", "forward")
conv_backward = LazyKernel(globals(), "fastbp.kernels.conv", "conv_backward", "backward")
conv_forward = LazyKernel(globals(), "fastbp.kernels.conv", "conv_forward", "forward")
batchnorm_backward = _kernel("batchnorm_backward")
batchnorm_forward = _kernel("batchnorm_forward")
batchnorm_inference = _kernel("batchnorm_inference")
dropout_backward = _kernel("dropout_backward")
dropout_forward = _kernel("dropout_forward")
maxpool2x2_forward = _kernel("maxpool2x2_forward")
maxpool_backward = _kernel("maxpool_backward")
maxpool_forward = _kernel("maxpool_forward")
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


def _elementwise_forward(kernel, x, *extra_dtypes):
    """[out, *extras] of ``kernel(x, out, *extras)`` on flat views: x a float array of any
    shape, out new in x's dtype and one more new array of x's shape per extra dtype."""
    x = checks.c_array(checks.float_array("x", x), None)
    outs = [np.empty(x.shape, dtype) for dtype in (x.dtype, *extra_dtypes)]
    kernel(_flat(x), *[_flat(a) for a in outs])
    return outs


def _elementwise_backward(kernel, dout, saved, saved_name):
    """dx of ``kernel(dout, saved, dx)`` on flat views: dout a float array of the shape of
    ``saved`` (the forward's ``saved_name``), dx new in their result dtype."""
    dout = checks.float_array("dout", dout)
    checks.same_shape("dout", dout, saved_name, saved.shape)
    dout = checks.c_array(dout, None)
    dx = np.empty(dout.shape, np.result_type(dout, saved))
    kernel(_flat(dout), _flat(saved), _flat(dx))
    return dx


class Relu:
    """ReLU of any shape and float dtype. ``mask`` (bool, x's shape) marks x <= 0."""

    def __init__(self):
        self.mask = None

    def forward(self, x):
        out, self.mask = _elementwise_forward(relu_forward, x, np.bool_)
        return out

    def backward(self, dout):
        mask = checks.state(self, "mask", self.mask, (np.dtype(np.bool_),))
        return _elementwise_backward(relu_backward, dout, mask, "the forward input")


class Sigmoid:
    """Logistic sigmoid of any shape and float dtype; ``out`` keeps the forward output."""

    def __init__(self):
        self.out = None

    def forward(self, x):
        (self.out,) = _elementwise_forward(sigmoid_forward, x)
        return self.out

    def backward(self, dout):
        out = checks.state(self, "out", self.out, checks.FLOAT_DTYPES)
        return _elementwise_backward(sigmoid_backward, dout, out, "the forward output")


class Affine(reference.Affine):
    """out[N, M] = x[N, ...] @ W[K, M] + b[M], with x flattened to K features per sample.

    The book's constructor and attributes (``fastbp.reference.Affine``), kernel-backed
    ``forward``/``backward``. ``W`` and ``b`` are held by reference, never copied, so
    in-place updates of the caller's params (``params['W1'] -= lr * grad``) and in-place
    perturbations for numerical gradients take effect on the next call. ``x`` is the 2-D
    view of the input, ``original_x_shape`` its shape; ``backward`` returns dx in that shape.
    """

    def __init__(self, W, b):
        super().__init__(W, b)
        # What backward needs, set in one assignment by forward: (x's shape, x's dtype,
        # the 2-D x in the forward's compute dtype, C-contiguous).
        self._forward = None

    def _params(self):
        W = checks.float_array("W", self.W, ndim=2)
        return W, checks.bias("b", self.b, W.shape[1], W.dtype)

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
        W, b = checks.c_array(W, dtype), checks.c_array(b, dtype)
        x2 = checks.c_array(flat, None)  # a float32 x is cast by rows in the kernel
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
        flat = x.reshape(x.shape[0], -1) if x.ndim != 2 else x
        x2 = flat if flat.flags.c_contiguous else checks.c_array(flat, None)
        self._forward = (x.shape, flat.dtype, x2)
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
        # x2 is x in its own dtype, C-contiguous (float32 or this dtype, which it
        # promotes to): a float32 x is cast for a dense dW by the kernel's wrapper, or
        # read as it is (sparse).
        dtype = np.result_type(dout, x_dtype, W_given)
        W = checks.c_array(W_given, dtype)
        d = checks.c_array(dout, dtype)
        dx = np.empty((n, k), dtype)
        dW = np.empty((k, m), dtype)
        db = np.empty(m, dtype)
        affine_backward(d, x2, W, dx, dW, db, True)
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
        x = checks.c_array(x, None)
        y = np.empty(x.shape, x.dtype)
        loss = x.dtype.type(softmax_ce_forward(x, t, y))
        # State changes only after validation, so rejected labels leave backward consistent.
        self._forward = (shape, t, y)
        self.t, self.loss, self.y = given_t, loss, y.reshape(shape)
        return loss

    def adopt_forward(self, y, t, loss, labels):
        """Record softmax output y[N, C] (a new array), labels t and their loss of a
        forward pass computed elsewhere (the fused step), as ``forward`` would;
        ``labels``: t as ``checks.labels`` returned it for y."""
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


# -- chapters 6-8: Dropout, BatchNormalization, Convolution, Pooling (issue 11) ----------
#
# Images are NCHW. Convolution and Pooling compute in NumPy's result dtype of their inputs
# when that is float32 or float64, else in float64 (float16 or integer images, which the
# book's float64 im2col also takes); the book's im2col makes float32 images float64, fastbp
# keeps a float32 pipeline float32. Outputs are C-contiguous (the book's are transposed
# views); ``col`` and ``arg_max`` are computed in the book's layout when read.

# The book's variance guard in BatchNormalization (10e-7, i.e. 1e-6).
BN_EPS = 10e-7


class Dropout:
    """Zero each entry with probability ``dropout_ratio`` in training; scale by
    1 - dropout_ratio in inference (``train_flg=False``). ``mask`` (bool) keeps the
    entries kept. The mask is ``np.random.rand(*x.shape) > dropout_ratio`` from NumPy's
    global state, as in the book, so ``np.random.seed`` reproduces the book's masks."""

    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        x = checks.c_array(checks.float_array("x", x), None)
        ratio = checks.scalar("dropout_ratio", self.dropout_ratio)
        if not train_flg:
            return x * (1.0 - ratio)
        draws = np.asarray(np.random.rand(*x.shape))  # noqa: NPY002 (the book's global state)
        out = np.empty(x.shape, x.dtype)
        mask = np.empty(x.shape, np.bool_)
        dropout_forward(_flat(x), _flat(draws), ratio, _flat(out), _flat(mask))
        self.mask = mask
        return out

    def backward(self, dout):
        checks.after_forward(self, self.mask)
        return _elementwise_backward(
            dropout_backward, dout, self.mask, "the training forward input"
        )


def _vector(name, a, d):
    """A float vector of d entries, given as shape (d,) or (1, d), as a (d,) view."""
    a = checks.float_array(name, a)
    if a.shape not in ((d,), (1, d)):
        raise ValueError(f"{name} has shape {a.shape}, expected ({d},) for {d} features")
    return a.reshape(d)


class BatchNormalization(reference.BatchNormalization):
    """The book's batch normalization over the features of x[N, D] (or of x[N, C, H, W]
    flattened to D = C*H*W features, as the book does).

    ``forward(x, train_flg=True)`` normalizes by the batch statistics and updates
    ``running_mean``/``running_var`` (new arrays each step, as the book's), or with
    ``train_flg=False`` by the running statistics. ``gamma``/``beta`` are held by
    reference; ``backward`` sets ``dgamma``/``dbeta``. ``xc``, ``xn``, ``std`` and
    ``batch_size`` keep the last training forward's intermediates. The book's constructor
    and attributes come from ``fastbp.reference.BatchNormalization``.
    """

    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        super().__init__(gamma, beta, momentum, running_mean, running_var)
        self.batch_size = None
        self._train_shape = None  # x's shape in the last training forward

    def forward(self, x, train_flg=True):
        x = checks.batch("x", x, min_ndim=2)
        flat = x.reshape(x.shape[0], -1)
        n, d = flat.shape
        gamma, beta = _vector("gamma", self.gamma, d), _vector("beta", self.beta, d)
        momentum = checks.scalar("momentum", self.momentum)
        if self.running_mean is None:
            self.running_mean, self.running_var = np.zeros(d), np.zeros(d)
        if train_flg:
            out = self._train(flat, gamma, beta, momentum)
            self._train_shape = x.shape
        else:
            out = self._infer(flat, gamma, beta)
        self.input_shape = x.shape
        return out.reshape(x.shape)

    def _train(self, x, gamma, beta, momentum):
        n, d = x.shape
        dtype = np.result_type(x, gamma, beta)
        x, gamma, beta = (checks.c_array(a, dtype) for a in (x, gamma, beta))
        out, xc, xn = (np.empty((n, d), dtype) for _ in range(3))
        mu, var, std = (np.empty(d, dtype) for _ in range(3))
        batchnorm_forward(x, gamma, beta, dtype.type(BN_EPS), out, xc, xn, mu, var, std)
        running_mean = _vector("running_mean", self.running_mean, d)
        running_var = _vector("running_var", self.running_var, d)
        self.batch_size, self.xc, self.xn, self.std = n, xc, xn, std
        self.running_mean = momentum * running_mean + (1 - momentum) * mu
        self.running_var = momentum * running_var + (1 - momentum) * var
        return out

    def _infer(self, x, gamma, beta):
        d = x.shape[1]
        mean = _vector("running_mean", self.running_mean, d)
        var = _vector("running_var", self.running_var, d)
        dtype = np.result_type(x, gamma, beta, mean, var)
        std = np.sqrt(checks.c_array(var, dtype) + dtype.type(BN_EPS))
        x, gamma, beta, mean = (checks.c_array(a, dtype) for a in (x, gamma, beta, mean))
        out = np.empty(x.shape, dtype)
        batchnorm_inference(x, gamma, beta, mean, std, out)
        return out

    def backward(self, dout):
        checks.after_forward(self, self.xn)
        dout = checks.float_array("dout", dout, min_ndim=2)
        n, d = self.xn.shape
        checks.same_shape("dout", dout, "the training forward input", self._train_shape)
        gamma = _vector("gamma", self.gamma, d)
        dtype = np.result_type(dout, self.xn, gamma)
        arrays = (dout.reshape(n, d), gamma, self.xc, self.xn, self.std)
        dout, gamma, xc, xn, std = (checks.c_array(a, dtype) for a in arrays)
        dx = np.empty((n, d), dtype)
        dgamma, dbeta, dvar, dmu = (np.empty(d, dtype) for _ in range(4))
        batchnorm_backward(dout, gamma, xc, xn, std, dx, dgamma, dbeta, dvar, dmu)
        self.dgamma, self.dbeta = dgamma, dbeta
        return dx.reshape(self._train_shape)


def _scratch(previous, shape, dtype):
    """``previous`` (a layer's private state array from its last forward) if it has this
    shape and dtype, else a new array: no fresh pages (page faults) on every call."""
    if previous is not None and previous.shape == shape and previous.dtype == dtype:
        return previous
    return np.empty(shape, dtype)


class _Window:
    """What Convolution and Pooling share: the window's ``stride`` and ``pad`` (the book's
    arguments), ``x`` (the last forward input) and ``_forward`` (what backward needs)."""

    def __init__(self, stride, pad):
        self.stride = stride
        self.pad = pad
        self.x = None
        self._forward = None


class Convolution(_Window):
    """out[N, FN, OH, OW] = the convolution (cross-correlation) of x[N, C, H, W] with the
    filters W[FN, C, FH, FW], plus b[FN]; OH = (H + 2*pad - FH) // stride + 1 (OW alike).

    ``W`` and ``b`` are held by reference (in-place updates reach the next call); the
    backward pass uses the very W array the forward used, as the book's ``col_W`` view
    does. ``x`` is the forward input as given, ``col_W`` = W.reshape(FN, -1).T, ``col``
    the patches in the book's layout [N*OH*OW, C*FH*FW] (built on access), and ``dW``,
    ``db`` the gradients after ``backward``.
    """

    def __init__(self, W, b, stride=1, pad=0):
        super().__init__(stride, pad)  # _forward: (W used, x shape, geometry)
        self.W = W
        self.b = b
        self.col_W = None
        self.dW = None
        self.db = None
        self._col = None  # patches [N, K, P] in the compute dtype

    @property
    def col(self):
        if self._col is None:
            return None
        n, k, p = self._col.shape
        return self._col.transpose(0, 2, 1).reshape(n * p, k)

    def _filters(self):
        W = checks.float_array("W", self.W, ndim=4)
        return W, checks.bias("b", self.b, W.shape[0], W.dtype)

    def forward(self, x):
        x = util.real_images("x", x)
        W, b = self._filters()
        fn, c, fh, fw = W.shape
        if x.shape[1] != c:
            raise ValueError(f"x has {x.shape[1]} channels (shape {x.shape}), W expects {c}")
        geometry = util.window_geometry(x.shape, fh, fw, self.stride, self.pad)
        _, _, stride, pad, oh, ow = geometry
        dtype = util.image_dtype(x, W, b)
        images = checks.c_array(x, x.dtype if x.dtype in checks.FLOAT_DTYPES else dtype)
        Wm = checks.c_array(W.reshape(fn, -1), dtype)
        b = checks.c_array(b, dtype)
        n = x.shape[0]
        col = _scratch(self._col, (n, Wm.shape[1], oh * ow), dtype)
        out = np.empty((n, fn, oh * ow), dtype)
        conv_forward(images, Wm, b, col, out, fh, fw, stride, pad, oh, ow)
        self.x, self.col_W, self._col = x, W.reshape(fn, -1).T, col
        self._forward = (W, x.shape, geometry)
        return out.reshape(n, fn, oh, ow)

    def backward(self, dout):
        checks.after_forward(self, self._forward)
        W, x_shape, (fh, fw, stride, pad, oh, ow) = self._forward
        n, fn = x_shape[0], W.shape[0]
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward output", (n, fn, oh, ow))
        dtype = np.result_type(dout, self._col)
        d = checks.c_array(dout, dtype).reshape(n, fn, oh * ow)
        col = checks.c_array(self._col, dtype)
        Wm = checks.c_array(W.reshape(fn, -1), dtype)
        k = Wm.shape[1]
        dx, dW, db = np.empty(x_shape, dtype), np.empty((fn, k), dtype), np.empty(fn, dtype)
        conv_backward(d, Wm, col, dx, dW, db, fh, fw, stride, pad, oh, ow, True)
        self.dW, self.db = dW.reshape(W.shape), db
        return dx


class Pooling(_Window):
    """Max pooling of x[N, C, H, W] over pool_h x pool_w windows moved by ``stride``:
    out[N, C, OH, OW], OH = (H + 2*pad - pool_h) // stride + 1 (OW alike; padding counts
    as 0, as in the book's im2col). ``arg_max`` gives each window's argmax (flat index into
    the window) in the book's order (image, output row, output column, channel)."""

    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        super().__init__(stride, pad)  # _forward: (x shape, geometry)
        self.pool_h = pool_h
        self.pool_w = pool_w
        self._arg = None  # argmax [N*C, OH, OW] (int64)

    @property
    def arg_max(self):
        if self._arg is None:
            return None
        n, c = self._forward[0][:2]
        return self._arg.reshape(n, c, *self._arg.shape[1:]).transpose(0, 2, 3, 1).reshape(-1)

    def forward(self, x):
        x = util.real_images("x", x)
        geometry = util.window_geometry(x.shape, self.pool_h, self.pool_w, self.stride, self.pad)
        ph, pw, stride, pad, oh, ow = geometry
        n, c, h, w = x.shape
        planes = checks.c_array(x, util.image_dtype(x)).reshape(n * c, h, w)
        out = np.empty((n * c, oh, ow), planes.dtype)
        arg = _scratch(self._arg, (n * c, oh, ow), np.int64)
        if ph == pw == 2 and pad == 0:
            maxpool2x2_forward(planes, out, arg, stride)
        else:
            maxpool_forward(planes, out, arg, ph, pw, stride, pad)
        self.x, self._arg, self._forward = x, arg, (x.shape, geometry)
        return out.reshape(n, c, oh, ow)

    def backward(self, dout):
        checks.after_forward(self, self._forward)
        (n, c, h, w), (ph, pw, stride, pad, oh, ow) = self._forward
        dout = checks.float_array("dout", dout)
        checks.same_shape("dout", dout, "the forward output", (n, c, oh, ow))
        d = checks.c_array(dout, None).reshape(n * c, oh, ow)
        dx = np.empty((n * c, h, w), d.dtype)
        maxpool_backward(d, self._arg, dx, ph, pw, stride, pad)
        return dx.reshape(n, c, h, w)


# The book's star import gives its classes, common.functions, im2col/col2im and np.
__all__ += [
    "BatchNormalization",
    "Convolution",
    "Dropout",
    "Pooling",
    "col2im",
    "im2col",
    "np",
    *functions.__all__,
]
