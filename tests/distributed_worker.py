"""Run by tests/test_distributed.py, single-process or under ``mpiexec -n N``.

Trains a small float64 TwoLayerNet on fixed global batches, including sizes that do not
split evenly over two or three ranks and a batch of one sample (empty shards on the other
ranks), then saves the losses and final parameters (rank 0) to the .npz file named on
the command line.
Usage: python distributed_worker.py OUT.npz two|multi [--distributed]
   or: python distributed_worker.py train ARGS... (runs ``fastbp train ARGS...``)

Both honour the fault-injection test hook ``FASTBP_TEST_FAIL_AT`` (``inject_failures``).
"""

import os
import signal
import sys
import time

import numpy as np

from fastbp import cli, distributed
from fastbp.nets import MultiLayerNet, TwoLayerNet
from fastbp.optimizers import Momentum
from fastbp.train import gradient_step

# "RANK:STEP:MODE" makes that rank fail at that gradient step of DataParallel; MODE is
# "raise" (an exception), "exit" (os._exit(3), no clean-up), "kill" (SIGKILL, as if
# killed) or "hang" (sleeps, so the other ranks' waits time out).
FAIL_ENV = "FASTBP_TEST_FAIL_AT"
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


def fail(rank, step, mode, spec):
    """Fail as ``mode`` asks, at ``rank``'s gradient ``step``."""
    if mode == "raise":
        raise RuntimeError(f"rank {rank} fails at step {step} ({FAIL_ENV})")
    sys.__stderr__.write(f"fastbp: rank {rank} dies at step {step} ({FAIL_ENV}={spec})\n")
    sys.__stderr__.flush()
    if mode == "hang":
        time.sleep(3600)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


def inject_failures():
    """Make ``DataParallel.gradient`` fail where ``FASTBP_TEST_FAIL_AT`` says, if set."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    fail_rank, fail_step, mode = spec.split(":")
    gradient = distributed.DataParallel.gradient

    def failing_gradient(self, x, t):
        if self.comm.rank == int(fail_rank) and self.steps == int(fail_step):
            fail(self.comm.rank, self.steps, mode, spec)
        return gradient(self, x, t)

    distributed.DataParallel.gradient = failing_gradient


if __name__ == "__main__":
    inject_failures()
    if sys.argv[1] == "train":
        raise SystemExit(cli.main(sys.argv[1:]))
    main(sys.argv[1], sys.argv[2], "--distributed" in sys.argv[3:])
