"""One loop body, two compilations: serial below a measured size, parallel above.

Every kernel in this package is written once with ``prange``. ``twin`` compiles it twice
(``parallel=False``, where ``prange`` is ``range``, and ``parallel=True``); calling the twin
picks by the size of its first argument against ``CROSSOVER[name]``. The crossovers are
measured with ``fastbp bench --section crossover`` on a 2-core machine (``crossover.json``).

``force_path("serial" | "parallel")`` overrides the choice (tests use it to run both paths)
for the calling thread only (a ``contextvars`` setting, like ``decimal.localcontext``):
threads started inside the block, and other threads, keep choosing by size.
A process created by ``fork()`` runs serial kernels only: GNU OpenMP, Numba's default
threading layer here, aborts a forked child that starts a parallel region.

The crossovers assume the cores are free. On a machine busy with other processes a parallel
region waits for its slowest thread, and a worker that fell asleep between calls was
measured to stall a call by 10-16 ms (a 1M-element ReLU: ~0.1 ms serial); there,
``force_path("serial")`` or ``NUMBA_NUM_THREADS=1`` is the faster choice.
"""

import contextlib
import contextvars
import json
import math
import os
import threading
import time
import types
from pathlib import Path

import numpy as np
from numba import njit

# Size at which the parallel build starts to win (2 cores): elements of the first argument,
# or for the GEMM kernels (affine, the fused train step, the convolutions; ``blas.plan``)
# multiply-adds, N * K * M of their largest product (each thread then runs its block on a
# private single-threaded BLAS). Not typed in: read from ``crossover.json``, the output of
# ``fastbp bench --section crossover --json kernels/crossover.json`` on the idle 2-core
# machine (serial and parallel builds timed in turn over 1K..4M, float32 and float64), by
# the rule below, which the bench's tables use too.
NEVER = math.inf
CROSSOVER_FILE = Path(__file__).with_name("crossover.json")


def measured_crossover(*ladders, below="serial", above="parallel"):
    """Size from which the parallel build should run, by ladders ([{size, serial,
    parallel}], one per dtype, on the same sizes): the one at which dispatching (serial
    below it, parallel from it) gives the least total log time over all their points, so a
    single noisy point cannot move it far; None where serial everywhere is best.
    ``below``, ``above``: the keys of the two choices' times (the density ladders time
    "sparse" below and "dense" above)."""
    gain = {}  # size -> summed log(above / below): what running ``above`` there costs
    for ladder in ladders:
        for point in ladder:
            ratio = math.log(point[above] / point[below])
            gain[point["size"]] = gain.get(point["size"], 0.0) + ratio
    found, least, total = None, 0.0, 0.0
    for size in sorted(gain, reverse=True):
        total += gain[size]
        if total < least:
            found, least = size, total
    return found


# Where the ladder is not the user's case: the fused step's ladder (its serial and parallel
# samples taken in turn) shows no parallel gain on this VM, while in the book's loop
# (``fastbp bench --section userloop``, 784-50-10, batch 100, float64) the serial build
# made the gradient phase ~1.4x and the loss phase ~1.5x slower.
MEASURED_IN_THE_LOOP = {"two_layer_step": 1 << 20}


def crossovers(rows):
    """{kernel: crossover} from the bench's crossover rows (one per kernel and dtype):
    ``measured_crossover`` of the kernel's ladders together, NEVER where serial is best;
    the kernels of ``MEASURED_IN_THE_LOOP`` take their value from there."""
    ladders = {}
    for row in rows:
        ladders.setdefault(row["kernel"], []).append(row["ladder"])
    out = {}
    for name, found in ladders.items():
        size = measured_crossover(*found)
        out[name] = NEVER if size is None else size
    return {**out, **MEASURED_IN_THE_LOOP}


with open(CROSSOVER_FILE) as _file:
    _measured = json.load(_file)
CROSSOVER = crossovers(_measured["crossover"])


# -- the sparse first layer or the BLAS: timed at the user's shapes ----------------------
#
# The fused step and the Affine layer can take a sparse first layer (the W rows at x's
# nonzeros summed) instead of the BLAS. Which wins depends on the machine (its vector
# width), the dtypes and the shapes: of two 2-core VMs, on the AVX-512 one the sparse layer
# won up to 20-50% nonzeros at 784-50; on the AVX2 one it lost at 5% in float32 and won
# only at 784-1024. So no table decides: the first call of each call shape in a process
# runs the kernel both ways SPARSE_TRIALS times, in turn, before its own run, and the
# shape keeps the sparse layer if its median time is at most SPARSE_MARGIN of the BLAS's.
# Every later call of the shape runs the same way, so the same inputs give the same bits;
# the margin keeps a near tie on the BLAS, so that processes rarely choose apart.
# A batch denser than SPARSE_GATE never takes the sparse layer (its nonzeros are counted
# only that far), and a shape whose first batch is that dense keeps the BLAS. The trial
# runs take the first TRIAL_ROWS rows of a larger batch (both ways' times grow with the
# rows alike), so a first call on a whole data set costs a few of its runs, not eleven.
SPARSE_GATE = 0.5
SPARSE_TRIALS = 5
SPARSE_MARGIN = 0.85
TRIAL_ROWS = 512
_sparse_choices = {}  # call shape -> SPARSE_GATE (sparse) or -1.0 (the BLAS)
_sparse_lock = threading.Lock()


def sparse_density(key):
    """The fraction of nonzeros up to which calls of shape ``key`` (a tuple naming the
    kernel, dtypes, blocks and sizes) take the sparse first layer (-1.0: never), or None
    before ``choose_sparse`` has timed the shape."""
    return _sparse_choices.get(key)


def choose_sparse(key, rows, trial):
    """``sparse_density(key)``, timed first if needed on a call of ``rows`` rows:
    ``trial(density, r)`` runs the kernel once with that density on the first r rows
    of this call's inputs (r = at most TRIAL_ROWS; its outputs are overwritten by the
    call's own run after) and returns whether it took the sparse layer."""
    with _sparse_lock:
        if key not in _sparse_choices:
            wins = _sparse_wins(trial, min(rows, TRIAL_ROWS))
            _sparse_choices[key] = SPARSE_GATE if wins else -1.0
        return _sparse_choices[key]


def _sparse_wins(trial, rows):
    if not trial(SPARSE_GATE, rows):  # also the untimed first run: compilation, caches
        return False
    times = {SPARSE_GATE: [], -1.0: []}
    for _ in range(SPARSE_TRIALS):
        for density, samples in times.items():
            start = time.perf_counter()
            trial(density, rows)
            samples.append(time.perf_counter() - start)
    sparse, dense = (float(np.median(samples)) for samples in times.values())
    return sparse <= SPARSE_MARGIN * dense


# Bit-exact float flags: no nnan/ninf (they fold isnan to False) and no reciprocal tricks.
FASTMATH = {"contract", "reassoc", "nsz"}

_forced = contextvars.ContextVar("fastbp_forced_path", default=None)
_forked_child = False


def _after_fork_in_child():
    """A forked child runs serial kernels only, and gets a lock of its own for the sparse
    choices (another thread may have held the parent's at the fork)."""
    global _forked_child, _sparse_lock
    _forked_child = True
    _sparse_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def force_path(path):
    """Run every kernel this thread calls on ``path`` ("serial" or "parallel") inside the
    ``with`` block (per thread: other threads are not affected)."""
    if path not in ("serial", "parallel"):
        raise ValueError(f"path must be 'serial' or 'parallel', got {path!r}")
    token = _forced.set(path)
    try:
        yield
    finally:
        _forced.reset(token)


def _renamed(fn, suffix):
    """A copy of ``fn`` with its own qualified name, so the two builds cache separately."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__)
    copy.__qualname__ = f"{fn.__qualname__}__{suffix}"
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class Twin:
    """A kernel compiled serial and parallel; calling it dispatches by input size."""

    def __init__(self, fn):
        self.name = fn.__name__
        if self.name not in CROSSOVER:  # at import: a new kernel needs its measured size
            raise LookupError(f"kernel {self.name} has no CROSSOVER entry (kernels/dispatch.py)")
        self.__doc__ = fn.__doc__
        # error_model="numpy": x / 0 gives inf/nan like NumPy instead of raising, which also
        # keeps the serial loops free of exception branches so that they vectorise.
        options = {"cache": True, "nogil": True, "fastmath": FASTMATH, "error_model": "numpy"}
        self.serial = njit(**options)(_renamed(fn, "serial"))
        self.parallel = njit(parallel=True, **options)(_renamed(fn, "parallel"))

    def pick(self, size):
        """The build that a first argument of ``size`` elements runs on."""
        forced = _forced.get()
        if forced is not None and not (_forked_child and forced == "parallel"):
            return self.serial if forced == "serial" else self.parallel
        if _forked_child or size < CROSSOVER[self.name]:
            return self.serial
        return self.parallel

    def __call__(self, *args):
        # pick(), inlined for the common case: this runs on every layer call.
        if _forced.get() is None and not _forked_child:
            if args[0].size < CROSSOVER[self.name]:
                return self.serial(*args)
            return self.parallel(*args)
        return self.pick(args[0].size)(*args)


def twin(fn):
    """Decorator: compile ``fn`` as a serial/parallel ``Twin``."""
    return Twin(fn)
