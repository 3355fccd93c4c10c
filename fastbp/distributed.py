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

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
import types

import numpy as np

DEFAULT_TIMEOUT = 300.0

# Test hook: "RANK:STEP:MODE" makes that rank fail at that gradient step; MODE is "raise"
# (an exception), "exit" (os._exit(3), no clean-up), "kill" (SIGKILL, as if killed) or
# "hang" (sleeps, so the other ranks' waits time out).
FAIL_ENV = "FASTBP_TEST_FAIL_AT"


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
    The one-line message goes first and is flushed on its own: when MPI_Abort tears the
    job down, mpiexec may drop the tail of what a rank wrote (seen: a cut traceback).
    """
    sys.__stderr__.write(
        f"fastbp: rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}; "
        "aborting all ranks\n"
    )
    sys.__stderr__.flush()
    traceback.print_exception(exc, file=sys.__stderr__)
    sys.__stderr__.flush()
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


def injected_failure(rank, step):
    """Fail as ``FASTBP_TEST_FAIL_AT`` ("RANK:STEP:raise|exit|kill|hang") asks, for tests."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return
    fail_rank, fail_step, mode = spec.split(":")
    if int(fail_rank) != rank or int(fail_step) != step:
        return
    if mode == "raise":
        raise RuntimeError(f"rank {rank} fails at step {step} ({FAIL_ENV})")
    sys.__stderr__.write(f"fastbp: rank {rank} dies at step {step} ({FAIL_ENV}={spec})\n")
    sys.__stderr__.flush()
    if mode == "hang":
        time.sleep(3600)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(3)


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
        injected_failure(self.comm.rank, self.steps)
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


# -- benchmark: python -m fastbp.distributed --bench ------------------------------------

# (ranks, Numba threads per rank, BLAS threads per rank) of the benchmark runs.
BENCH_CONFIGS = ((1, 2, 2), (1, 2, 1), (1, 1, 1), (2, 1, 1))
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def bench_worker(hidden, batch_size, steps, dtype):
    """Time ``steps`` SGD steps of TwoLayerNet(784, hidden, 10) on MNIST global batches.

    Runs on every rank; rank 0 prints one JSON line with medians over the steps: seconds
    per step, seconds of it spent in the gradient Allreduce (waiting for slower ranks
    included), and the median time of a bare Allreduce of the buffer after a Barrier.
    """
    from fastbp.data import load_mnist
    from fastbp.nets import TwoLayerNet
    from fastbp.optimizers import SGD

    comm = get_mpi().COMM_WORLD
    (x, t), _ = load_mnist()
    x = x.astype(dtype)
    net = DataParallel(TwoLayerNet(784, hidden, 10, dtype=dtype, rng=0), comm)
    optimizer = SGD(lr=0.1)
    rng = np.random.default_rng(0)
    step_s, allreduce_s = [], []
    warmup = max(3, steps // 10)
    for i in range(warmup + steps):
        batch = rng.choice(len(x), batch_size)
        start, before = time.perf_counter(), net.allreduce_seconds
        optimizer.update(net.params, net.gradient(x[batch], t[batch]))
        if i >= warmup:
            step_s.append(time.perf_counter() - start)
            allreduce_s.append(net.allreduce_seconds - before)
    bare = []
    for _ in range(30):
        comm.Barrier()
        start = time.perf_counter()
        allreduce_sum(comm, net.grads.flat, net.timeout, "benchmark Allreduce")
        bare.append(time.perf_counter() - start)
    if comm.rank == 0:
        result = {
            "ranks": comm.size,
            "step_s": float(np.median(step_s)),
            "allreduce_in_step_s": float(np.median(allreduce_s)),
            "bare_allreduce_s": float(np.median(bare)),
            "buffer_bytes": net.grads.flat.nbytes,
        }
        print(json.dumps(result), flush=True)


def bench(hidden, batch_size, steps, dtype, mpiexec):
    """Run ``bench_worker`` for every configuration in BENCH_CONFIGS; returns the rows."""
    rows = []
    for ranks, threads, blas in BENCH_CONFIGS:
        env = {
            **os.environ,
            **dict.fromkeys(BLAS_VARS, str(blas)),
            "NUMBA_NUM_THREADS": str(threads),
        }
        command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fastbp.distributed"]
        command += ["--bench-worker", f"--hidden={hidden}", f"--batch-size={batch_size}"]
        command += [f"--steps={steps}", f"--dtype={dtype}"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"threads": threads, "blas": blas, **row})
    return rows


def bench_table(rows, hidden, batch_size, dtype):
    """The benchmark rows as a text table; speed-ups are against 1 rank x 1 thread."""
    base = next(row["step_s"] for row in rows if row["ranks"] == row["threads"] == 1)
    lines = [
        f"TwoLayerNet 784-{hidden}-10 {dtype}, global batch {batch_size}, "
        f"{rows[0]['buffer_bytes']:,} bytes all-reduced per step (medians over steps)",
        f"{'ranks x threads':<24}{'steps/s':>9}{'samples/s':>11}{'vs 1x1':>8}"
        f"{'allreduce/step':>16}{'bare allreduce':>16}",
    ]
    for row in rows:
        step, in_step, bare = row["step_s"], row["allreduce_in_step_s"], row["bare_allreduce_s"]
        label = f"{row['ranks']} x {row['threads']} (BLAS {row['blas']})"
        lines.append(
            f"{label:<24}{1 / step:>9.1f}{batch_size / step:>11,.0f}{base / step:>8.2f}"
            f"{in_step * 1e3:>13.3f} ms{bare * 1e3:>13.3f} ms"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.distributed",
        description="Benchmark data-parallel training: 1 rank x 2 threads (BLAS 2 or 1), "
        "1 rank x 1 thread and 2 ranks x 1 thread (launches mpiexec itself).",
    )
    parser.add_argument("--bench", action="store_true", help="run the benchmark")
    parser.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hidden", type=int, default=50, help="hidden units (default 50)")
    parser.add_argument("--batch-size", type=int, default=100, help="global batch (100)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps (default 300)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    parser.add_argument("--mpiexec", default=None, help="mpiexec to use (default: on PATH)")
    args = parser.parse_args(argv)
    if args.bench_worker:
        comm = get_mpi().COMM_WORLD
        with abort_on_error(comm):
            bench_worker(args.hidden, args.batch_size, args.steps, args.dtype)
        return 0
    if not args.bench:
        parser.error("nothing to do: pass --bench")
    mpiexec = args.mpiexec or find_mpiexec()
    rows = bench(args.hidden, args.batch_size, args.steps, args.dtype, mpiexec)
    print(bench_table(rows, args.hidden, args.batch_size, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
