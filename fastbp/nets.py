"""The book's networks built from ``fastbp.layers``: TwoLayerNet (ch.5) and MultiLayerNet.

Same constructor arguments, attributes (``params``, ``layers``, ``lastLayer``) and methods
(``predict``, ``loss``, ``accuracy``, ``numerical_gradient``, ``gradient``) as the book's
``ch05/two_layer_net.py`` and ``common/multi_layer_net.py``, plus two keywords:

- ``dtype``: float64 (default, as the book) or float32 parameters;
- ``rng``: a ``numpy.random.Generator`` (or seed) for the initial weights; None draws from
  the global ``np.random`` state like the book, so ``np.random.seed`` reproduces its nets.

Each Affine layer holds its ``params`` arrays by reference: in-place updates by an
optimizer and in-place perturbations by ``numerical_gradient`` reach the layers directly.
"""

import operator
from collections import OrderedDict

import numpy as np

from fastbp import checks
from fastbp.fused import TwoLayerStep
from fastbp.gradcheck import numerical_gradient
from fastbp.kernels.labels import argmax_matches
from fastbp.layers import Affine, BatchNormalization, Dropout, Relu, Sigmoid, SoftmaxWithLoss

ACTIVATIONS = {"relu": Relu, "sigmoid": Sigmoid}
# Named weight scales of MultiLayerNet: std = sqrt(gain / fan_in).
INIT_GAINS = {"relu": 2.0, "he": 2.0, "sigmoid": 1.0, "xavier": 1.0}


def _dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _sizes(input_size, hidden_sizes, output_size):
    sizes = [input_size, *hidden_sizes, output_size]
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"layer sizes must be positive integers, got {sizes}")
    return [int(size) for size in sizes]


def _normal(rng, shape):
    """Standard normal float64 draws from ``rng``, or from np.random like the book."""
    if rng is None:
        return np.random.randn(*shape)  # noqa: NPY002 (the book's global state)
    return np.random.default_rng(rng).standard_normal(shape)


class Net:
    """What every net here shares: ``layers`` (a dict, or a list) run in order, then
    ``lastLayer``; subclasses fill ``params`` and ``layers`` and define ``loss(x, t)``."""

    # Layers whose forward takes train_flg.
    train_mode_layers = (Dropout, BatchNormalization)

    def _sequence(self):
        """The layers in forward order."""
        return self.layers.values() if isinstance(self.layers, dict) else self.layers

    def predict(self, x, train_flg=False):
        """Scores [N, output_size] of x; ``train_flg`` selects training mode for dropout and
        batch norm."""
        for layer in self._sequence():
            if isinstance(layer, self.train_mode_layers):
                x = layer.forward(x, train_flg)
            else:
                x = layer.forward(x)
        return x

    def numerical_gradient(self, x, t):
        """{param name: gradient} by central differences (slow; for checking ``gradient``)."""
        return {
            key: numerical_gradient(lambda _: self.loss(x, t), p) for key, p in self.params.items()
        }

    def _backward(self):
        """Backpropagate dout = 1 from ``lastLayer`` through every layer (after a forward
        pass), leaving each layer's gradients in its attributes."""
        dout = self.lastLayer.backward(1)
        for layer in reversed(self._sequence()):
            dout = layer.backward(dout)


def _plus_weight_decay(loss, params, count, decay_lambda):
    """``loss`` plus 0.5 * lambda * sum(W**2) of params W1..W{count}, added one matrix
    at a time (``einsum``: no squared copy, and unlike ``np.dot`` it never wakes NumPy's
    BLAS threads, which then spin against fastbp's: ``tests/test_thread_pools.py``);
    ``loss`` itself without decay (nothing computed: any NaN or inf in a W already makes
    the loss NaN through the forward pass)."""
    if decay_lambda:
        for i in range(1, count + 1):
            W = params[f"W{i}"].reshape(-1)
            loss += 0.5 * decay_lambda * np.einsum("i,i->", W, W)
    return loss


class LayerNet(Net):
    """Affine layers with an activation between each pair, then SoftmaxWithLoss.

    sizes: [input, hidden..., output]; stds: the weight init std of each Affine layer;
    activation: the activation layer class; activation_name: its key prefix in ``layers``
    ("Relu" gives Relu1, Relu2, ...). ``weight_decay_lambda`` adds
    0.5 * lambda * sum(W**2) per weight matrix to the loss (and lambda * W to its gradient).
    """

    def __init__(self, sizes, stds, activation, activation_name, weight_decay_lambda, dtype, rng):
        dtype = _dtype(dtype)
        rng = None if rng is None else np.random.default_rng(rng)
        self.weight_decay_lambda = weight_decay_lambda
        self.params = {}
        self.layers = OrderedDict()
        self.n_affine = len(sizes) - 1
        for i in range(1, self.n_affine + 1):
            W = (stds[i - 1] * _normal(rng, (sizes[i - 1], sizes[i]))).astype(dtype)
            self.params[f"W{i}"] = W
            self.params[f"b{i}"] = np.zeros(sizes[i], dtype)
            self.layers[f"Affine{i}"] = Affine(W, self.params[f"b{i}"])
            if i < self.n_affine:
                self.layers[f"{activation_name}{i}"] = activation()
        self.lastLayer = SoftmaxWithLoss()

    def predict(self, x):
        """Scores [N, output_size] of inputs x[N, input_size] (or x[N, 1, 28, 28])."""
        return super().predict(x)

    def loss(self, x, t):
        """Mean cross-entropy of the batch (plus weight decay); t one-hot or class indices."""
        loss = self.lastLayer.forward(self.predict(x), t)
        return _plus_weight_decay(loss, self.params, self.n_affine, self.weight_decay_lambda)

    def accuracy(self, x, t):
        """Fraction of the batch whose highest score is the label (t one-hot or indices,
        validated like ``loss`` validates them)."""
        scores = self.predict(x)
        return _correct(scores, t) / float(scores.shape[0])

    def gradient(self, x, t):
        """{param name: gradient} of ``loss(x, t)`` by backpropagation."""
        self.loss(x, t)
        self._backward()
        grads = {}
        for i in range(1, self.n_affine + 1):
            affine = self.layers[f"Affine{i}"]
            decay = self.weight_decay_lambda
            grads[f"W{i}"] = affine.dW + decay * affine.W if decay else affine.dW
            grads[f"b{i}"] = affine.db
        return grads


class TwoLayerNet(LayerNet):
    """The book's ch.5 TwoLayerNet: Affine1, Relu1, Affine2, then SoftmaxWithLoss.

    Weights are ``weight_init_std`` times standard normal draws, biases zero; ``dtype`` is
    float64 (the book) or float32.
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        weight_init_std=0.01,
        *,
        dtype=np.float64,
        rng=None,
    ):
        sizes = _sizes(input_size, [hidden_size], output_size)
        super().__init__(sizes, [weight_init_std] * 2, Relu, "Relu", 0, dtype, rng)
        self._fused = (None, None)  # (the layers' param arrays, their TwoLayerStep or None)

    def fused_step(self, x):
        """The ``fastbp.fused.TwoLayerStep`` on the layers' params if batch x can take it,
        else None: x must be a float array of N >= 1 samples whose dtype promotes to the
        params' dtype, and the params one float dtype, C-contiguous and writeable."""
        first, second = self.layers["Affine1"], self.layers["Affine2"]
        arrays = (first.W, first.b, second.W, second.b)
        held, step = self._fused
        if held is None or not all(map(operator.is_, arrays, held)):
            try:
                step = TwoLayerStep(*arrays)
            except (TypeError, ValueError):  # the layers handle (or reject) such params
                step = None
            self._fused = (arrays, step)
        if step is None or not isinstance(x, np.ndarray) or x.ndim < 2 or x.size == 0:
            return None
        dtype = arrays[0].dtype
        # float32 and float64 only: x promotes to the params' dtype when it is no wider.
        promotes = x.dtype in checks.FLOAT_DTYPES and x.dtype.itemsize <= dtype.itemsize
        return step if promotes else None

    def loss(self, x, t):
        """Mean cross-entropy of the batch (t one-hot or class indices); one compiled
        forward pass when ``fused_step(x)`` allows (the loss also in ``lastLayer.loss``)."""
        step = self.fused_step(x)
        if step is None:
            return super().loss(x, t)
        self._adopt(x, t, step.loss_of(x, t, forward=True))
        return self.lastLayer.loss

    def _adopt(self, x, t, forward, grads=None):
        """Leave the layers as the book's forward (and, with ``grads``, backward) pass on
        batch (x, t) would: x, mask, y, loss, dW, db describe this batch, and each layer's
        ``backward`` works on it. ``forward``: (loss, hidden, probs, checked labels) of the
        fused step."""
        loss, hidden, probs, labels = forward
        layers = self.layers
        first, second = layers["Affine1"], layers["Affine2"]
        first.adopt_forward(x)
        layers["Relu1"].mask = hidden <= 0
        second.adopt_forward(hidden)
        self.lastLayer.adopt_forward(probs, t, loss, labels)
        if grads is not None:
            first.dW, first.db = grads["W1"], grads["b1"]
            second.dW, second.db = grads["W2"], grads["b2"]

    def gradient(self, x, t):
        """{param name: gradient} of ``loss(x, t)`` by backpropagation, as new arrays.

        When ``fused_step(x)`` allows, the whole forward and backward pass is one compiled
        call (``fastbp.fused``): same results to rounding, and the layers' attributes
        (x, mask, y, loss, dW, db) set as the layer-by-layer pass sets them.
        """
        step = self.fused_step(x)
        if step is None:
            return super().gradient(x, t)
        grads, forward = step.gradient(x, t, reuse=False, forward=True)
        self._adopt(x, t, forward, grads)
        return grads


class MultiLayerNet(LayerNet):
    """The book's MultiLayerNet: (Affine, activation) per hidden size, Affine, SoftmaxWithLoss.

    activation: 'relu' or 'sigmoid' (layers named Activation_function1, 2, ...).
    weight_init_std: 'relu'/'he' (std sqrt(2 / fan_in)), 'sigmoid'/'xavier'
    (sqrt(1 / fan_in)) or a number used as the std of every layer.
    weight_decay_lambda: L2 penalty 0.5 * lambda * sum(W**2) per weight matrix.
    """

    def __init__(
        self,
        input_size,
        hidden_size_list,
        output_size,
        activation="relu",
        weight_init_std="relu",
        weight_decay_lambda=0,
        *,
        dtype=np.float64,
        rng=None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        sizes = _sizes(input_size, list(hidden_size_list), output_size)
        if isinstance(weight_init_std, str):
            if weight_init_std.lower() not in INIT_GAINS:
                raise ValueError(
                    f"weight_init_std must be a number or one of {sorted(INIT_GAINS)}, "
                    f"got {weight_init_std!r}"
                )
            gain = INIT_GAINS[weight_init_std.lower()]
            stds = [np.sqrt(gain / fan_in) for fan_in in sizes[:-1]]
        else:
            stds = [weight_init_std] * (len(sizes) - 1)
        if weight_decay_lambda < 0:
            raise ValueError(f"weight_decay_lambda must be >= 0, got {weight_decay_lambda}")
        self.input_size = sizes[0]
        self.hidden_size_list = sizes[1:-1]
        self.output_size = sizes[-1]
        self.hidden_layer_num = len(self.hidden_size_list)
        super().__init__(
            sizes,
            stds,
            ACTIVATIONS[activation],
            "Activation_function",
            weight_decay_lambda,
            dtype,
            rng,
        )

    @property
    def last_layer(self):
        """The book's MultiLayerNet name for ``lastLayer``."""
        return self.lastLayer


class MultiLayerNetExtend(Net):
    """The book's MultiLayerNetExtend (``common/multi_layer_net_extend.py``): MultiLayerNet
    with optional batch normalization after each hidden Affine layer and dropout after each
    hidden activation.

    Layers: Affine1, [BatchNorm1], Activation_function1, [Dropout1], ..., Affine{L+1}, then
    ``last_layer`` (SoftmaxWithLoss). Params W1, b1, [gamma1, beta1], ... held by reference
    by the layers. ``predict``/``loss`` take ``train_flg`` (training mode for dropout and
    batch norm), ``gradient`` runs in training mode like the book's. Keywords ``dtype``
    and ``rng`` as for MultiLayerNet; the weights are drawn in the book's order.
    """

    def __init__(  # MultiLayerNet's arguments, then the book's three for dropout and batch norm
        self, input_size, hidden_size_list, output_size, activation="relu",
        weight_init_std="relu", weight_decay_lambda=0,
        use_dropout=False, dropout_ration=0.5, use_batchnorm=False,
        *, dtype=np.float64, rng=None,
    ):  # fmt: skip
        # A MultiLayerNet validates the arguments and draws the weights in the book's order.
        base = MultiLayerNet(
            input_size,
            hidden_size_list,
            output_size,
            activation,
            weight_init_std,
            weight_decay_lambda,
            dtype=dtype,
            rng=rng,
        )
        self.input_size, self.output_size = base.input_size, base.output_size
        self.hidden_size_list = base.hidden_size_list
        self.hidden_layer_num = base.hidden_layer_num
        self.weight_decay_lambda = weight_decay_lambda
        self.use_dropout, self.use_batchnorm = use_dropout, use_batchnorm
        dtype = _dtype(dtype)
        self.params = {}
        self.layers = OrderedDict()
        for idx in range(1, self.hidden_layer_num + 2):
            W, b = base.params[f"W{idx}"], base.params[f"b{idx}"]
            self.params[f"W{idx}"], self.params[f"b{idx}"] = W, b
            self.layers[f"Affine{idx}"] = Affine(W, b)
            if idx > self.hidden_layer_num:
                break
            if use_batchnorm:
                size = self.hidden_size_list[idx - 1]
                gamma, beta = np.ones(size, dtype), np.zeros(size, dtype)
                self.params[f"gamma{idx}"], self.params[f"beta{idx}"] = gamma, beta
                self.layers[f"BatchNorm{idx}"] = BatchNormalization(gamma, beta)
            self.layers[f"Activation_function{idx}"] = ACTIVATIONS[activation]()
            if use_dropout:
                self.layers[f"Dropout{idx}"] = Dropout(dropout_ration)
        self.last_layer = SoftmaxWithLoss()

    @property
    def lastLayer(self):  # noqa: N802 (TwoLayerNet's name, read by fastbp.train)
        """``last_layer`` under TwoLayerNet's name."""
        return self.last_layer

    def loss(self, x, t, train_flg=False):
        """Cross-entropy of the batch plus 0.5 * lambda * sum(W**2) per weight matrix."""
        loss = self.last_layer.forward(self.predict(x, train_flg), t)
        count = self.hidden_layer_num + 1
        return _plus_weight_decay(loss, self.params, count, self.weight_decay_lambda)

    def accuracy(self, x, t):
        """Fraction of the batch classified right, in inference mode."""
        scores = self.predict(x, train_flg=False)
        return _correct(scores, t) / float(scores.shape[0])

    def _keys(self):
        """Parameter names in the book's gradient order."""
        keys = []
        for idx in range(1, self.hidden_layer_num + 2):
            keys += [f"W{idx}", f"b{idx}"]
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                keys += [f"gamma{idx}", f"beta{idx}"]
        return keys

    def numerical_gradient(self, x, t):
        """{param name: gradient} by central differences of the training-mode loss."""
        return {
            key: numerical_gradient(lambda _: self.loss(x, t, train_flg=True), self.params[key])
            for key in self._keys()
        }

    def gradient(self, x, t):
        """{param name: gradient} of the training-mode loss by backpropagation."""
        self.loss(x, t, train_flg=True)
        self._backward()
        grads = {}
        for idx in range(1, self.hidden_layer_num + 2):
            affine = self.layers[f"Affine{idx}"]
            grads[f"W{idx}"] = affine.dW + self.weight_decay_lambda * self.params[f"W{idx}"]
            grads[f"b{idx}"] = affine.db
            if self.use_batchnorm and idx <= self.hidden_layer_num:
                grads[f"gamma{idx}"] = self.layers[f"BatchNorm{idx}"].dgamma
                grads[f"beta{idx}"] = self.layers[f"BatchNorm{idx}"].dbeta
        return grads


def _correct(scores, t):
    """How many rows of scores[N, C] (a net's float output) have their argmax at the
    label (one-hot or indices, validated), as an np.intp like the book's ``np.sum``."""
    scores = checks.c_array(checks.float_array("scores", scores, ndim=2), None)
    classes = np.empty(scores.shape[0], np.intp)
    t = checks.labels(t, *scores.shape, scores.dtype, classes)
    return np.intp(argmax_matches(scores, classes if t.ndim == 2 else t))


CONVNETS = ("DeepConvNet", "SimpleConvNet")


def __getattr__(name):
    """The chapter 7-8 conv nets of ``fastbp.convnets``, importable from here too (loaded
    on first use: fastbp.convnets builds on this module)."""
    if name in CONVNETS:
        from fastbp import convnets

        return getattr(convnets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: F822 (the conv nets come from __getattr__)
    "DeepConvNet",
    "LayerNet",
    "MultiLayerNet",
    "MultiLayerNetExtend",
    "SimpleConvNet",
    "TwoLayerNet",
]
