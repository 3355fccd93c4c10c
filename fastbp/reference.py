"""Plain NumPy reference: every kernel and layer written for clarity, not speed.

Tests compare ``fastbp.kernels`` and ``fastbp.layers`` with these; benchmarks time them
side by side. The layer classes follow the book's ``common/layers.py`` line for line
(including ``Relu.backward`` masking ``dout`` in place), so they are the honest baseline:
"the NumPy original". The functions never modify their inputs.
"""

import numpy as np

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
    """Mean over rows of -log(y[label] + 1e-7) for 2-D y."""
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
