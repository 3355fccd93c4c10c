"""Data-parallel training over MPI ranks: one ``Allreduce`` per step over one flat buffer.

Run under ``mpiexec -n N``; needs the ``[mpi]`` extra (mpi4py + MPICH from PyPI), which is
imported only when a function here needs it, so ``import fastbp`` never does.

Every rank draws the same global batch of B samples (same seed, same order as a single
process) and computes on its own contiguous slice ``shard(B, N, rank)`` (sizes differ by
at most one; a rank whose slice is empty contributes zeros). Each rank's gradient is the
mean over its n_r samples, so it is scaled by n_r / B while being copied into one flat
buffer, and a single in-place ``Iallreduce`` (sum) turns the buffer into the gradient of
the whole global batch: the single-process gradient, up to rounding. The returned
gradient dict holds views into that buffer, so optimizers (``update(params, grads)``)
work on it unchanged. Parameters are broadcast from rank 0 at start (one ``Bcast``).

A failure on any rank must not leave the others waiting forever: ``abort_on_error`` (and
the excepthook ``DataParallel`` installs) prints the error with the rank and calls
``MPI_Abort``, which makes ``mpiexec`` end every rank; each wait also gives up after
``FASTBP_MPI_TIMEOUT`` seconds (default 300).
"""

import contextlib
import os
import shutil
import sys
import time
import traceback
import types

import numpy as np

DEFAULT_TIMEOUT = 300.0
# Seconds a failing rank waits between its message and MPI_Abort (see ``abort``).
ABORT_GRACE_S = 0.5


def get_mpi():
    """The ``mpi4py.MPI`` module; ImportError with the install line if it is missing."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(
            "distributed training needs mpi4py and an MPI library: "
            "pip install 'fastbp[mpi]' (installs mpi4py and MPICH from PyPI)"
        ) from e
    return MPI


def find_mpiexec():
    """The mpiexec next to this Python (the [mpi] extra's MPICH), else one on PATH."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    if found is None:
        raise FileNotFoundError("no mpiexec next to Python or on PATH: pip install 'fastbp[mpi]'")
    return found


def shard(batch_size, size, rank):
    """The slice of a global batch of ``batch_size`` samples that ``rank`` of ``size`` owns.

    Contiguous slices in rank order whose lengths differ by at most one; with fewer
    samples than ranks the last ranks get empty slices.
    """
    return slice(rank * batch_size // size, (rank + 1) * batch_size // size)


class FlatBuffer:
    """Arrays of the given shapes laid out back to back in one flat array.

    ``flat`` is the 1-D buffer (``extra`` trailing slots after the arrays), ``views`` maps
    each name to a view of its part in its shape.
    """

    def __init__(self, shapes, dtype, extra=0):
        sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
        self.flat = np.zeros(sum(sizes.values()) + extra, dtype)
        self.views = {}
        offset = 0
        for name, shape in shapes.items():
            self.views[name] = self.flat[offset : offset + sizes[name]].reshape(shape)
            offset += sizes[name]
        self.extra = self.flat[offset:]

    def pack(self, arrays, scale=1.0):
        """views[name] = arrays[name] * scale for every name (no copy if already a view)."""
        for name, view in self.views.items():
            if scale == 1.0 and arrays[name] is view:
                continue
            np.multiply(arrays[name], scale, out=view)

    def unpack(self, arrays):
        """arrays[name][...] = views[name], in place, for every name."""
        for name, view in self.views.items():
            arrays[name][...] = view


def wait(request, timeout, what):
    """Wait for an MPI request; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not request.Test():
        os.sched_yield()  # lets a rank sharing this core run; free on an idle core
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{what} did not complete within {timeout:g} s: another rank is stuck or "
                f"gone (set FASTBP_MPI_TIMEOUT to wait longer)"
            )


def allreduce_sum(comm, buffer, timeout, what):
    """Sum ``buffer`` over all ranks, in place, with a timeout."""
    mpi = get_mpi()
    wait(comm.Iallreduce(mpi.IN_PLACE, buffer, mpi.SUM), timeout, what)


def broadcast_params(params, comm, timeout=DEFAULT_TIMEOUT, root=0):
    """Overwrite ``params`` (dict of arrays, in place) on every rank with root's values."""
    buffer = FlatBuffer({k: v.shape for k, v in params.items()}, np.result_type(*params.values()))
    if comm.rank == root:
        buffer.pack(params)
    wait(comm.Ibcast(buffer.flat, root=root), timeout, "parameter Bcast")
    buffer.unpack(params)


def abort(comm, exc):
    """Print ``exc`` with the rank, then end every rank of the job (MPI_Abort).

    Writes to the process's real stderr, which ``init_rank`` leaves open on every rank.
    The one-line message goes first and is flushed on its own, and the abort waits
    ``ABORT_GRACE_S`` after it: when MPI_Abort tears the job down, mpiexec drops what a
    rank wrote that its I/O forwarding had not yet read (seen: a cut traceback, and once
    the whole message of a rank that had printed nothing before).
    """
    sys.__stderr__.write(
        f"fastbp: rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}; "
        "aborting all ranks\n"
    )
    sys.__stderr__.flush()
    traceback.print_exception(exc, file=sys.__stderr__)
    sys.__stderr__.flush()
    time.sleep(ABORT_GRACE_S)
    comm.Abort(1)


@contextlib.contextmanager
def abort_on_error(comm):
    """Run the ``with`` body; any exception (not a clean exit) aborts every rank."""
    try:
        yield
    except SystemExit as e:
        if e.code not in (None, 0):
            abort(comm, e)
        raise
    except BaseException as e:
        abort(comm, e)


def install_excepthook(comm):
    """Make an uncaught exception on this rank abort the whole job instead of hanging it."""

    def hook(kind, value, tb):
        abort(comm, value)

    sys.excepthook = hook


def init_rank(comm=None):
    """Set this process up as one rank of a job like ``fastbp train --distributed``.

    An uncaught exception on any rank aborts the whole job with a message naming the rank;
    ranks other than 0 print nothing (``sys.stdout`` and ``sys.stderr`` go to devnull,
    errors still reach the terminal). Returns the communicator (COMM_WORLD by default).
    """
    comm = comm if comm is not None else get_mpi().COMM_WORLD
    install_excepthook(comm)
    if comm.rank != 0:
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the process)
    return comm


class DataParallel:
    """Wrap a book-API net so each call on a global batch runs sharded over all ranks.

    ``net`` has ``params`` (dict of arrays), ``gradient(x, t)`` -> dict of arrays,
    ``loss(x, t)`` and ``accuracy(x, t)``. Every rank passes the same global batch; the
    wrapper computes on its shard and combines: ``gradient`` returns the gradient of the
    whole batch (views into one flat buffer, combined with ONE Allreduce) and sets
    ``lastLayer.loss`` to the batch's loss (its shard losses ride in the same Allreduce), so
    ``fastbp.train.gradient_step`` works unchanged; ``loss`` and ``accuracy`` return the
    whole batch's values (one more Allreduce each). Anything else is the wrapped net's.
    The net's params are broadcast from rank 0 on construction.
    """

    def __init__(self, net, comm=None, timeout=None):
        self.net = net
        self.comm = comm if comm is not None else get_mpi().COMM_WORLD
        self.timeout = float(os.environ.get("FASTBP_MPI_TIMEOUT", DEFAULT_TIMEOUT))
        if timeout is not None:
            self.timeout = timeout
        self.steps = 0
        self.allreduce_seconds = 0.0  # time spent in (and waiting for) gradient Allreduces
        install_excepthook(self.comm)
        params = net.params
        broadcast_params(params, self.comm, self.timeout)
        # One flat buffer: every gradient, then one slot for the batch loss.
        self.grads = FlatBuffer(
            {k: v.shape for k, v in params.items()}, np.result_type(*params.values()), extra=1
        )
        self.batch_loss = float("nan")  # loss of the last global batch, from ``gradient``

    def __getattr__(self, name):
        return getattr(self.net, name)

    @property
    def lastLayer(self):  # noqa: N802 (the book's name)
        """Stands in for the net's last layer: ``loss`` is the last global batch's loss."""
        return types.SimpleNamespace(loss=self.batch_loss)

    def local(self, x, t):
        """This rank's shard of a global batch, and the shard's weight n_r / B."""
        part = shard(len(x), self.comm.size, self.comm.rank)
        n = part.stop - part.start
        return x[part], t[part], n / len(x)

    def gradient(self, x, t):
        """Gradient of the mean loss over the whole global batch (x, t), on every rank.

        Also sets ``batch_loss`` to the batch's loss (the net's ``lastLayer.loss`` of each
        shard, combined in the same Allreduce).
        """
        self.steps += 1
        x, t, weight = self.local(x, t)
        if weight:
            grads, loss = self.local_gradient(x, t)
            self.grads.pack(grads, weight)
            self.grads.extra[0] = loss * weight
        else:
            self.grads.flat[...] = 0
        start = time.perf_counter()
        allreduce_sum(self.comm, self.grads.flat, self.timeout, "gradient Allreduce")
        self.allreduce_seconds += time.perf_counter() - start
        self.batch_loss = float(self.grads.extra[0])
        return self.grads.views

    def local_gradient(self, x, t):
        """(gradients, loss) of the net on this rank's shard (x, t).

        A net with a fused step for this batch (``TwoLayerNet.fused_step``) writes the
        gradients straight into the flat buffer's views, so nothing is copied.
        """
        fused_step = getattr(self.net, "fused_step", None)
        step = fused_step(x) if fused_step is not None else None
        if step is None:
            return self.net.gradient(x, t), float(self.net.lastLayer.loss)
        step.gradient(x, t, out=self.grads.views)
        self.net.lastLayer.loss = step.loss
        return self.grads.views, float(step.loss)

    def sum_weighted(self, value, weight, what):
        """Sum of value * weight over the ranks (float64)."""
        total = np.array([value * weight if weight else 0.0])
        allreduce_sum(self.comm, total, self.timeout, what)
        return total[0]

    def loss(self, x, t):
        """Mean loss over the whole global batch."""
        x, t, weight = self.local(x, t)
        return self.sum_weighted(self.net.loss(x, t) if weight else 0.0, weight, "loss Allreduce")

    def accuracy(self, x, t):
        """Fraction of the whole data set (x, t) classified correctly, counted in shards."""
        xs, ts, weight = self.local(x, t)
        local = round(self.net.accuracy(xs, ts) * len(xs)) if weight else 0
        return self.sum_weighted(local, 1.0, "accuracy Allreduce") / float(len(x))
