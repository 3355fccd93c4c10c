"""The book's convolutional nets: SimpleConvNet (ch07/simple_convnet.py) and DeepConvNet
(ch08/deep_convnet.py), built from ``fastbp.layers``.

Same constructor arguments, parameter names (W1, b1, ...), attributes (``params``,
``layers``, ``last_layer``) and methods (``predict(x, train_flg)``, ``loss``,
``accuracy(x, t, batch_size)``, ``gradient``, ``numerical_gradient``, ``save_params``,
``load_params``) as the book's; the pickle files hold the book's dict of NumPy arrays, so
weights move between the book's nets and these both ways. Keywords ``dtype`` (float64 as
the book, or float32) and ``rng`` (a Generator or seed; None draws from ``np.random`` like
the book, so ``np.random.seed`` reproduces its weights) as in ``fastbp.nets``.

Deliberate differences: ``accuracy`` also counts the last partial batch (the book's skips
it but still divides by N; the results agree when batch_size divides N), and layer sizes
the book hard-codes (DeepConvNet's 64*4*4 inputs of W7 and its He-init fan-ins) are
computed from the arguments, so they equal the book's for its default arguments and
other input sizes work too.
"""

import pickle
from collections import OrderedDict

import numpy as np

from fastbp import util
from fastbp.layers import (
    Affine,
    Convolution,
    Dropout,
    Pooling,
    Relu,
    SoftmaxWithLoss,
)
from fastbp.nets import Net, _correct, _dtype, _normal

__all__ = ["DeepConvNet", "SimpleConvNet"]


class ConvNet(Net):
    """What both nets share; subclasses fill ``params``, ``layers`` and ``param_layers``
    (the layer holding W{i} and b{i}, in order)."""

    def _init(self, dtype, rng):
        self._dtype = _dtype(dtype)
        self._rng = None if rng is None else np.random.default_rng(rng)
        self.params = {}

    def _add(self, i, std, shape):
        """W{i} = std * normal draws of ``shape``, b{i} = zeros of its output size (a conv
        filter bank's first axis, an affine matrix's last); returns them."""
        W = (std * _normal(self._rng, shape)).astype(self._dtype)
        b = np.zeros(shape[0] if len(shape) == 4 else shape[-1], self._dtype)
        self.params[f"W{i}"], self.params[f"b{i}"] = W, b
        return W, b

    @property
    def lastLayer(self):  # noqa: N802 (TwoLayerNet's name, read by fastbp.train)
        """``last_layer`` under TwoLayerNet's name."""
        return self.last_layer

    def loss(self, x, t):
        """Mean cross-entropy of the batch in training mode (t one-hot or class indices)."""
        return self.last_layer.forward(self.predict(x, train_flg=True), t)

    def accuracy(self, x, t, batch_size=100):
        """Fraction of x classified right, predicted in batches of ``batch_size``."""
        batch_size = util.count("batch_size", batch_size, 1)
        x, t = np.asarray(x), np.asarray(t)
        if x.ndim == 0 or t.ndim == 0 or len(t) != len(x) or len(x) == 0:
            raise ValueError(
                f"x and t must hold the same number (> 0) of samples, got "
                f"shapes {x.shape} and {t.shape}"
            )
        correct = 0
        for lo in range(0, len(x), batch_size):
            batch = slice(lo, lo + batch_size)
            correct += _correct(self.predict(x[batch]), t[batch])
        return correct / float(len(x))

    def gradient(self, x, t):
        """{param name: gradient} of ``loss(x, t)`` by backpropagation."""
        self.loss(x, t)
        self._backward()
        grads = {}
        for i, layer in enumerate(self.param_layers, 1):
            grads[f"W{i}"], grads[f"b{i}"] = layer.dW, layer.db
        return grads

    def save_params(self, file_name="params.pkl"):
        """Pickle ``params`` (a dict of NumPy arrays, the book's file format)."""
        with open(file_name, "wb") as f:
            pickle.dump(dict(self.params), f)

    def load_params(self, file_name="params.pkl"):
        """Load a params pickle (the book's or ours) and hand its arrays to the layers."""
        with open(file_name, "rb") as f:
            params = pickle.load(f)  # noqa: S301 (the book's format; trusted files only)
        for key, val in params.items():
            self.params[key] = val
        for i, layer in enumerate(self.param_layers, 1):
            layer.W, layer.b = self.params[f"W{i}"], self.params[f"b{i}"]


def _conv_param(param, name):
    """(filter_num, filter_size, pad, stride) of a book conv_param dict."""
    try:
        return tuple(
            util.count(f"{name}[{key!r}]", param[key], 0 if key == "pad" else 1)
            for key in ("filter_num", "filter_size", "pad", "stride")
        )
    except KeyError as e:
        raise ValueError(f"{name} needs the key {e.args[0]!r}") from None


def _after(size, window, stride, pad):
    """Output size of a window sliding over ``size`` entries (ValueError if none)."""
    out = (size + 2 * pad - window) // stride + 1
    if out < 1:
        raise ValueError(f"a window of {window} (pad {pad}) does not fit an input of {size}")
    return out


class SimpleConvNet(ConvNet):
    """conv - relu - pool - affine - relu - affine - softmax (the book's ch07 net).

    Layers Conv1, Relu1, Pool1 (2x2, stride 2), Affine1, Relu2, Affine2; params W1[FN, C,
    FS, FS], b1, W2[FN*(OH//2)*(OW//2), hidden_size], b2, W3[hidden_size, output_size], b3,
    each weight ``weight_init_std`` times normal draws (in that order, as the book).
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param=None,
        hidden_size=100,
        output_size=10,
        weight_init_std=0.01,
        *,
        dtype=np.float64,
        rng=None,
    ):
        if conv_param is None:
            conv_param = {"filter_num": 30, "filter_size": 5, "pad": 0, "stride": 1}
        fn, fs, pad, stride = _conv_param(conv_param, "conv_param")
        channels, height, width = (util.count("input_dim", d, 1) for d in input_dim)
        oh, ow = _after(height, fs, stride, pad), _after(width, fs, stride, pad)
        pooled = fn * (oh // 2) * (ow // 2)
        self._init(dtype, rng)
        W1, b1 = self._add(1, weight_init_std, (fn, channels, fs, fs))
        W2, b2 = self._add(2, weight_init_std, (pooled, hidden_size))
        W3, b3 = self._add(3, weight_init_std, (hidden_size, output_size))
        self.layers = OrderedDict()
        self.layers["Conv1"] = Convolution(W1, b1, stride, pad)
        self.layers["Relu1"] = Relu()
        self.layers["Pool1"] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers["Affine1"] = Affine(W2, b2)
        self.layers["Relu2"] = Relu()
        self.layers["Affine2"] = Affine(W3, b3)
        self.last_layer = SoftmaxWithLoss()
        self.param_layers = [self.layers[k] for k in ("Conv1", "Affine1", "Affine2")]


class DeepConvNet(ConvNet):
    """The book's ch08 net: (conv - relu - conv - relu - pool) x 3 - affine - relu -
    dropout - affine - dropout - softmax, He-initialized.

    ``layers`` is the book's list of 21 layers; params W1..W6 (conv filters), W7, W8
    (affine) and their biases.
    """

    def __init__(
        self,
        input_dim=(1, 28, 28),
        conv_param_1=None,
        conv_param_2=None,
        conv_param_3=None,
        conv_param_4=None,
        conv_param_5=None,
        conv_param_6=None,
        hidden_size=50,
        output_size=10,
        *,
        dtype=np.float64,
        rng=None,
    ):
        given = (conv_param_1, conv_param_2, conv_param_3, conv_param_4, conv_param_5)
        given += (conv_param_6,)
        defaults = ((16, 1), (16, 1), (32, 1), (32, 2), (64, 1), (64, 1))  # (filters, pad)
        convs = [
            _conv_param(
                p or {"filter_num": fn, "filter_size": 3, "pad": pad, "stride": 1},
                f"conv_param_{i}",
            )
            for i, (p, (fn, pad)) in enumerate(zip(given, defaults, strict=True), 1)
        ]
        channels, height, width = (util.count("input_dim", d, 1) for d in input_dim)
        self._init(dtype, rng)
        self.layers = []
        for i, (fn, fs, pad, stride) in enumerate(convs, 1):
            W, b = self._add(i, np.sqrt(2.0 / (channels * fs * fs)), (fn, channels, fs, fs))
            self.layers += [Convolution(W, b, stride, pad), Relu()]
            channels = fn
            height, width = _after(height, fs, stride, pad), _after(width, fs, stride, pad)
            if i % 2 == 0:
                self.layers.append(Pooling(pool_h=2, pool_w=2, stride=2))
                height, width = _after(height, 2, 2, 0), _after(width, 2, 2, 0)
        flat = channels * height * width
        W7, b7 = self._add(7, np.sqrt(2.0 / flat), (flat, hidden_size))
        W8, b8 = self._add(8, np.sqrt(2.0 / hidden_size), (hidden_size, output_size))
        self.layers += [Affine(W7, b7), Relu(), Dropout(0.5), Affine(W8, b8), Dropout(0.5)]
        self.last_layer = SoftmaxWithLoss()
        self.param_layers = [self.layers[i] for i in (0, 2, 5, 7, 10, 12, 15, 18)]
