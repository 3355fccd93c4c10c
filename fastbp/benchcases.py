"""Benchmark cases shared by ``asv_benchmarks/`` and ``fastbp bench``.

Every builder takes an implementation name (``"fastbp"`` or ``"reference"``), a size and a
dtype name, builds seeded data, and returns zero-argument callables, so both tools time
exactly the same work with the NumPy reference beside each fastbp number. A combination
that makes no sense raises ``NotImplementedError`` (asv reads that as "skip").

Kernel cases call ``fastbp.kernels`` with outputs allocated once up front (that is the
kernels' contract) against the allocating ``fastbp.reference`` functions; layer cases call
the drop-in classes against the book's classes, so they are the like-for-like comparison.
"""

import functools

import numba
import numpy as np

from fastbp import data, fused, kernels, layers, nets, reference

IMPLS = ("fastbp", "reference")
TRAIN_IMPLS = ("fastbp", "fused", "reference")  # fused: fastbp.fused, one call per step
DTYPES = ("float32", "float64")

# Shapes (N, M) of the inputs of the elementwise kernels and of softmax logits (N, C).
SHAPES = ((1, 50), (100, 10), (100, 50), (1000, 1000), (4096, 4096))
# Affine shapes (N, K, M): x[N, K] @ W[K, M]; the MNIST layers, then one large square GEMM.
AFFINE_SHAPES = ((1, 784, 50), (100, 784, 50), (100, 50, 10), (1000, 1000, 1000))
# TwoLayerNet 784 -> hidden -> 10, trained on batches: (hidden, batch).
TRAIN_SIZES = ((50, 100), (100, 100), (1024, 256), (50, 1))
INPUT_SIZE = 784
CLASSES = 10
LEARNING_RATE = 0.1
PARAM_KEYS = ("W1", "b1", "W2", "b2")

KERNEL_FAMILIES = ("affine", "relu", "sigmoid", "softmax_ce")
LAYER_FAMILIES = ("Affine", "Relu", "Sigmoid", "SoftmaxWithLoss")


def _check(impl, dtype):
    if impl not in IMPLS:
        raise NotImplementedError(f"unknown implementation {impl!r}")
    if dtype not in DTYPES:
        raise NotImplementedError(f"unknown dtype {dtype!r}")
    return np.dtype(dtype)


def normal(shape, dtype, seed=0, scale=1.0):
    """Seeded standard-normal data of ``shape`` in ``dtype``, times ``scale``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def labels(n, classes, seed=0):
    """Seeded class indices t[n] (int64) in [0, classes)."""
    return np.random.default_rng(seed).integers(0, classes, n)


def one_hot(t, classes, dtype):
    """One-hot rows [len(t), classes] of ``dtype`` for class indices ``t``."""
    out = np.zeros((t.size, classes), dtype)
    out[np.arange(t.size), t] = 1
    return out


def shape_name(shape):
    """'100x784->50' for affine shapes, '100x50' otherwise."""
    if len(shape) == 3:
        return f"{shape[0]}x{shape[1]}->{shape[2]}"
    return "x".join(map(str, shape))


def family_shapes(family):
    """The default sizes for a kernel or layer family."""
    return AFFINE_SHAPES if family.lower() == "affine" else SHAPES


# -- kernels ---------------------------------------------------------------------------


def _affine_kernels(impl, shape, dt):
    n, k, m = shape
    x, W = normal((n, k), dt, 1), normal((k, m), dt, 2, 0.01)
    b, dout = normal(m, dt, 3), normal((n, m), dt, 4)
    if impl == "reference":
        return (
            lambda: reference.affine_forward(x, W, b),
            lambda: reference.affine_backward(dout, x, W),
        )
    out, dx, dW, db = np.empty((n, m), dt), np.empty((n, k), dt), np.empty_like(W), np.empty_like(b)
    return (
        lambda: kernels.affine_forward(out, x, W, b),
        lambda: kernels.affine_backward(dout, x, W, dx, dW, db, True),
    )


def _relu_kernels(impl, shape, dt):
    x, dout = normal(shape, dt, 1).ravel(), normal(shape, dt, 2).ravel()
    mask = x <= 0
    if impl == "reference":
        return lambda: reference.relu_forward(x), lambda: reference.relu_backward(dout, mask)
    out, dx, out_mask = np.empty_like(x), np.empty_like(x), np.empty_like(mask)
    return (
        lambda: kernels.relu_forward(x, out, out_mask),
        lambda: kernels.relu_backward(dout, mask, dx),
    )


def _sigmoid_kernels(impl, shape, dt):
    x, dout = normal(shape, dt, 1).ravel(), normal(shape, dt, 2).ravel()
    y = reference.sigmoid(x)
    if impl == "reference":
        return lambda: reference.sigmoid(x), lambda: reference.sigmoid_backward(dout, y)
    out, dx = np.empty_like(x), np.empty_like(x)
    return (
        lambda: kernels.sigmoid_forward(x, out),
        lambda: kernels.sigmoid_backward(dout, y, dx),
    )


def _softmax_ce_kernels(impl, shape, dt):
    x, t = normal(shape, dt, 1), labels(shape[0], shape[1], 2)
    y = reference.softmax(x)
    if impl == "reference":
        return (
            lambda: reference.softmax_ce_forward(x, t),
            lambda: reference.softmax_ce_backward(y, t),
        )
    out, dx = np.empty_like(x), np.empty_like(x)
    scale = 1.0 / shape[0]
    return (
        lambda: kernels.softmax_ce_forward(x, t, out),
        lambda: kernels.softmax_ce_backward(y, t, scale, dx),
    )


_KERNEL_BUILDERS = {
    "affine": _affine_kernels,
    "relu": _relu_kernels,
    "sigmoid": _sigmoid_kernels,
    "softmax_ce": _softmax_ce_kernels,
}


def kernel_pair(family, impl, shape, dtype):
    """(forward, backward) callables running one kernel family once on seeded data.

    ``shape`` is (N, K, M) for ``"affine"`` and the input shape (N, M) otherwise.
    """
    dt = _check(impl, dtype)
    if family not in _KERNEL_BUILDERS:
        raise NotImplementedError(f"unknown kernel family {family!r}")
    if len(shape) != (3 if family == "affine" else 2):
        raise NotImplementedError(f"shape {shape} does not fit the {family} kernels")
    return _KERNEL_BUILDERS[family](impl, tuple(shape), dt)


# -- layers ----------------------------------------------------------------------------


def _layer_data(family, shape, dt):
    """(constructor args, forward args, dout) for one layer family."""
    if family == "Affine":
        n, k, m = shape
        W, b = normal((k, m), dt, 2, 0.01), normal(m, dt, 3)
        return (W, b), (normal((n, k), dt, 1),), normal((n, m), dt, 4)
    if family == "SoftmaxWithLoss":
        return (), (normal(shape, dt, 1), labels(shape[0], shape[1], 2)), 1
    return (), (normal(shape, dt, 1),), normal(shape, dt, 2)


def layer_pair(family, impl, shape, dtype):
    """(forward, backward) callables of one layer object (forward already run once).

    ``impl="fastbp"`` uses ``fastbp.layers``, ``"reference"`` the book's classes.
    """
    dt = _check(impl, dtype)
    if family not in LAYER_FAMILIES:
        raise NotImplementedError(f"unknown layer family {family!r}")
    if len(shape) != (3 if family == "Affine" else 2):
        raise NotImplementedError(f"shape {shape} does not fit the {family} layer")
    module = layers if impl == "fastbp" else reference
    init_args, forward_args, dout = _layer_data(family, tuple(shape), dt)
    layer = getattr(module, family)(*init_args)
    layer.forward(*forward_args)
    return lambda: layer.forward(*forward_args), lambda: layer.backward(dout)


# -- TwoLayerNet train step ------------------------------------------------------------


def train_batch(batch, dtype, seed=0):
    """MNIST-like x[batch, 784] in [0, 1) and one-hot t[batch, 10], both of ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, INPUT_SIZE)).astype(dtype)
    return x, one_hot(rng.integers(0, CLASSES, batch), CLASSES, dtype)


def mnist_batch(batch, dtype=None):
    """The first ``batch`` embedded MNIST training images and one-hot labels.

    ``dtype=None`` keeps the book's dtypes (float32 images, float64 labels).
    """
    (x, t), _ = data.load_mnist(normalize=True, one_hot_label=True)
    x, t = x[:batch], t[:batch]
    return (x, t) if dtype is None else (x.astype(dtype), t.astype(dtype))


def two_layer_net(impl, hidden, dtype, seed=0):
    """TwoLayerNet(784, hidden, 10) of ``impl`` with ``dtype`` params; same weights per seed."""
    dt = _check(impl, dtype)
    net = nets.TwoLayerNet(INPUT_SIZE, hidden, CLASSES, dtype=dt, rng=seed)
    if impl == "fastbp":
        return net
    # The book's net is float64 only: give it the same params of the right dtype.
    return _on_params(reference.TwoLayerNet(INPUT_SIZE, hidden, CLASSES), net.params)


def _on_params(net, params):
    """``net`` (Affine1, Affine2 layers, as in the book) made to train ``params`` in place."""
    net.params = params
    for i in (1, 2):
        affine = net.layers[f"Affine{i}"]
        affine.W, affine.b = params[f"W{i}"], params[f"b{i}"]
    return net


def sgd_step(net, x, t, lr=LEARNING_RATE, gradient=None):
    """The book's training step: backprop gradients, then params[key] -= lr * grads[key].

    ``gradient(x, t)`` gives the gradients; None means ``net.gradient``.
    """
    gradient = gradient or net.gradient

    def step():
        grads = gradient(x, t)
        for key in PARAM_KEYS:
            net.params[key] -= lr * grads[key]

    return step


def layers_step(params, x, t, lr=LEARNING_RATE):
    """The step of a fastbp TwoLayerNet run through its drop-in layers one by one
    (``nets.LayerNet.gradient``: never the fused kernel); updates ``params`` in place."""
    W1, W2 = params["W1"], params["W2"]
    net = nets.TwoLayerNet(W1.shape[0], W1.shape[1], W2.shape[1], dtype=W1.dtype)
    _on_params(net, params)
    return sgd_step(net, x, t, lr, functools.partial(nets.LayerNet.gradient, net))


def fused_step(params, x, t, lr=LEARNING_RATE):
    """The same step as one compiled call, ``fastbp.fused.TwoLayerStep.sgd_step``.

    Updates ``params`` (W1, b1, W2, b2 of one dtype) in place.
    """
    step = fused.TwoLayerStep.from_params(params)
    return lambda: step.sgd_step(x, t, lr)


def train_step(impl, hidden, batch, dtype, seed=0):
    """One SGD step of a fresh TwoLayerNet(784, hidden, 10) on a seeded batch.

    ``impl`` is one of TRAIN_IMPLS; "fused" runs the fastbp net's params through
    ``fused_step`` instead of the book's gradient-then-update loop.
    """
    x, t = train_batch(batch, dtype, seed)
    if impl == "fused":
        return fused_step(two_layer_net("fastbp", hidden, dtype, seed).params, x, t)
    return sgd_step(two_layer_net(impl, hidden, dtype, seed), x, t)


def bare_gemms(hidden, batch, dtype, seed=0):
    """The five np.dot calls a train step needs, as (label, callable) pairs.

    Forward x @ W1 and z1 @ W2; backward dz2 @ W2.T, z1.T @ dz2 and x.T @ dz1.
    """
    dt = np.dtype(dtype)
    x = normal((batch, INPUT_SIZE), dt, seed)
    W1, W2 = normal((INPUT_SIZE, hidden), dt, 1), normal((hidden, CLASSES), dt, 2)
    z1, dz1, dz2 = (
        normal((batch, hidden), dt, 3),
        normal((batch, hidden), dt, 4),
        normal((batch, CLASSES), dt, 5),
    )
    return [
        ("x@W1", lambda: np.dot(x, W1)),
        ("z1@W2", lambda: np.dot(z1, W2)),
        ("dz2@W2.T", lambda: np.dot(dz2, W2.T)),
        ("z1.T@dz2", lambda: np.dot(z1.T, dz2)),
        ("x.T@dz1", lambda: np.dot(x.T, dz1)),
    ]


# -- the same step in other frameworks (optional: used only when they are importable) ----


def torch_step(params, x, t, lr=LEARNING_RATE):
    """The train step in PyTorch eager mode on the CPU, with as many threads as Numba.

    ``params`` holds NumPy arrays (copied); x and t are cast to the params' dtype.
    """
    import torch

    torch.set_num_threads(numba.get_num_threads())
    p = {key: torch.tensor(value, requires_grad=True) for key, value in params.items()}
    dtype = p["W1"].dtype
    x, t = torch.as_tensor(x, dtype=dtype), torch.as_tensor(t, dtype=dtype)
    ordered = [p[key] for key in PARAM_KEYS]

    def step():
        z1 = torch.relu(x @ p["W1"] + p["b1"])
        loss = -(t * torch.log_softmax(z1 @ p["W2"] + p["b2"], dim=1)).sum() / x.shape[0]
        grads = torch.autograd.grad(loss, ordered)
        with torch.no_grad():
            for param, grad in zip(ordered, grads, strict=True):
                param -= lr * grad

    return step


def jax_step(params, x, t, lr=LEARNING_RATE):
    """The train step as one ``jax.jit`` of value_and_grad plus the SGD update (CPU).

    Enables jax_enable_x64 so float64 params stay float64.
    """
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def loss(p, x, t):
        z1 = jax.nn.relu(x @ p["W1"] + p["b1"])
        return -jnp.sum(t * jax.nn.log_softmax(z1 @ p["W2"] + p["b2"])) / x.shape[0]

    @jax.jit
    def update(p, x, t):
        value, grads = jax.value_and_grad(loss)(p, x, t)
        return {key: p[key] - lr * grads[key] for key in p}, value

    dtype = params["W1"].dtype
    state = [{key: jnp.asarray(value) for key, value in params.items()}]
    x, t = jnp.asarray(x, dtype), jnp.asarray(t, dtype)

    def step():
        state[0], value = update(state[0], x, t)
        value.block_until_ready()

    return step


# == chapters 6-8 (issue 11): conv layers, dropout, batch norm, conv-net steps ============
#
# The same contract as above: builders take an implementation ("fastbp" or "reference",
# the book's classes), a named size and a dtype name, and return zero-argument callables.
# ``fastbp bench`` can list CONV_LAYER_FAMILIES with ``conv_layer_pair`` and time
# ``convnet_step`` and ``deep_convnet_inference``.

CONV_LAYER_FAMILIES = ("Convolution", "Pooling", "BatchNormalization", "Dropout")
# Named sizes per family: Convolution (x shape, W shape, stride, pad), Pooling (x shape,
# pool, stride), BatchNormalization and Dropout (x shape).
CONV_LAYER_SIZES = {
    "Convolution": {
        "simple_convnet": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0),
        "deep_conv2": ((100, 16, 28, 28), (16, 16, 3, 3), 1, 1),
        "deep_conv6": ((100, 64, 8, 8), (64, 64, 3, 3), 1, 1),
    },
    "Pooling": {
        "simple_convnet": ((100, 30, 24, 24), 2, 2),
        "deep_pool1": ((100, 16, 28, 28), 2, 2),
    },
    "BatchNormalization": {"100x100": ((100, 100),), "100x4320": ((100, 4320),)},
    "Dropout": {"100x100": ((100, 100),), "100x30x24x24": ((100, 30, 24, 24),)},
}
CONVNET_BATCHES = (100,)
DEEP_INFERENCE_IMAGES = (1000,)


def conv_layer_sizes(family):
    """The size names of a chapter 6-8 layer family."""
    return tuple(CONV_LAYER_SIZES[family])


def conv_layer_pair(family, impl, size, dtype):
    """(forward, backward) callables of one chapter 6-8 layer (forward already run once);
    Dropout and BatchNormalization run in training mode, Dropout reseeding np.random."""
    dt = _check(impl, dtype)
    if family not in CONV_LAYER_SIZES or size not in CONV_LAYER_SIZES[family]:
        raise NotImplementedError(f"unknown {family} size {size!r}")
    module = layers if impl == "fastbp" else reference
    spec = CONV_LAYER_SIZES[family][size]
    x = normal(spec[0], dt, 1)
    if family == "Convolution":
        layer = module.Convolution(
            normal(spec[1], dt, 2, 0.1), normal(spec[1][0], dt, 3), *spec[2:]
        )
    elif family == "Pooling":
        layer = module.Pooling(spec[1], spec[1], spec[2])
    elif family == "BatchNormalization":
        d = spec[0][1]
        layer = module.BatchNormalization(normal(d, dt, 2) + 1, normal(d, dt, 3))
    else:
        layer = module.Dropout(0.5)
    np.random.seed(0)  # noqa: NPY002 (Dropout draws from the global state, as the book)
    dout = normal(layer.forward(x).shape, dt, 4)
    return lambda: layer.forward(x), lambda: layer.backward(dout.copy())


def _book_layers(net):
    """``net`` (a fastbp conv net) with each layer swapped for the book's class
    (``fastbp.reference``) on the same parameter arrays: the book's net, same weights."""

    def book(layer):
        name = type(layer).__name__
        if name in ("Convolution", "Affine"):
            book_layer = getattr(reference, name)(layer.W, layer.b, *(
                (layer.stride, layer.pad) if name == "Convolution" else ()))  # fmt: skip
            return book_layer
        if name == "Pooling":
            return reference.Pooling(layer.pool_h, layer.pool_w, layer.stride, layer.pad)
        if name == "Dropout":
            return reference.Dropout(layer.dropout_ratio)
        return getattr(reference, name)()

    if isinstance(net.layers, dict):
        net.layers = type(net.layers)((key, book(layer)) for key, layer in net.layers.items())
    else:
        net.layers = [book(layer) for layer in net.layers]
    net.param_layers = [layer for layer in net._sequence() if hasattr(layer, "W")]
    net.last_layer = reference.SoftmaxWithLoss()
    net.train_mode_layers = (reference.Dropout, reference.BatchNormalization)
    return net


def convnet_step(impl, batch, dtype, seed=0):
    """One SGD step (gradient, then params -= lr * grad) of SimpleConvNet on ``batch``
    MNIST-like float32 images with ``dtype`` params; "reference" runs the book's layers."""
    from fastbp.convnets import SimpleConvNet

    dt = _check(impl, dtype)
    rng = np.random.default_rng(seed)
    x = rng.random((batch, 1, 28, 28)).astype(np.float32)
    t = labels(batch, CLASSES, seed)
    net = SimpleConvNet(dtype=dt, rng=seed)
    if impl == "reference":
        net = _book_layers(net)

    def step():
        grads = net.gradient(x, t)
        for key, grad in grads.items():
            net.params[key] -= LEARNING_RATE * grad

    return step


def deep_convnet_inference(impl, images, dtype="float64", seed=0):
    """DeepConvNet's ``accuracy`` (inference in batches of 100) on ``images`` float32
    MNIST-like images; "reference" runs the book's layers on the same weights."""
    from fastbp.convnets import DeepConvNet

    dt = _check(impl, dtype)
    rng = np.random.default_rng(seed)
    x = rng.random((images, 1, 28, 28)).astype(np.float32)
    t = labels(images, CLASSES, seed)
    net = DeepConvNet(dtype=dt, rng=seed)
    if impl == "reference":
        net = _book_layers(net)
    return lambda: net.accuracy(x, t)
