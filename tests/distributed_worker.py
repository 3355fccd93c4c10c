"""Run by tests/test_distributed.py, single-process or under ``mpiexec -n N``.

Trains a small float64 TwoLayerNet on fixed global batches, including sizes that do not
split evenly over two or three ranks and a batch of one sample (empty shards on the other
ranks), then saves the losses and final parameters (rank 0) to the .npz file named on
the command line.
Usage: python distributed_worker.py OUT.npz two|multi [--distributed]
"""

import sys

import numpy as np

from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optimizers import Momentum
from fastbp.train import gradient_step

SIZES = (20, 8, 5)  # input, hidden, classes
BATCH_SIZES = (7, 8, 1, 5, 6)


def batches():
    """The global batches (x[B, 20] float64, t[B] class indices), the same on every rank."""
    rng = np.random.default_rng(7)
    for n in BATCH_SIZES:
        yield rng.standard_normal((n, SIZES[0])), rng.integers(0, SIZES[2], n)


def train(net):
    """Momentum steps on every global batch with ``fastbp.train``'s step.

    Returns the losses the steps report and the losses after each update (``net.loss``).
    """
    optimizer = Momentum(lr=0.5)
    step_losses, losses = [], []
    for x, t in batches():
        step_losses.append(gradient_step(net, optimizer, x, t))
        losses.append(net.loss(x, t))
    return {"step_losses": step_losses, "losses": losses}


def make_net(seed, kind):
    """TwoLayerNet ("two": its fused step writes straight into DataParallel's buffer) or
    a MultiLayerNet with weight decay ("multi": layer by layer, gradients copied)."""
    if kind == "two":
        return TwoLayerNet(*SIZES, weight_init_std=0.5, rng=seed)
    return MultiLayerNet(SIZES[0], [SIZES[1], 6], SIZES[2], weight_decay_lambda=0.01, rng=seed)


def main(out, kind, distributed):
    if not distributed:
        net = make_net(0, kind)
        np.savez(out, **train(net), **net.params)
        return
    from fastbp.distributed import DataParallel, abort_on_error, get_mpi

    comm = get_mpi().COMM_WORLD
    with abort_on_error(comm):
        # Every rank starts from different weights: DataParallel must broadcast rank 0's.
        net = DataParallel(make_net(comm.rank, kind), comm)
        losses = train(net)
        if comm.rank == 0:
            np.savez(out, **losses, **net.params)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--distributed" in sys.argv[3:])
