"""The benchmark cases: the one registry that ``fastbp bench`` and ``asv_benchmarks/`` read.

Every builder takes an implementation name (``"fastbp"`` or ``"reference"``), a size and a
dtype name, builds seeded data, and returns zero-argument callables, so both tools time
exactly the same work with the NumPy reference beside each fastbp number. A combination
that makes no sense raises ``NotImplementedError`` (asv reads that as "skip").

- kernels: ``fastbp.kernels`` with outputs allocated once up front (the kernels' contract)
  against the allocating ``fastbp.reference`` functions (``kernel_case``); the same
  argument builder (``kernel_args``) feeds the serial/parallel crossover ladder;
- layers: the drop-in classes against the book's classes (``layer_case``);
- train steps: one SGD step of TwoLayerNet(784, H, 10) per ``STEP_BUILDERS`` entry, and the
  same step in other frameworks (``PEER_STEPS``, used only when they are importable);
- the user loop: the book's ``ch05/train_neuralnet.py`` iteration, phase by phase, for the
  book's classes, the book's net over ``fastbp.layers`` and ``fastbp.nets`` (``user_loop``,
  from ``fastbp.bookloop``, which loads no Numba), and its gradient on fresh batches.
"""

import functools
import itertools

import numba
import numpy as np

from fastbp import data, fused, kernels, layers, nets, reference
from fastbp.bookloop import (  # noqa: F401 (re-exported: the bench's one registry)
    BOOK_BATCH,
    BOOK_HIDDEN,
    BOOK_LR,
    CLASSES,
    INPUT_SIZE,
    PARAM_KEYS,
    USER_LOOP_PHASES,
    USER_LOOP_VARIANTS,
    book_mnist,
    iterations_per_epoch,
    over_fastbp_layers,
    user_loop,
    user_loop_net,
)
from fastbp.kernels import affine, nonzeros
from fastbp.kernels import optimizers as update_kernels

IMPLS = ("fastbp", "reference")
DTYPES = ("float32", "float64")

# Shapes (N, M) of the inputs of the elementwise kernels and of softmax logits (N, C).
SHAPES = ((1, 50), (100, 10), (100, 50), (1000, 1000), (4096, 4096))
# Affine shapes (N, K, M): x[N, K] @ W[K, M]; the MNIST layers, then one large square GEMM.
AFFINE_SHAPES = ((1, 784, 50), (100, 784, 50), (100, 50, 10), (1000, 1000, 1000))
# TwoLayerNet 784 -> hidden -> 10, trained on batches: (hidden, batch).
TRAIN_SIZES = ((50, 100), (100, 100), (1024, 256), (50, 1))
# The train-step sizes compared with other frameworks (section "peers").
PEER_SIZES = ((50, 100), (1024, 256))

KERNEL_FAMILIES = ("affine", "relu", "sigmoid", "softmax_ce")
LAYER_FAMILIES = ("Affine", "Relu", "Sigmoid", "SoftmaxWithLoss")
CORE_KERNELS = tuple(f"{f}_{verb}" for f in KERNEL_FAMILIES for verb in ("forward", "backward"))
# Optimizer update kernels (param, grad, *state, *scalars): state arrays and scalars.
UPDATE_ARGS = {
    "sgd_update": (0, (0.01,)),
    "momentum_update": (1, (0.01, 0.9)),
    "adagrad_update": (1, (0.01, 1e-7)),
    "adam_update": (2, (0.001, 0.1, 0.001, 1e-7)),
    "nesterov_update": (1, (0.81, 0.019, 0.01, 0.9)),
    "rmsprop_update": (1, (0.01, 0.99, 0.01, 1e-7)),
}


def _check(impl, dtype):
    if impl not in IMPLS:
        raise NotImplementedError(f"unknown implementation {impl!r}")
    if dtype not in DTYPES:
        raise NotImplementedError(f"unknown dtype {dtype!r}")
    return np.dtype(dtype)


def normal(shape, dtype, seed=0, scale=1.0):
    """Seeded standard-normal data of ``shape`` in ``dtype``, times ``scale``."""
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def random_labels(n, classes, seed=0):
    """Seeded class indices t[n] (int64) in [0, classes)."""
    return np.random.default_rng(seed).integers(0, classes, n)


def shape_name(shape):
    """'100x784->50' for affine shapes, '100x50' otherwise."""
    if len(shape) == 3:
        return f"{shape[0]}x{shape[1]}->{shape[2]}"
    return "x".join(map(str, shape))


def calls_per_sample(shape, work=10**6, most=1000):
    """Calls of a case of ``shape`` per timed sample in asv: a power of ten, about
    ``work`` / (elements, or N*K*M for affine shapes), between 1 and ``most``."""
    size = int(np.prod(shape))
    calls = 1
    while calls * 10 * size <= work and calls < most:
        calls *= 10
    return calls


def family_shapes(family):
    """The default sizes for a kernel or layer family."""
    return AFFINE_SHAPES if family.lower() == "affine" else SHAPES


# -- kernels ---------------------------------------------------------------------------

# The allocating reference function of each kernel, called with the kernel's arguments.
_REFERENCE_KERNELS = {
    "affine_forward": lambda out, x, W, b: reference.affine_forward(x, W, b),
    "affine_backward": lambda dout, x, W, dx, dW, db, *_: reference.affine_backward(dout, x, W),
    "relu_forward": lambda x, out, mask: reference.relu_forward(x),
    "relu_backward": lambda dout, mask, dx: reference.relu_backward(dout, mask),
    "sigmoid_forward": lambda x, out: reference.sigmoid(x),
    "sigmoid_backward": lambda dout, y, dx: reference.sigmoid_backward(dout, y),
    "softmax_ce_forward": lambda x, t, out: reference.softmax_ce_forward(x, t),
    "softmax_ce_backward": lambda y, t, scale, dx: reference.softmax_ce_backward(y, t),
}


def kernel_args(name, shape, dtype):
    """Seeded arguments of kernel ``name`` (a core kernel or an optimizer update).

    ``shape`` is (N, K, M) for affine (x[N, K] @ W[K, M]), the logits (N, C) for
    softmax_ce, and the input's shape otherwise (elementwise kernels get it flattened).
    Outputs are allocated here, once.
    """
    dt = np.dtype(dtype)
    if name.startswith("affine"):
        n, k, m = shape
        x, W, b = normal((n, k), dt, 1), normal((k, m), dt, 2, 0.01), normal(m, dt, 3)
        if name == "affine_forward":
            return np.empty((n, m), dt), x, W, b
        return (
            normal((n, m), dt, 4),
            x,
            W,
            np.empty_like(x),
            np.empty_like(W),
            np.empty(m, dt),
            True,
        )
    if name.startswith("softmax_ce"):
        x, t = normal(shape, dt, 1), random_labels(shape[0], shape[1], 2)
        if name == "softmax_ce_forward":
            return x, t, np.empty_like(x)
        return reference.softmax(x), t, 1.0 / shape[0], np.empty_like(x)
    x, other = normal(shape, dt, 1).ravel(), normal(shape, dt, 2).ravel()
    if name in UPDATE_ARGS:
        states, scalars = UPDATE_ARGS[name]
        return (x, other * 0.01, *(np.zeros_like(x) for _ in range(states)), *scalars)
    if name == "relu_forward":
        return x, np.empty_like(x), np.empty(x.shape, np.bool_)
    if name == "relu_backward":
        return other, x <= 0, np.empty_like(x)
    if name == "sigmoid_forward":
        return x, np.empty_like(x)
    if name == "sigmoid_backward":
        return other, reference.sigmoid(x), np.empty_like(x)
    raise NotImplementedError(f"unknown kernel {name!r}")


# The affine kernels as the layers call them: the block plan (``blas.plan``) chosen per call.
_DISPATCHED = {"affine_forward": affine.forward, "affine_backward": affine.backward}


def kernel_function(name):
    """The twin (serial and parallel builds) of kernel ``name``."""
    return getattr(update_kernels if name in UPDATE_ARGS else kernels, name)


def gemm_plan_args(name, args, blocks):
    """``kernel_args`` of an affine kernel completed for the twin's builds themselves:
    its work split in ``blocks`` blocks on the private single-threaded BLAS."""
    if name == "affine_forward":  # dense: the density of the ladder's normal draws
        return (*args, None, -1.0, np.empty((blocks, args[1].shape[1]), np.int64), True)
    dout, x, W, dx, dW, db, need_dx = args
    dbp = np.empty((blocks, dout.shape[1]), dout.dtype)
    nz = np.empty(nonzeros.buffer_size(*x.shape, blocks, 0), np.int64)
    return (dout, x, None, W, dx, dW, db, need_dx, -1, nz, dbp, True)


def kernel_case(family, impl, shape, dtype):
    """(forward, backward) callables running one kernel family once on seeded data.

    ``shape`` is (N, K, M) for ``"affine"`` and the input shape (N, M) otherwise.
    """
    dt = _check(impl, dtype)
    if family not in KERNEL_FAMILIES:
        raise NotImplementedError(f"unknown kernel family {family!r}")
    if len(shape) != (3 if family == "affine" else 2):
        raise NotImplementedError(f"shape {shape} does not fit the {family} kernels")
    calls = []
    for verb in ("forward", "backward"):
        name = f"{family}_{verb}"
        args = kernel_args(name, tuple(shape), dt)
        if impl == "reference":
            fn = _REFERENCE_KERNELS[name]
        else:
            fn = _DISPATCHED.get(name) or kernel_function(name)
        calls.append(functools.partial(fn, *args))
    return tuple(calls)


# -- layers ----------------------------------------------------------------------------


def _layer_data(family, shape, dt):
    """(constructor args, forward args, dout) for one layer family."""
    if family == "Affine":
        n, k, m = shape
        W, b = normal((k, m), dt, 2, 0.01), normal(m, dt, 3)
        return (W, b), (normal((n, k), dt, 1),), normal((n, m), dt, 4)
    if family == "SoftmaxWithLoss":
        return (), (normal(shape, dt, 1), random_labels(shape[0], shape[1], 2)), 1
    return (), (normal(shape, dt, 1),), normal(shape, dt, 2)


def layer_case(family, impl, shape, dtype):
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


# -- the sparse first layer's density ladder ---------------------------------------------

# Fractions of nonzeros in x at which ``fastbp bench --section crossover`` times the sparse
# first layer against the BLAS, and the kernels that choose between them by density.
DENSITIES = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6)
SPARSE_KERNELS = ("two_layer_step", "affine_forward", "affine_backward")


def sparse_pair(name, density, dtype, seed=0):
    """(sparse, dense) callables of kernel ``name`` with its first layer forced each way,
    at the book's shapes (batch 100, 784 -> 50 -> 10): x uniform random in [0, 1) with a
    fraction ``density`` of nonzeros, everything in ``dtype``."""
    rng = np.random.default_rng(seed)
    shape = (BOOK_BATCH, INPUT_SIZE)
    x = (rng.random(shape) * (rng.random(shape) < density)).astype(dtype)
    if name == "two_layer_step":
        params = two_layer_params(BOOK_HIDDEN, dtype, seed)
        t = rng.integers(0, CLASSES, BOOK_BATCH)
        steps = [fused.TwoLayerStep.from_params(params, sparse=s) for s in (True, False)]
        return tuple(functools.partial(step.gradient, x, t) for step in steps)
    W = rng.standard_normal((INPUT_SIZE, BOOK_HIDDEN)).astype(dtype)
    if name == "affine_forward":
        b, out = np.zeros(BOOK_HIDDEN, dtype), np.empty((BOOK_BATCH, BOOK_HIDDEN), dtype)
        return tuple(functools.partial(affine.forward, out, x, W, b, d) for d in (1.0, -1.0))
    if name == "affine_backward":
        dout = rng.standard_normal((BOOK_BATCH, BOOK_HIDDEN)).astype(dtype)
        grads = np.empty(shape, dtype), np.empty(W.shape, dtype), np.empty(BOOK_HIDDEN, dtype)
        return tuple(
            functools.partial(affine.backward, dout, x, W, *grads, True, d) for d in (1.0, -1.0)
        )
    raise NotImplementedError(f"kernel {name!r} has no sparse first layer")


# -- TwoLayerNet train step ------------------------------------------------------------


def train_batch(batch, dtype, seed=0):
    """MNIST-like x[batch, 784] in [0, 1) and one-hot t[batch, 10], both of ``dtype``."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch, INPUT_SIZE)).astype(dtype)
    return x, data.one_hot(rng.integers(0, CLASSES, batch), CLASSES).astype(dtype)


def mnist_batch(batch, dtype=None):
    """The first ``batch`` embedded MNIST training images and one-hot labels.

    ``dtype=None`` keeps the book's dtypes (float32 images, float64 labels).
    """
    (x, t), _ = book_mnist()
    x, t = x[:batch], t[:batch]
    return (x, t) if dtype is None else (x.astype(dtype), t.astype(dtype))


def two_layer_params(hidden, dtype, seed=0):
    """Seeded params W1, b1, W2, b2 of TwoLayerNet(784, hidden, 10), all of ``dtype``."""
    if dtype not in DTYPES:
        raise NotImplementedError(f"unknown dtype {dtype!r}")
    return nets.TwoLayerNet(INPUT_SIZE, hidden, CLASSES, dtype=dtype, rng=seed).params


def on_params(net, params):
    """``net`` (Affine1, Affine2 layers, as in the book) made to train ``params`` in place."""
    net.params = params
    for i in (1, 2):
        affine = net.layers[f"Affine{i}"]
        affine.W, affine.b = params[f"W{i}"], params[f"b{i}"]
    return net


def net_on(cls, params):
    """A TwoLayerNet of class ``cls`` (the book's or fastbp's) training ``params``."""
    W1, W2 = params["W1"], params["W2"]
    return on_params(cls(W1.shape[0], W1.shape[1], W2.shape[1]), params)


def sgd_step(net, x, t, lr=BOOK_LR, gradient=None):
    """The book's training step: backprop gradients, then params[key] -= lr * grads[key].

    ``gradient(x, t)`` gives the gradients; None means ``net.gradient``.
    """
    gradient = gradient or net.gradient

    def step():
        grads = gradient(x, t)
        for key in PARAM_KEYS:
            net.params[key] -= lr * grads[key]

    return step


def reference_step(params, x, t, lr=BOOK_LR):
    """The book's step on the book's TwoLayerNet (``fastbp.reference``); float64 in the
    book, here on ``params`` of either dtype."""
    return sgd_step(net_on(reference.TwoLayerNet, params), x, t, lr)


def nets_step(params, x, t, lr=BOOK_LR):
    """The book's step on ``fastbp.nets.TwoLayerNet`` (its gradient is fused when it can)."""
    return sgd_step(net_on(nets.TwoLayerNet, params), x, t, lr)


def layers_step(params, x, t, lr=BOOK_LR):
    """The step of a fastbp TwoLayerNet run through its drop-in layers one by one
    (``nets.LayerNet.gradient``: never the fused kernel); updates ``params`` in place."""
    net = net_on(nets.TwoLayerNet, params)
    return sgd_step(net, x, t, lr, functools.partial(nets.LayerNet.gradient, net))


def fused_sgd_step(params, x, t, lr=BOOK_LR, sparse="auto"):
    """The same step as one compiled call, ``fastbp.fused.TwoLayerStep.sgd_step``
    (``sparse``: its first-layer choice). Updates ``params`` (W1, b1, W2, b2 of one
    dtype) in place.
    """
    step = fused.TwoLayerStep.from_params(params, sparse=sparse)
    return lambda: step.sgd_step(x, t, lr)


# Train-step columns: name -> builder(params, x, t) of a zero-argument step that updates
# params in place. "fastbp" and "reference" are the book's step on fastbp.nets and on the
# book's classes; "fused" and "layers" are the two ways fastbp.nets can take it; "dense"
# and "sparse" the fused step with its first layer forced each way ("fused" chooses).
STEP_BUILDERS = {
    "fastbp": nets_step,
    "reference": reference_step,
    "fused": fused_sgd_step,
    "dense": functools.partial(fused_sgd_step, sparse=False),
    "sparse": functools.partial(fused_sgd_step, sparse=True),
    "layers": layers_step,
}


def train_step_case(impl, hidden, batch, dtype, seed=0):
    """One SGD step (a ``STEP_BUILDERS`` or ``PEER_STEPS`` entry) of a fresh
    TwoLayerNet(784, hidden, 10) on a seeded batch; the same weights for every impl."""
    builders = {**STEP_BUILDERS, **PEER_STEPS}
    if impl not in builders:
        raise NotImplementedError(f"unknown train step {impl!r}")
    params = two_layer_params(hidden, dtype, seed)
    return builders[impl](params, *train_batch(batch, dtype, seed))


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


# -- the book's ch05 training loop -----------------------------------------------------


def fresh_batches(count, seed=0):
    """``count`` fancy-indexed copies of random real-MNIST batches of the book's size and
    dtypes (float32 images, float64 one-hot labels), as the loop draws them."""
    (x_train, t_train), _ = book_mnist()
    rng = np.random.default_rng(seed)
    masks = (rng.choice(x_train.shape[0], BOOK_BATCH) for _ in range(count))
    return [(x_train[mask], t_train[mask]) for mask in masks]


def gradient_on_fresh_batches(gradient, count=16):
    """A callable running ``gradient(x, t)`` on the next of ``count`` fresh batches."""
    cycle = itertools.cycle(fresh_batches(count))
    return lambda: gradient(*next(cycle))


# -- the same step in other frameworks (optional: used only when they are importable) ----

# {column: builder} of the train step (as STEP_BUILDERS) and of the gradient (params ->
# gradient(x, t)), filled by ``_peer`` below; PEER_MODULES names the module each needs.
PEER_STEPS = {}
PEER_GRADIENTS = {}
PEER_MODULES = {"torch": "torch", "torch.compile": "torch", "jax": "jax"}


def _peer(registry, *names, **keywords):
    """Register the decorated builder in ``registry`` under each name (with keywords)."""

    def register(builder):
        for name in names:
            registry[name] = functools.partial(builder, **keywords) if keywords else builder
        return builder

    return register


def _torch_params(params):
    import torch

    torch.set_num_threads(numba.get_num_threads())
    p = {key: torch.tensor(value, requires_grad=True) for key, value in params.items()}
    return p, [p[key] for key in PARAM_KEYS]


def _torch_loss(p, x, t):
    """The book's loss in PyTorch; x and t are cast to the params' dtype."""
    import torch

    dtype = p["W1"].dtype
    x, t = x.to(dtype), t.to(dtype)
    z1 = torch.relu(x @ p["W1"] + p["b1"])
    return -(t * torch.log_softmax(z1 @ p["W2"] + p["b2"], dim=1)).sum() / x.shape[0]


def _torch_loss_fn(compiled):
    import torch

    return torch.compile(_torch_loss, dynamic=False) if compiled else _torch_loss


@_peer(PEER_GRADIENTS, "torch.compile", compiled=True)
@_peer(PEER_GRADIENTS, "torch")
def torch_gradient(params, compiled=False):
    """gradient(x, t) -> {key: grad array} of the book's net in PyTorch (eager, or
    ``torch.compile``d forward and backward with ``compiled``); NumPy in and out."""
    import torch

    p, ordered = _torch_params(params)
    loss_fn = _torch_loss_fn(compiled)

    def gradient(x, t):
        loss = loss_fn(p, torch.from_numpy(x), torch.from_numpy(t))
        grads = torch.autograd.grad(loss, ordered)
        return {key: g.numpy() for key, g in zip(PARAM_KEYS, grads, strict=True)}

    return gradient


@_peer(PEER_STEPS, "torch.compile", compiled=True)
@_peer(PEER_STEPS, "torch")
def torch_step(params, x, t, lr=BOOK_LR, compiled=False):
    """The train step in PyTorch on the CPU, with as many threads as Numba: eager, or
    with the forward and backward ``torch.compile``d. ``params`` holds NumPy arrays
    (copied); x and t are cast to the params' dtype."""
    import torch

    p, ordered = _torch_params(params)
    loss_fn = _torch_loss_fn(compiled)
    x, t = torch.from_numpy(x), torch.from_numpy(t)

    def step():
        grads = torch.autograd.grad(loss_fn(p, x, t), ordered)
        with torch.no_grad():
            for param, grad in zip(ordered, grads, strict=True):
                param -= lr * grad

    return step


def _jax_loss():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)  # float64 params stay float64

    def loss(p, x, t):
        dtype = p["W1"].dtype
        x, t = x.astype(dtype), t.astype(dtype)
        z1 = jax.nn.relu(x @ p["W1"] + p["b1"])
        return -jnp.sum(t * jax.nn.log_softmax(z1 @ p["W2"] + p["b2"])) / x.shape[0]

    return jax, jnp, loss


@_peer(PEER_GRADIENTS, "jax")
def jax_gradient(params):
    """gradient(x, t) -> {key: grad} of the book's net as one ``jax.jit`` (CPU)."""
    jax, jnp, loss = _jax_loss()
    grad = jax.jit(jax.grad(loss))
    p = {key: jnp.asarray(value) for key, value in params.items()}

    def gradient(x, t):
        grads = grad(p, jnp.asarray(x), jnp.asarray(t))
        jax.block_until_ready(grads)
        return grads

    return gradient


@_peer(PEER_STEPS, "jax")
def jax_step(params, x, t, lr=BOOK_LR):
    """The train step as one ``jax.jit`` of value_and_grad plus the SGD update (CPU)."""
    jax, jnp, loss = _jax_loss()

    @jax.jit
    def update(p, x, t):
        value, grads = jax.value_and_grad(loss)(p, x, t)
        return {key: p[key] - lr * grads[key] for key in p}, value

    state = [{key: jnp.asarray(value) for key, value in params.items()}]
    x, t = jnp.asarray(x), jnp.asarray(t)

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

CONV_LAYER_FAMILIES = ("Convolution", "Pooling", "ConvPool", "BatchNormalization", "Dropout")
# Named sizes per family: Convolution (x shape, W shape, stride, pad), Pooling (x shape,
# pool, stride), ConvPool (a Convolution as above, then SimpleConvNet's 2x2 max pooling of
# stride 2), BatchNormalization and Dropout (x shape).
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
    "ConvPool": {"simple_convnet": ((100, 1, 28, 28), (30, 1, 5, 5), 1, 0)},
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
    if family in ("Convolution", "ConvPool"):
        layer = module.Convolution(
            normal(spec[1], dt, 2, 0.1), normal(spec[1][0], dt, 3), *spec[2:]
        )
        if family == "ConvPool":
            layer = _Chain(layer, module.Pooling(2, 2, 2))
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


class _Chain:
    """Two layers run as one: forward through both, backward back through both."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def forward(self, x):
        return self.second.forward(self.first.forward(x))

    def backward(self, dout):
        return self.first.backward(self.second.backward(dout))


# The chapter 6-8 kernels on the crossover ladder (``fastbp bench --section crossover``),
# each through the layer or util function that calls it, on inputs of about n units of
# the kernel's size in CROSSOVER (elements of its first argument; multiply-adds for the
# convolutions): LADDER_IMAGES images of 3x3 filters, batches of LADDER_ROWS.
LADDER_IMAGES, LADDER_FILTERS, LADDER_ROWS = (1, 8, 8), 8, 100
LADDER_POOL_IMAGES = (4, 12, 12)


def layer_ladder_call(name, n, dtype):
    """A zero-argument callable running kernel ``name`` (a chapter 6-8 kernel) at about
    ``n`` units of its CROSSOVER size, through fastbp's layer (or util function)."""
    from fastbp import util

    dt = np.dtype(dtype)
    c, h, w = LADDER_IMAGES
    patches = c * 9 * (h - 2) * (w - 2)  # im2col's entries per image
    if name in ("im2col", "col2im", "conv_forward", "conv_backward"):
        per_image = {"im2col": c * h * w, "col2im": patches}.get(name, patches * LADDER_FILTERS)
        x = normal((max(1, n // per_image), c, h, w), dt, 1)
        if name == "im2col":
            return lambda: util.im2col(x, 3, 3)
        if name == "col2im":
            col = util.im2col(x, 3, 3)
            return lambda: util.col2im(col, x.shape, 3, 3)
        W = normal((LADDER_FILTERS, c, 3, 3), dt, 2, 0.1)
        layer = layers.Convolution(W, np.zeros(LADDER_FILTERS, dt))
        forward = functools.partial(layer.forward, x)
    elif name.startswith("maxpool"):
        c, h, w = LADDER_POOL_IMAGES
        per_image = c * h * w // (4 if name == "maxpool_backward" else 1)
        x = normal((max(1, n // per_image), c, h, w), dt, 1)
        layer = layers.Pooling(3, 3, 1) if name == "maxpool_forward" else layers.Pooling(2, 2)
        forward = functools.partial(layer.forward, x)
    elif name.startswith(("batchnorm", "dropout")):
        # A batch of LADDER_ROWS, n // LADDER_ROWS features (batch norm's blocks are columns).
        x = normal((LADDER_ROWS, max(1, n // LADDER_ROWS)), dt, 1)
        d = x.shape[1]
        if name.startswith("dropout"):
            layer = layers.Dropout(0.5)
        else:
            layer = layers.BatchNormalization(np.ones(d, dt), np.zeros(d, dt))
        forward = functools.partial(layer.forward, x, name != "batchnorm_inference")
    else:
        raise NotImplementedError(f"unknown kernel {name!r}")
    dout = normal(forward().shape, dt, 3)
    return (lambda: layer.backward(dout)) if name.endswith("backward") else forward


LAYER_LADDER_KERNELS = (
    "conv_forward", "conv_backward", "im2col", "col2im", "maxpool_forward",
    "maxpool2x2_forward", "maxpool_backward", "batchnorm_forward", "batchnorm_inference",
    "batchnorm_backward", "dropout_forward", "dropout_backward",
)  # fmt: skip


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


def _convnet_case(cls_name, impl, images, dtype, seed):
    """(net, x, t): a fastbp conv net (or, for "reference", the same net on the book's
    layers) and ``images`` seeded MNIST-like float32 images with class labels."""
    from fastbp import convnets

    dt = _check(impl, dtype)
    x = np.random.default_rng(seed).random((images, 1, 28, 28)).astype(np.float32)
    net = getattr(convnets, cls_name)(dtype=dt, rng=seed)
    if impl == "reference":
        net = _book_layers(net)
    return net, x, random_labels(images, CLASSES, seed)


def convnet_step(impl, batch, dtype, seed=0):
    """One SGD step (gradient, then params -= lr * grad) of SimpleConvNet on ``batch``
    MNIST-like float32 images with ``dtype`` params; "reference" runs the book's layers."""
    net, x, t = _convnet_case("SimpleConvNet", impl, batch, dtype, seed)

    def step():
        grads = net.gradient(x, t)
        for key, grad in grads.items():
            net.params[key] -= BOOK_LR * grad

    return step


def deep_convnet_inference(impl, images, dtype="float64", seed=0):
    """DeepConvNet's ``accuracy`` (inference in batches of 100) on ``images`` float32
    MNIST-like images; "reference" runs the book's layers on the same weights."""
    net, x, t = _convnet_case("DeepConvNet", impl, images, dtype, seed)
    return lambda: net.accuracy(x, t)
