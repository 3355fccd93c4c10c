"""Plain NumPy reference: every kernel and layer written for clarity, not speed.

Tests compare ``fastbp.kernels`` and ``fastbp.layers`` with these; benchmarks time them
side by side. The layer classes follow the book's ``common/layers.py`` line for line
(including ``Relu.backward`` masking ``dout`` in place), so they are the honest baseline:
"the NumPy original". The functions never modify their inputs.
"""

from collections import OrderedDict

import numpy as np

from fastbp.gradcheck import numerical_gradient  # the book's common/gradient.py

# The book's guard against log(0) in cross_entropy_error.
LOG_EPS = 1e-7


# -- kernels ---------------------------------------------------------------------------


def affine_forward(x, W, b):
    """x[N, K] @ W[K, M] + b[M] -> [N, M]."""
    return np.dot(x, W) + b


def affine_backward(dout, x, W):
    """Gradients of affine_forward: dx[N, K], dW[K, M], db[M]."""
    return np.dot(dout, W.T), np.dot(x.T, dout), np.sum(dout, axis=0)


def relu_forward(x):
    """(max(x, 0), mask) with mask = x <= 0, as the book defines it."""
    mask = x <= 0
    out = x.copy()
    out[mask] = 0
    return out, mask


def relu_backward(dout, mask):
    """dout with the masked entries set to 0 (a new array)."""
    dx = dout.copy()
    dx[mask] = 0
    return dx


def sigmoid(x):
    """1 / (1 + exp(-x)), evaluated as exp(-log(1 + exp(-x))) so that no |x| overflows."""
    return np.exp(-np.logaddexp(0, -x)).astype(x.dtype, copy=False)


def sigmoid_backward(dout, y):
    """dout * (1 - y) * y, with y = sigmoid(x)."""
    return dout * (1.0 - y) * y


def softmax(x):
    """Row-wise softmax of x[N, C] (or x[C]), the row maximum subtracted first."""
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def labels_of(t, y):
    """Class indices from one-hot rows t[N, C] (same shape as y) or indices t[N]."""
    return t.argmax(axis=1) if t.shape == y.shape else t


def cross_entropy_error(y, t):
    """Mean over rows of -log(y[label] + 1e-7); a 1-D y is one sample, as in the book."""
    if y.ndim == 1:
        t = np.reshape(t, (1, np.size(t)))
        y = y.reshape(1, y.size)
    n = y.shape[0]
    return -np.sum(np.log(y[np.arange(n), labels_of(t, y)] + LOG_EPS)) / n


def softmax_ce_forward(x, t):
    """(loss, y) of softmax followed by cross-entropy, for one-hot or index t."""
    y = softmax(x)
    return cross_entropy_error(y, t), y


def softmax_ce_backward(y, t, dout=1.0):
    """dout * (y - onehot(t)) / N."""
    n = y.shape[0]
    if t.shape == y.shape:
        return dout * (y - t) / n
    dx = y.copy()
    dx[np.arange(n), t] -= 1
    return dout * dx / n


# -- layers, as in the book's common/layers.py ------------------------------------------


class MulLayer:
    """out = x * y for scalars or broadcastable arrays (the book's shopping example)."""

    def __init__(self):
        self.x = None
        self.y = None

    def forward(self, x, y):
        self.x = x
        self.y = y
        return x * y

    def backward(self, dout):
        return dout * self.y, dout * self.x


class AddLayer:
    """out = x + y for scalars or broadcastable arrays; backward returns (dout, dout)."""

    def forward(self, x, y):
        return x + y

    def backward(self, dout):
        return dout * 1, dout * 1


class Relu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        return dout


class Sigmoid:
    def __init__(self):
        self.out = None

    def forward(self, x):
        self.out = 1 / (1 + np.exp(-x))
        return self.out

    def backward(self, dout):
        return dout * (1.0 - self.out) * self.out


class Affine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return np.dot(self.x, self.W) + self.b

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        return dx.reshape(*self.original_x_shape)


class SoftmaxWithLoss:
    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = softmax(x)
        self.loss = cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            return (self.y - self.t) / batch_size
        dx = self.y.copy()
        dx[np.arange(batch_size), self.t] -= 1
        return dx / batch_size


# -- the book's ch05/two_layer_net.py, built from the layers above ----------------------


class TwoLayerNet:
    def __init__(self, input_size, hidden_size, output_size, weight_init_std=0.01):
        self.params = {}
        self.params["W1"] = weight_init_std * np.random.randn(input_size, hidden_size)  # noqa: NPY002
        self.params["b1"] = np.zeros(hidden_size)
        self.params["W2"] = weight_init_std * np.random.randn(hidden_size, output_size)  # noqa: NPY002
        self.params["b2"] = np.zeros(output_size)

        self.layers = OrderedDict()
        self.layers["Affine1"] = Affine(self.params["W1"], self.params["b1"])
        self.layers["Relu1"] = Relu()
        self.layers["Affine2"] = Affine(self.params["W2"], self.params["b2"])
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        y = self.predict(x)
        return self.lastLayer.forward(y, t)

    def accuracy(self, x, t):
        y = self.predict(x)
        y = np.argmax(y, axis=1)
        if t.ndim != 1:
            t = np.argmax(t, axis=1)
        return np.sum(y == t) / float(x.shape[0])

    def numerical_gradient(self, x, t):
        def loss_W(W):
            return self.loss(x, t)

        grads = {}
        for key in ("W1", "b1", "W2", "b2"):
            grads[key] = numerical_gradient(loss_W, self.params[key])
        return grads

    def gradient(self, x, t):
        self.loss(x, t)
        dout = 1
        dout = self.lastLayer.backward(dout)
        layers = list(self.layers.values())
        layers.reverse()
        for layer in layers:
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W2"], grads["b2"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


# -- optimizers, as in the book's common/optimizer.py -----------------------------------


class SGD:
    def __init__(self, lr=0.01):
        self.lr = lr

    def update(self, params, grads):
        for key in params:
            params[key] -= self.lr * grads[key]


class Momentum:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.v[key] = self.momentum * self.v[key] - self.lr * grads[key]
            params[key] += self.v[key]


class AdaGrad:
    def __init__(self, lr=0.01):
        self.lr = lr
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.h[key] += grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


class Adam:
    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999):
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.iter = 0
        self.m = None
        self.v = None

    def update(self, params, grads):
        if self.m is None:
            self.m = {key: np.zeros_like(val) for key, val in params.items()}
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2**self.iter) / (1.0 - self.beta1**self.iter)
        for key in params:
            self.m[key] += (1 - self.beta1) * (grads[key] - self.m[key])
            self.v[key] += (1 - self.beta2) * (grads[key] ** 2 - self.v[key])
            params[key] -= lr_t * self.m[key] / (np.sqrt(self.v[key]) + 1e-7)


class Nesterov:
    def __init__(self, lr=0.01, momentum=0.9):
        self.lr = lr
        self.momentum = momentum
        self.v = None

    def update(self, params, grads):
        if self.v is None:
            self.v = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            params[key] += self.momentum * self.momentum * self.v[key]
            params[key] -= (1 + self.momentum) * self.lr * grads[key]
            self.v[key] *= self.momentum
            self.v[key] -= self.lr * grads[key]


class RMSprop:
    def __init__(self, lr=0.01, decay_rate=0.99):
        self.lr = lr
        self.decay_rate = decay_rate
        self.h = None

    def update(self, params, grads):
        if self.h is None:
            self.h = {key: np.zeros_like(val) for key, val in params.items()}
        for key in params:
            self.h[key] *= self.decay_rate
            self.h[key] += (1 - self.decay_rate) * grads[key] * grads[key]
            params[key] -= self.lr * grads[key] / (np.sqrt(self.h[key]) + 1e-7)


# -- chapters 6-8 kernels (issue 11): images are NCHW ---------------------------------

# The book's variance guard in BatchNormalization.
BN_EPS = 10e-7


def output_size(size, window, stride, pad):
    """Output positions of a window sliding over size + 2*pad entries."""
    return (size + 2 * pad - window) // stride + 1


def im2col(x, fh, fw, stride=1, pad=0):
    """col[N*OH*OW, C*FH*FW] (the book's layout) of x[N, C, H, W], zero-padded."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, fh, stride, pad), output_size(w, fw, stride, pad)
    padded = np.pad(x, [(0, 0), (0, 0), (pad, pad), (pad, pad)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, (fh, fw), axis=(2, 3))
    windows = windows[:, :, : stride * oh : stride, : stride * ow : stride]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * fh * fw)


def col2im(col, shape, fh, fw, stride=1, pad=0):
    """The adjoint of im2col: rows of col added back onto images of ``shape``."""
    n, c, h, w = shape
    oh, ow = output_size(h, fh, stride, pad), output_size(w, fw, stride, pad)
    patches = col.reshape(n, oh, ow, c, fh, fw)
    img = np.zeros((n, c, h + 2 * pad + stride, w + 2 * pad + stride), col.dtype)
    for i in range(fh):
        for j in range(fw):
            img[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride] += patches[
                :, :, :, :, i, j
            ].transpose(0, 3, 1, 2)
    return img[:, :, pad : pad + h, pad : pad + w]


def conv_forward(x, W, b, stride=1, pad=0):
    """out[N, FN, OH, OW] = sum over (c, i, j) of W[f, c, i, j] * patch + b[f]."""
    fn, _, fh, fw = W.shape
    n, _, h, w = x.shape
    oh, ow = output_size(h, fh, stride, pad), output_size(w, fw, stride, pad)
    out = im2col(x, fh, fw, stride, pad) @ W.reshape(fn, -1).T + b
    return out.reshape(n, oh, ow, fn).transpose(0, 3, 1, 2)


def conv_backward(dout, x, W, stride=1, pad=0):
    """(dx, dW, db) of conv_forward for the output gradient dout[N, FN, OH, OW]."""
    fn, _, fh, fw = W.shape
    d = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
    col = im2col(x, fh, fw, stride, pad)
    dW = (col.T @ d).T.reshape(W.shape)
    dx = col2im(d @ W.reshape(fn, -1), x.shape, fh, fw, stride, pad)
    return dx, dW, d.sum(axis=0)


def maxpool_forward(x, ph, pw, stride=2, pad=0):
    """(out[N, C, OH, OW], arg[N, C, OH, OW]): window maxima and flat window argmaxes."""
    n, c, h, w = x.shape
    oh, ow = output_size(h, ph, stride, pad), output_size(w, pw, stride, pad)
    windows = im2col(x, ph, pw, stride, pad).reshape(n, oh, ow, c, ph * pw)
    windows = windows.transpose(0, 3, 1, 2, 4)
    return windows.max(axis=-1), windows.argmax(axis=-1)


def maxpool_backward(dout, arg, shape, ph, pw, stride=2, pad=0):
    """dx of ``shape`` with each dout entry added at its window's argmax."""
    n, c, oh, ow = dout.shape
    dwin = np.zeros((n, c, oh, ow, ph * pw), dout.dtype)
    np.put_along_axis(dwin, arg[..., None], dout[..., None], axis=-1)
    col = dwin.transpose(0, 2, 3, 1, 4).reshape(n * oh * ow, c * ph * pw)
    return col2im(col, shape, ph, pw, stride, pad)


def batchnorm_forward(x, gamma, beta, eps=BN_EPS):
    """(out, xc, xn, mu, var, std) of training-mode batch norm over the rows of x[N, D]."""
    mu = x.mean(axis=0)
    xc = x - mu
    var = np.mean(xc**2, axis=0)
    std = np.sqrt(var + eps)
    xn = xc / std
    return gamma * xn + beta, xc, xn, mu, var, std


def batchnorm_inference(x, gamma, beta, mean, var, eps=BN_EPS):
    """gamma * (x - mean) / sqrt(var + eps) + beta."""
    return gamma * ((x - mean) / np.sqrt(var + eps)) + beta


def batchnorm_backward(dout, gamma, xc, xn, std):
    """(dx, dgamma, dbeta) of batchnorm_forward, through the batch mean and variance."""
    n = dout.shape[0]
    dxn = gamma * dout
    dvar = -0.5 * np.sum(dxn * xc, axis=0) / std**3
    dxc = dxn / std + (2.0 / n) * xc * dvar
    return dxc - dxc.sum(axis=0) / n, np.sum(xn * dout, axis=0), dout.sum(axis=0)


def dropout_forward(x, draws, ratio):
    """(x * mask, mask) with mask = draws > ratio."""
    mask = draws > ratio
    return x * mask, mask


# -- chapters 6-8 layers, as in the book's common/layers.py ------------------------------


class Dropout:
    def __init__(self, dropout_ratio=0.5):
        self.dropout_ratio = dropout_ratio
        self.mask = None

    def forward(self, x, train_flg=True):
        if not train_flg:
            return x * (1.0 - self.dropout_ratio)
        out, self.mask = dropout_forward(x, np.random.rand(*x.shape), self.dropout_ratio)  # noqa: NPY002
        return out

    def backward(self, dout):
        return dout * self.mask


class BatchNormalization:
    def __init__(self, gamma, beta, momentum=0.9, running_mean=None, running_var=None):
        self.gamma = gamma
        self.beta = beta
        self.momentum = momentum
        self.running_mean = running_mean
        self.running_var = running_var
        self.input_shape = None
        self.xc = self.xn = self.std = None
        self.dgamma = self.dbeta = None

    def forward(self, x, train_flg=True):
        self.input_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        if self.running_mean is None:
            self.running_mean = np.zeros(x.shape[1])
            self.running_var = np.zeros(x.shape[1])
        if train_flg:
            out, self.xc, self.xn, mu, var, self.std = batchnorm_forward(x, self.gamma, self.beta)
            m = self.momentum
            self.running_mean = m * self.running_mean + (1 - m) * mu
            self.running_var = m * self.running_var + (1 - m) * var
        else:
            out = batchnorm_inference(x, self.gamma, self.beta, self.running_mean, self.running_var)
        return out.reshape(self.input_shape)

    def backward(self, dout):
        dout = dout.reshape(dout.shape[0], -1)
        dx, self.dgamma, self.dbeta = batchnorm_backward(
            dout, self.gamma, self.xc, self.xn, self.std
        )
        return dx.reshape(self.input_shape)


class Convolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x = self.col = self.col_W = None
        self.dW = self.db = None

    def forward(self, x):
        fn, _, fh, fw = self.W.shape
        n, _, h, w = x.shape
        oh = output_size(h, fh, self.stride, self.pad)
        ow = output_size(w, fw, self.stride, self.pad)
        self.x = x
        self.col = im2col(x, fh, fw, self.stride, self.pad)
        self.col_W = self.W.reshape(fn, -1).T
        out = np.dot(self.col, self.col_W) + self.b
        return out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)

    def backward(self, dout):
        fn, c, fh, fw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout).transpose(1, 0).reshape(fn, c, fh, fw)
        dcol = np.dot(dout, self.col_W.T)
        return col2im(dcol, self.x.shape, fh, fw, self.stride, self.pad)


class Pooling:
    def __init__(self, pool_h, pool_w, stride=2, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = self.arg = None

    def forward(self, x):
        self.x = x
        out, self.arg = maxpool_forward(x, self.pool_h, self.pool_w, self.stride, self.pad)
        return out

    def backward(self, dout):
        return maxpool_backward(
            dout, self.arg, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad
        )
