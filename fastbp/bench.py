"""``fastbp bench``: time fastbp against the book's NumPy code, side by side, in one process.

Sections (``--section``, default userloop,kernels,layers,train; they run in this order):

- userloop: the book's ch05/train_neuralnet.py loop on real MNIST, phase by phase, for the
  book's classes, the book's TwoLayerNet over fastbp.layers and fastbp.nets.TwoLayerNet,
  each in fresh processes of its own, and the book's classes after fastbp ran in the
  process (``fastbp.benchloop``);
- kernels, layers: each kernel and drop-in layer against the NumPy reference;
- train: one SGD step of TwoLayerNet(784, H, 10): fastbp.nets, the book's classes, the
  fused step and fastbp's layers one by one, next to the yardstick "bare GEMM": the summed
  medians of the step's five np.dot calls on one BLAS thread (step / bare GEMM = 1 would
  mean everything but the matrix products is free; below 1 the step uses both cores);
- peers: the train step and the user loop's gradient in PyTorch (eager, torch.compile) and
  JAX (jit), when they are installed (they are not dependencies);
- crossover: serial vs parallel build of every kernel over sizes, next to CROSSOVER, and
  the sparse first layer vs the BLAS over densities of x (a table: the kernels choose
  by timing both at the user's shapes, ``dispatch.choose_sparse``);
- distributed: data-parallel training over MPI ranks (needs the [mpi] extra);
- setup: the README's set-up commands in a new venv, timed (``fastbp.benchsetup``; not
  part of ``all``).

Method: each case is a set of zero-argument callables from ``fastbp.benchcases``. Every
callable runs once first (compilation and caches out of the way); then, timeit-style, each
gets a number of calls per sample so that one sample takes at least ``min_time``, and the
samples of each callable of a case are taken in blocks, after untimed settling calls, in
two rounds (``medians``), so that one callable's thread pools do not spill into the next.
A row reports the median time per call of each and the ratios, all from one run.
Nothing here sets thread variables: the numbers are those of the user's default
environment.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import time

import numba
import numpy as np

from fastbp import benchcases, benchloop, kernels, report
from fastbp.kernels import CROSSOVER, dispatch
from fastbp.kernels.dispatch import NEVER
from fastbp.train import blas_threads

# Environment variables that choose the BLAS's kernels (recorded in the machine info).
BLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "MKL_DEBUG_CPU_TYPE")

# In the order they run.
SECTIONS = (
    "userloop", "kernels", "layers", "train", "conv", "crossover", "peers", "distributed",
    "setup",
)  # fmt: skip
DEFAULT_SECTIONS = ("userloop", "kernels", "layers", "train", "conv")
ALL_SECTIONS = SECTIONS[:-1]  # "all": setup (a new venv, the test suite) runs on its own


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run and how long to sample."""

    quick: bool
    min_time: float  # seconds per sample, at least
    repeat: int  # samples per callable (the median is reported), at most ...
    min_repeat: int  # ... and at least, stopping in between once a case has run
    max_time: float  # this many seconds
    shapes: tuple
    affine_shapes: tuple
    train_sizes: tuple
    peer_sizes: tuple
    ladder: tuple  # element counts of the crossover ladder
    densities: tuple  # fractions of nonzeros of the sparse-or-dense ladder
    loop_processes: int  # user loop: processes per variant, each timing loop_rounds
    loop_rounds: int  # rounds of loop_block iterations and one accuracy
    loop_block: int
    distributed: tuple  # (hidden, global batch, timed steps)
    user_loop_phases: tuple = (*benchcases.USER_LOOP_PHASES, "accuracy")


FULL = Settings(
    quick=False,
    min_time=0.01,
    repeat=11,
    min_repeat=5,
    max_time=2.0,
    shapes=benchcases.SHAPES[:4],  # asv covers 4096x4096
    affine_shapes=benchcases.AFFINE_SHAPES,
    train_sizes=benchcases.TRAIN_SIZES,
    peer_sizes=benchcases.PEER_SIZES,
    ladder=tuple(1 << p for p in range(10, 23)),  # 1K .. 4M elements
    densities=benchcases.DENSITIES,
    loop_processes=11,  # 4,400 iterations and 110 accuracies per variant
    loop_rounds=10,
    loop_block=40,
    distributed=(benchcases.BOOK_HIDDEN, benchcases.BOOK_BATCH, 300),
)
QUICK = Settings(  # the CI smoke run: one size per case, a few short samples
    quick=True, min_time=0.001, repeat=3, min_repeat=3, max_time=0.0,
    shapes=((100, 50),), affine_shapes=((100, 784, 50),), train_sizes=((50, 100),),
    peer_sizes=((50, 100),), ladder=tuple(1 << p for p in range(10, 23, 4)), densities=(0.1, 0.4),
    loop_processes=1, loop_rounds=2, loop_block=5, distributed=(8, 10, 2),
)  # fmt: skip
# Fused train step ladder of --section crossover: the book's hidden units, on real MNIST
# images (sparse: the first layer as the user loop takes it); batch from n multiply-adds.
LADDER_TRAIN_HIDDEN = benchcases.BOOK_HIDDEN
# Ladder shapes of the 2-D kernels for n elements: affine x[N, K] @ W[K, M] with n
# multiply-adds (N = n // (K * M): the GEMM kernels' size in CROSSOVER); softmax_ce over
# n // C rows of C classes.
LADDER_K, LADDER_M = 50, 100
LADDER_KERNELS = (
    *benchcases.CORE_KERNELS, *benchcases.UPDATE_ARGS, "two_layer_step",
    *benchcases.LAYER_LADDER_KERNELS,
)  # fmt: skip


# -- timing ----------------------------------------------------------------------------


def _sample(fn, number):
    """Seconds for ``number`` calls of ``fn``."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return time.perf_counter() - start


def _calls_per_sample(fn, min_time):
    """Calls per sample so that one sample takes at least ``min_time`` seconds."""
    number = 1
    while (elapsed := _sample(fn, number)) < min_time:
        estimate = int(number * 1.2 * min_time / max(elapsed, 1e-9))
        number = max(2 * number, min(1000 * number, estimate))
    return number


# Untimed calls before each block of samples (train steps, layers), for this long: longer
# than NumPy's OpenBLAS workers keep spinning after the book's variant (measured ~100 ms)
# and than this VM takes to come back to speed after a pause, so that each block times
# the steady state of one variant, as in a process running it alone.
SETTLE_SECONDS = 0.15
# Sections sampled in blocks per column, each after settling (all but the ladders).
BLOCKED_SECTIONS = ("kernels", "layers", "train", "conv", "peers")


def _settle(fn):
    """Untimed calls of ``fn`` for ``SETTLE_SECONDS`` (see there)."""
    end = time.perf_counter() + SETTLE_SECONDS
    while time.perf_counter() < end:
        fn()


def medians(fns, settings, blocked=False):
    """Median seconds per call of each callable, their samples interleaved; ``blocked``:
    in two rounds of consecutive samples per callable instead, each after ``_settle``
    (so that one callable's thread pools do not spill into another's times)."""
    for fn in fns:
        fn()
    numbers = [_calls_per_sample(fn, settings.min_time) for fn in fns]
    samples = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        if blocked:
            for order in (1, -1):
                for fn, number, times in list(zip(fns, numbers, samples, strict=True))[::order]:
                    _settle(fn)
                    times.extend(_sample(fn, number) / number for _ in range(settings.repeat))
        for i in range(0 if blocked else settings.repeat):
            if i >= settings.min_repeat and time.perf_counter() - start > settings.max_time:
                break
            for fn, number, times in zip(fns, numbers, samples, strict=True):
                times.append(_sample(fn, number) / number)
    finally:
        if gc_was_enabled:
            gc.enable()
    return [statistics.median(times) for times in samples]


# -- cases -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One row: ``build()`` returns {column: callable}; ratios are baseline / column."""

    section: str
    name: str
    dtype: str
    build: object
    baseline: str = "reference"
    yardstick: object = None  # () -> [(label, callable)], the train step's bare GEMMs

    @property
    def label(self):
        return f"{self.section} {self.name} {self.dtype}"


def _pair_cases(section, families, builder, settings):
    for family in families:
        shapes = settings.affine_shapes if family.lower() == "affine" else settings.shapes
        for direction, verb in enumerate(("forward", "backward")):
            name = f"{family}_{verb}" if section == "kernels" else f"{family}.{verb}"
            for shape in shapes:
                for dtype in benchcases.DTYPES:

                    def build(family=family, shape=shape, dtype=dtype, direction=direction):
                        return {
                            impl: builder(family, impl, shape, dtype)[direction]
                            for impl in benchcases.IMPLS
                        }

                    yield Case(section, f"{name} {benchcases.shape_name(shape)}", dtype, build)


def _step_case(section, name, dtype, hidden, batch_of, builders):
    """A train-step row: ``batch_of()`` gives (x, t); params ``dtype``; a column per
    {name: step builder}, each on its own copy of the same params."""

    def build():
        x, t = batch_of()
        params = benchcases.two_layer_params(hidden, dtype)
        return {
            column: make_step({k: v.copy() for k, v in params.items()}, x, t)
            for column, make_step in builders.items()
        }

    def yardstick():
        return benchcases.bare_gemms(hidden, len(batch_of()[0]), dtype)

    return Case(section, name, dtype, build, yardstick=yardstick)


def _batch_of(batch, dtype):
    return functools.partial(benchcases.train_batch, batch, dtype)


def train_cases(settings):
    builders = benchcases.STEP_BUILDERS
    for hidden, batch in settings.train_sizes:
        for dtype in benchcases.DTYPES:
            name = f"H={hidden} B={batch}"
            yield _step_case("train", name, dtype, hidden, _batch_of(batch, dtype), builders)
    hidden, batch = benchcases.BOOK_HIDDEN, benchcases.BOOK_BATCH
    book = f"mnist H={hidden} B={batch}"
    mnist = functools.partial(benchcases.mnist_batch, batch)
    # The book's own dtypes (float32 images, float64 labels and weights), then float32.
    yield _step_case("train", f"{book} x:f32 t,W:f64", "float64", hidden, mnist, builders)
    mnist32 = functools.partial(benchcases.mnist_batch, batch, "float32")
    yield _step_case("train", book, "float32", hidden, mnist32, builders)


def available_peers():
    """The ``benchcases.PEER_STEPS`` columns whose framework is installed."""
    return [
        name
        for name, module in benchcases.PEER_MODULES.items()
        if importlib.util.find_spec(module) is not None
    ]


def peer_cases(settings):
    """The train step at PEER_SIZES and the user loop's gradient, with other frameworks."""
    peers = available_peers()
    for hidden, batch in settings.peer_sizes:
        for dtype in benchcases.DTYPES:
            builders = {
                "book": benchcases.reference_step,
                "fused": benchcases.fused_sgd_step,
                **{name: benchcases.PEER_STEPS[name] for name in peers},
            }
            name = f"step 784-{hidden}-10 B={batch}"
            case = _step_case("peers", name, dtype, hidden, _batch_of(batch, dtype), builders)
            yield dataclasses.replace(case, baseline="book")

    def build():
        params = benchcases.user_loop_net("book").params
        gradients = {v: benchcases.user_loop_net(v).gradient for v in benchcases.USER_LOOP_VARIANTS}
        gradients.update({name: benchcases.PEER_GRADIENTS[name](params) for name in peers})
        return {
            name: benchcases.gradient_on_fresh_batches(gradient)
            for name, gradient in gradients.items()
        }

    yield Case("peers", "user-loop gradient (fresh MNIST batches)", "x:f32 W:f64", build, "book")


def cases(settings, sections):
    """Every timed row of the table sections, in order (built only when a row runs)."""
    if "kernels" in sections:
        yield from _pair_cases(
            "kernels", benchcases.KERNEL_FAMILIES, benchcases.kernel_case, settings
        )
    if "layers" in sections:
        yield from _pair_cases("layers", benchcases.LAYER_FAMILIES, benchcases.layer_case, settings)
    if "train" in sections:
        yield from train_cases(settings)
    if "conv" in sections:
        yield from conv_cases(settings)


def _impl_case(name, dtype, run):
    """A fastbp-vs-book row: ``run(impl)`` gives the zero-argument callable of each."""
    return Case("conv", name, dtype, lambda: {impl: run(impl) for impl in benchcases.IMPLS})


def conv_cases(settings):
    """Chapter 6-8 layers at the book's nets' sizes, a SimpleConvNet train step and
    DeepConvNet inference, fastbp against the book's classes."""
    for family in benchcases.CONV_LAYER_FAMILIES:
        sizes = benchcases.conv_layer_sizes(family)[: 1 if settings.quick else None]
        for size in sizes:
            for direction, verb in enumerate(("forward", "backward")):
                for dtype in benchcases.DTYPES:
                    yield _impl_case(
                        f"{family}.{verb} {size}",
                        dtype,
                        lambda impl, f=family, s=size, d=dtype, i=direction: (
                            benchcases.conv_layer_pair(f, impl, s, d)[i]
                        ),
                    )
    for batch in benchcases.CONVNET_BATCHES:
        yield _impl_case(
            f"SimpleConvNet step B={batch}",
            "float64",
            lambda impl, b=batch: benchcases.convnet_step(impl, b, "float64"),
        )
    for images in benchcases.DEEP_INFERENCE_IMAGES[: 0 if settings.quick else None]:
        yield _impl_case(
            f"DeepConvNet accuracy, {images} images",
            "float64",
            lambda impl, n=images: benchcases.deep_convnet_inference(impl, n),
        )


def run_case(case, settings):
    """Time one case: a JSON-ready row of medians (seconds) and ratios."""
    columns = case.build()
    names = list(columns)
    row = {"section": case.section, "case": case.name, "dtype": case.dtype}
    row.update(columns=names, baseline=case.baseline)
    blocked = case.section in BLOCKED_SECTIONS
    row.update(zip(names, medians(list(columns.values()), settings, blocked), strict=True))
    for name in names:
        if name != case.baseline:
            row[f"{name}_speedup"] = row[case.baseline] / row[name]
    if "fastbp_speedup" in row:
        row["speedup"] = row.pop("fastbp_speedup")
    if case.yardstick is not None:
        gemms = case.yardstick()
        with blas_threads(1):  # the yardstick: single-threaded BLAS (sets no variable)
            times = medians([fn for _, fn in gemms], settings)
        row["gemm"] = sum(times)
        row["gemm_parts"] = dict(zip((label for label, _ in gemms), times, strict=True))
        for name in names:
            row[f"{name}_per_gemm"] = row[name] / row["gemm"]
    return row


# -- the user loop ---------------------------------------------------------------------


# -- crossover -------------------------------------------------------------------------


def ladder_shape(name, n):
    """The argument shape of kernel ``name`` whose first array has about ``n`` elements."""
    if name.startswith("affine"):
        return max(1, n // (LADDER_K * LADDER_M)), LADDER_K, LADDER_M
    if name.startswith("softmax_ce"):
        return max(1, n // benchcases.CLASSES), benchcases.CLASSES
    return (n,)


def _on_path(path, fn):
    with kernels.force_path(path):
        fn()


def ladder_pair(name, n, dtype):
    """(serial, parallel) callables running kernel ``name`` with ``n`` elements in its
    first argument; the fused train step and the chapter 6-8 kernels go through their
    callers (``fastbp.fused``, the layers) with a forced path."""
    if name == "two_layer_step":
        batch = n // (benchcases.INPUT_SIZE * LADDER_TRAIN_HIDDEN)  # multiply-adds
        x, t = benchcases.mnist_batch(max(1, batch), dtype)
        params = benchcases.two_layer_params(LADDER_TRAIN_HIDDEN, dtype)
        step = benchcases.fused_sgd_step(params, x, t)
        return tuple(functools.partial(_on_path, path, step) for path in ("serial", "parallel"))
    if name in benchcases.LAYER_LADDER_KERNELS:
        call = benchcases.layer_ladder_call(name, n, dtype)
        return tuple(functools.partial(_on_path, path, call) for path in ("serial", "parallel"))
    kernel = benchcases.kernel_function(name)
    args = benchcases.kernel_args(name, ladder_shape(name, n), dtype)
    if name.startswith("affine"):
        serial = benchcases.gemm_plan_args(name, args, 1)
        parallel = benchcases.gemm_plan_args(name, args, numba.get_num_threads())
        return functools.partial(kernel.serial, *serial), functools.partial(
            kernel.parallel, *parallel
        )
    return functools.partial(kernel.serial, *args), functools.partial(kernel.parallel, *args)


def crossover_rows(settings, name_filter):
    """For each kernel and dtype: the serial/parallel ladder and the measured crossover."""
    rows = []
    for name in LADDER_KERNELS:
        if name_filter not in name:
            continue
        for dtype in benchcases.DTYPES:
            ladder = []
            for n in settings.ladder:
                serial, parallel = medians(ladder_pair(name, n, dtype), settings)
                ladder.append({"size": n, "serial": serial, "parallel": parallel})
            rows.append(
                {
                    "kernel": name,
                    "dtype": dtype,
                    "current": None if CROSSOVER[name] == NEVER else CROSSOVER[name],
                    "measured": dispatch.measured_crossover(ladder),
                    "ladder": ladder,
                }
            )
    return rows


@contextlib.contextmanager
def numba_threads(count):
    """Numba's thread count for this thread set to ``count`` inside the block."""
    before = numba.get_num_threads()
    numba.set_num_threads(count)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def density_rows(settings, name_filter):
    """For each kernel with a sparse first layer, dtype and thread mode (one Numba thread,
    all of them): the sparse / dense ladder over densities (``report.densities`` reads
    these rows)."""
    rows = []
    for name in benchcases.SPARSE_KERNELS:
        if name_filter not in name:
            continue
        for dtype in benchcases.DTYPES:
            for threads in sorted({1, numba.get_num_threads()}):
                ladder = []
                for density in settings.densities:
                    pair = benchcases.sparse_pair(name, density, dtype)
                    with numba_threads(threads):
                        sparse, dense = medians(pair, settings)
                    ladder.append({"size": density, "sparse": sparse, "dense": dense})
                rows.append({"kernel": name, "dtype": dtype, "threads": threads, "ladder": ladder})
    return rows


# -- machine ---------------------------------------------------------------------------


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info():
    """Where and how the numbers were taken."""
    from fastbp import __version__

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "fastbp": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer_env": os.environ.get("NUMBA_THREADING_LAYER", ""),
        "thread_variables": {
            name: os.environ[name]
            for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
            if name in os.environ
        },
        "loadavg_start": os.getloadavg(),
        "peers": {
            module: importlib.metadata.version(module)
            for module in sorted(set(benchcases.PEER_MODULES.values()))
            if importlib.util.find_spec(module) is not None
        },
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    info["blas"] = [
        f"{pool['internal_api']} {pool['version']} {pool.get('architecture') or ''}".rstrip()
        + f" ({pool['num_threads']} threads)"
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    ]
    # Kernel choices set in the environment (e.g. OPENBLAS_CORETYPE=Haswell) change the
    # BLAS's speed, and so every GEMM-bound row: recorded with the numbers.
    info["blas_variables"] = {
        name: os.environ[name] for name in BLAS_VARIABLES if name in os.environ
    }
    return info


# -- command line ----------------------------------------------------------------------


def section_list(text):
    """'kernels,train' -> ('kernels', 'train'); 'all' -> ``ALL_SECTIONS`` (argparse type)."""
    names = ALL_SECTIONS if text == "all" else tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)} or all"
        )
    return names


def configure_parser(parser):
    """Add the ``bench`` options to ``parser`` (an argparse parser or subparser)."""
    parser.add_argument(
        "--section",
        type=section_list,
        default=DEFAULT_SECTIONS,
        metavar="NAME[,NAME]",
        help=f"sections to run: {', '.join(SECTIONS)} or all (all but setup; "
        f"default {','.join(DEFAULT_SECTIONS)})",
    )
    parser.add_argument("--json", metavar="PATH", help="also write every row as JSON to PATH")
    parser.add_argument(
        "--quick", action="store_true", help="one size per case and short runs (CI smoke test)"
    )
    parser.add_argument(
        "--filter",
        metavar="SUBSTR",
        default="",
        help="only rows whose 'section case dtype' (or kernel name) contains SUBSTR",
    )
    return parser


def _print(text):
    if text:
        print("\n" + text, flush=True)


def main(args):
    """Run the benchmark described by parsed ``args``; print tables; return 0."""
    settings = QUICK if args.quick else FULL
    sections = args.section
    info = machine_info()
    print(
        f"fastbp bench {','.join(sections)}: median of {settings.min_repeat}..{settings.repeat} "
        f"samples of >= {report.fmt_time(settings.min_time)} each"
        f"; {info['cpu_count']} CPUs, {info['numba_threads']} Numba threads, "
        f"load average {info['loadavg_start'][0]:.2f}",
        *(f"; BLAS: {blas}" for blas in info.get("blas", ())),
        sep="",
        flush=True,
    )
    result = {"machine": info, "settings": dataclasses.asdict(settings), "rows": []}
    if "userloop" in sections and args.filter in "userloop":
        result["rows"] += benchloop.bench(
            settings.loop_processes, settings.loop_rounds, settings.loop_block
        )
        _print(report.section_text(result, "userloop"))
    section = None
    for case in cases(settings, sections):
        if args.filter not in case.label:
            continue
        if case.section != section and section is not None:
            _print(report.section_text(result, section))
        section = case.section
        result["rows"].append(run_case(case, settings))
    if section is not None:
        _print(report.section_text(result, section))
    if "crossover" in sections:
        result["crossover"] = crossover_rows(settings, args.filter)
        result["density"] = density_rows(settings, args.filter)
        _print(report.section_text(result, "crossover"))
    if "peers" in sections:  # last in this process: other frameworks' threads stay around
        peers = [case for case in peer_cases(settings) if args.filter in case.label]
        result["rows"] += [run_case(case, settings) for case in peers]
        _print(report.section_text(result, "peers"))
    if "distributed" in sections:
        from fastbp import benchdist

        result["distributed"] = benchdist.bench(*settings.distributed)
        _print(report.section_text(result, "distributed"))
    if "setup" in sections:
        from fastbp import benchsetup

        result["setup"] = benchsetup.measure()
        _print(report.section_text(result, "setup"))
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    parser = configure_parser(argparse.ArgumentParser(prog="fastbp bench", description=__doc__))
    raise SystemExit(main(parser.parse_args()))
