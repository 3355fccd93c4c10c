"""Mini-batch training loop and learning-curve plot, shared by ``fastbp train`` and others.

``train`` runs epochs of shuffled mini-batches (each training sample once per epoch, the
order drawn from a ``numpy.random.Generator``), calls ``step`` on each batch and measures
train/test accuracy after each epoch. ``step`` is pluggable (data-parallel or fused
training steps reuse the loop); the default is the book's ``gradient`` + ``update``.
"""

import itertools
import time
from dataclasses import dataclass, field

from fastbp.nets import TwoLayerNet
from fastbp.optimizers import SGD


@dataclass
class History:
    """What ``train`` measured.

    loss: training loss of every step (of an interrupted epoch too); train_acc, test_acc:
    accuracy after each epoch; epoch_seconds: wall time of each epoch's steps (evaluation
    excluded); epoch_samples, epoch_steps: training samples and steps of each epoch;
    eval_seconds: wall time of each epoch's evaluation (train and test accuracy).
    """

    loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    test_acc: list = field(default_factory=list)
    epoch_seconds: list = field(default_factory=list)
    epoch_samples: list = field(default_factory=list)
    eval_seconds: list = field(default_factory=list)
    epoch_steps: list = field(default_factory=list)

    @property
    def samples_per_second(self):
        """Training throughput over all epochs (steps only, evaluation excluded)."""
        seconds = sum(self.epoch_seconds)
        return sum(self.epoch_samples) / seconds if seconds > 0 else float("nan")


def gradient_step(net, optimizer, x, t):
    """One step of the book's loop: backprop gradients, update params; returns the loss.

    Plain SGD on a ``TwoLayerNet`` itself (not a wrapper such as ``DataParallel``, whose
    ``gradient`` must run) takes the gradient and the update as one compiled call
    (``TwoLayerNet.fused_step``) when the batch allows.
    """
    fused = net.fused_step(x) if type(optimizer) is SGD and isinstance(net, TwoLayerNet) else None
    if fused is not None:
        return float(fused.sgd_step(x, t, optimizer.lr))
    grads = net.gradient(x, t)
    optimizer.update(net.params, grads)
    return float(net.lastLayer.loss)


def train(
    net,
    optimizer,
    data,
    batch_size,
    epochs,
    rng,
    on_step=None,
    on_epoch=None,
    step=gradient_step,
    history=None,
):
    """Train ``net`` in place and return its ``History``.

    net: a network with the book's interface (``gradient``, ``accuracy``, ``params``).
    optimizer: has ``update(params, grads)``.
    data: ((x_train, t_train), (x_test, t_test)) as returned by ``fastbp.data.load_mnist``.
    batch_size: samples per step; the last batch of an epoch holds the remainder.
    rng: ``numpy.random.Generator`` drawing each epoch's sample order.
    on_step(step_number, loss, batch_samples): called after every step.
    on_epoch(epoch_number, history): called after every epoch's evaluation.
    step(net, optimizer, x, t) -> loss: one training step (default ``gradient_step``).
    history: a ``History`` to append to (default a new one): when training stops early
    (an exception, Ctrl-C), the caller's keeps everything measured until then.
    """
    (x_train, t_train), (x_test, t_test) = data
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")
    n = len(x_train)
    if n == 0 or len(t_train) != n:
        raise ValueError(
            f"training data needs as many labels as images, got {n} and {len(t_train)}"
        )
    history = History() if history is None else history
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        start = time.perf_counter()
        for lo in range(0, n, batch_size):
            batch = order[lo : lo + batch_size]
            loss = step(net, optimizer, x_train[batch], t_train[batch])
            history.loss.append(loss)
            if on_step is not None:
                on_step(len(history.loss), loss, len(batch))
        history.epoch_seconds.append(time.perf_counter() - start)
        history.epoch_samples.append(n)
        history.epoch_steps.append(-(-n // batch_size))
        start = time.perf_counter()
        history.train_acc.append(float(net.accuracy(x_train, t_train)))
        history.test_acc.append(float(net.accuracy(x_test, t_test)))
        history.eval_seconds.append(time.perf_counter() - start)
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history


def blas_threads(n):
    """Context manager: at most ``n`` BLAS threads inside the ``with`` block.

    Limits every BLAS loaded: NumPy's, which fastbp's kernels call (``kernels/blas.py``),
    and SciPy's, which Numba loads (and which the kernels use only on a NumPy without an
    ILP64 CBLAS); SciPy's is loaded first so that the limit reaches it too.
    """
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library threadpoolctl limits)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def plot_history(history, path, title=None):
    """Write a PNG at ``path``: loss per step (left), train/test accuracy per epoch (right)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg PNG

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(range(1, len(history.loss) + 1), history.loss, lw=0.6, alpha=0.6, label="step")
    if history.train_acc:
        # Steps per epoch as recorded, else (a History built by hand) the loss split evenly.
        steps = history.epoch_steps or [len(history.loss) // len(history.train_acc)] * len(
            history.train_acc
        )
        ends = list(itertools.accumulate(steps))
        means = [sum(history.loss[end - k : end]) / k for end, k in zip(ends, steps, strict=True)]
        ax_loss.plot(ends, means, "k.-", label="epoch mean")
        ax_loss.legend(loc="upper right")
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log", title="loss")
    epochs = range(1, len(history.train_acc) + 1)
    ax_acc.plot(epochs, history.train_acc, "o-", label="train")
    ax_acc.plot(epochs, history.test_acc, "s--", label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
