"""The book's ch05 training loop (``ch05/train_neuralnet.py``), phase by phase, for the
book's classes, the book's net over ``fastbp.layers`` and ``fastbp.nets`` (``user_loop``).

Importing this module loads no Numba (``fastbp.nets`` is imported by the variant that
needs it), so a process timing the book's classes alone can use it without fastbp's
kernels ever loading (``fastbp.benchloop``).
"""

import functools

import numpy as np

from fastbp import data, layers, reference

INPUT_SIZE = 784
CLASSES = 10
PARAM_KEYS = ("W1", "b1", "W2", "b2")

# The book's ch05/train_neuralnet.py: hidden units, batch size, learning rate.
BOOK_HIDDEN, BOOK_BATCH, BOOK_LR = 50, 100, 0.1


@functools.cache
def book_mnist():
    """The embedded MNIST as the book loads it: ``load_mnist(normalize=True,
    one_hot_label=True)``, float32 images x[N, 784], float64 one-hot labels t[N, 10]
    (cached: do not modify)."""
    return data.load_mnist(normalize=True, one_hot_label=True)


# The variants of the book's loop: the book's classes; the book's TwoLayerNet with its
# layers taken from fastbp.layers (``from fastbp.layers import *`` in place of
# common/layers.py); fastbp.nets.TwoLayerNet (in place of two_layer_net.py).
USER_LOOP_VARIANTS = ("book", "book+layers", "nets")
USER_LOOP_PHASES = ("batch", "gradient", "update", "loss")


def over_fastbp_layers(net):
    """The book's ``net`` with each layer replaced by the fastbp.layers class of the same
    name, holding the same arrays (``params`` are untouched)."""
    for name, layer in net.layers.items():
        cls = getattr(layers, type(layer).__name__)
        net.layers[name] = cls(layer.W, layer.b) if hasattr(layer, "W") else cls()
    net.lastLayer = getattr(layers, type(net.lastLayer).__name__)()
    return net


def user_loop_net(variant, seed=0):
    """TwoLayerNet(784, 50, 10) of ``variant``, built as the book builds it after
    ``np.random.seed(seed)`` (the same weights for every variant)."""
    np.random.seed(seed)  # noqa: NPY002 (the book's nets draw from the global state)
    if variant == "book":
        return reference.TwoLayerNet(
            input_size=INPUT_SIZE, hidden_size=BOOK_HIDDEN, output_size=CLASSES
        )
    if variant == "book+layers":
        return over_fastbp_layers(user_loop_net("book", seed))
    if variant == "nets":
        from fastbp import nets

        return nets.TwoLayerNet(input_size=INPUT_SIZE, hidden_size=BOOK_HIDDEN, output_size=CLASSES)
    raise NotImplementedError(f"unknown user-loop variant {variant!r}")


def user_loop(network):
    """The book's ch05 loop on ``network``, as it writes it, split into timed phases.

    Returns ({phase: callable} for one iteration, in ``USER_LOOP_PHASES`` order, and
    ``accuracy``, the once-per-epoch evaluation on all training and all test images).
    Batches are drawn with ``np.random.choice`` from the global state, as in the book.
    """
    (x_train, t_train), (x_test, t_test) = book_mnist()
    train_size = x_train.shape[0]
    state = {}

    def batch():
        batch_mask = np.random.choice(train_size, BOOK_BATCH)  # noqa: NPY002 (the book's)
        state["x"], state["t"] = x_train[batch_mask], t_train[batch_mask]

    def gradient():
        state["grad"] = network.gradient(state["x"], state["t"])

    def update():
        grad = state["grad"]
        for key in PARAM_KEYS:
            network.params[key] -= BOOK_LR * grad[key]

    def loss():
        state["loss"] = network.loss(state["x"], state["t"])

    def accuracy():
        return network.accuracy(x_train, t_train), network.accuracy(x_test, t_test)

    phases = {"batch": batch, "gradient": gradient, "update": update, "loss": loss}
    return phases, accuracy


def iterations_per_epoch():
    """The book's ``iter_per_epoch``: training images / batch size (at least 1)."""
    return max(book_mnist()[0][0].shape[0] // BOOK_BATCH, 1)
