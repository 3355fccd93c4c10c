"""``fastbp bench``: time fastbp against the NumPy reference, side by side, in one process.

Method: each case is a pair (or more) of zero-argument callables from
``fastbp.benchcases``. Every callable runs once first (compilation and caches out of the
way); then, timeit-style, each gets a number of calls per sample so that one sample takes
at least ``min_time``, and samples of all the callables of a case are taken interleaved,
so background load hits them alike. A row reports the median time per call of each and
the ratio reference / fastbp (the speed-up), all from the same run.

Train-step rows add the "bare GEMM" yardstick: the summed medians of the five np.dot
calls the step needs, and step / bare GEMM for fastbp and the reference (1.0 would mean
everything but the matrix products is free). PyTorch and JAX columns appear when those
packages happen to be importable; neither is a dependency.

``--crossover`` instead times the serial and parallel builds of every kernel over a
ladder of sizes and prints where the parallel build starts to win, next to
``fastbp.kernels.CROSSOVER``.
"""

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import importlib.util
import itertools
import json
import os
import platform
import statistics
import time

import numba
import numpy as np

from fastbp import benchcases, kernels
from fastbp.kernels import CROSSOVER
from fastbp.kernels import optimizers as update_kernels
from fastbp.kernels.dispatch import NEVER

IMPLS = benchcases.IMPLS
OTHER_FRAMEWORKS = {"torch": benchcases.torch_step, "jax": benchcases.jax_step}
# Train-step columns besides fastbp and reference: the fused step, the layer-by-layer
# step, then other frameworks.
STEP_COLUMNS = {"fused": benchcases.fused_step, "layers": benchcases.layers_step}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to run and how long to sample."""

    min_time: float  # seconds per sample, at least
    repeat: int  # samples per callable (the median is reported), at most ...
    min_repeat: int  # ... and at least, stopping in between once a case has run
    max_time: float  # this many seconds
    shapes: tuple
    affine_shapes: tuple
    train_sizes: tuple
    ladder: tuple  # element counts for --crossover


FULL = Settings(
    min_time=0.01,
    repeat=11,
    min_repeat=5,
    max_time=2.0,
    shapes=benchcases.SHAPES[:4],  # asv covers 4096x4096
    affine_shapes=benchcases.AFFINE_SHAPES,
    train_sizes=benchcases.TRAIN_SIZES,
    ladder=tuple(1 << p for p in range(10, 23)),  # 1K .. 4M elements
)
QUICK = Settings(
    min_time=0.001,
    repeat=3,
    min_repeat=3,
    max_time=0.0,
    shapes=((100, 50),),
    affine_shapes=((100, 784, 50),),
    train_sizes=((50, 100),),
    ladder=tuple(1 << p for p in range(10, 23, 4)),
)
MNIST_HIDDEN, MNIST_BATCH = 50, 100  # the book's ch.5 train_neuralnet.py


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


def medians(fns, settings):
    """Median seconds per call of each callable, their samples interleaved."""
    for fn in fns:
        fn()
    numbers = [_calls_per_sample(fn, settings.min_time) for fn in fns]
    samples = [[] for _ in fns]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    start = time.perf_counter()
    try:
        for i in range(settings.repeat):
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
    """One row: ``build()`` returns {column: callable}, with "fastbp" and "reference"."""

    section: str
    name: str
    dtype: str
    build: object
    yardstick: object = None  # () -> [(label, callable)], the train step's bare GEMMs

    @property
    def label(self):
        return f"{self.section} {self.name} {self.dtype}"


def _pair_cases(section, families, builder, settings):
    for family in families:
        shapes = settings.affine_shapes if family.lower() == "affine" else settings.shapes
        for direction in (0, 1):
            verb = ("forward", "backward")[direction]
            name = f"{family}_{verb}" if section == "kernel" else f"{family}.{verb}"
            for shape in shapes:
                for dtype in benchcases.DTYPES:

                    def build(family=family, shape=shape, dtype=dtype, direction=direction):
                        return {
                            impl: builder(family, impl, shape, dtype)[direction] for impl in IMPLS
                        }

                    yield Case(section, f"{name} {benchcases.shape_name(shape)}", dtype, build)


def _with_others(columns, params, x, t, builders):
    """Add a train-step column per {name: step builder}, each on its own copy of params.

    A builder whose framework fails to import is left out.
    """
    for name, make_step in builders.items():
        with contextlib.suppress(ImportError):
            columns[name] = make_step({k: v.copy() for k, v in params.items()}, x, t)
    return columns


def _train_case(name, dtype, hidden, batch, batch_of, frameworks):
    """A train-step row: ``batch_of()`` gives (x, t) of ``batch`` rows; params ``dtype``."""

    def build():
        x, t = batch_of()
        nets = {impl: benchcases.two_layer_net(impl, hidden, dtype) for impl in IMPLS}
        columns = {impl: benchcases.sgd_step(net, x, t) for impl, net in nets.items()}
        extra = {**STEP_COLUMNS, **frameworks}
        return _with_others(columns, nets["reference"].params, x, t, extra)

    def yardstick():
        return benchcases.bare_gemms(hidden, batch, dtype)

    return Case("train", name, dtype, build, yardstick)


def cases(settings, frameworks):
    """Every row of the table, in order (nothing is built until a row runs)."""
    yield from _pair_cases("kernel", benchcases.KERNEL_FAMILIES, benchcases.kernel_pair, settings)
    yield from _pair_cases("layer", benchcases.LAYER_FAMILIES, benchcases.layer_pair, settings)
    for hidden, batch in settings.train_sizes:
        for dtype in benchcases.DTYPES:

            def batch_of(batch=batch, dtype=dtype):
                return benchcases.train_batch(batch, dtype)

            name = f"H={hidden} B={batch}"
            yield _train_case(name, dtype, hidden, batch, batch_of, frameworks)
    book = f"mnist H={MNIST_HIDDEN} B={MNIST_BATCH}"
    yield _train_case(
        f"{book} x:f32 t,W:f64",  # the book's own dtypes
        "float64",
        MNIST_HIDDEN,
        MNIST_BATCH,
        lambda: benchcases.mnist_batch(MNIST_BATCH),
        frameworks,
    )
    yield _train_case(
        book,
        "float32",
        MNIST_HIDDEN,
        MNIST_BATCH,
        lambda: benchcases.mnist_batch(MNIST_BATCH, "float32"),
        frameworks,
    )


def run_case(case, settings):
    """Time one case: a JSON-ready row of medians (seconds) and ratios."""
    columns = case.build()
    names = list(columns)
    row = {"section": case.section, "case": case.name, "dtype": case.dtype}
    row.update(zip(names, medians(list(columns.values()), settings), strict=True))
    row["speedup"] = row["reference"] / row["fastbp"]
    for name in (name for name in names if name not in IMPLS):
        row[f"{name}_speedup"] = row["reference"] / row[name]
    if case.yardstick is not None:
        gemms = case.yardstick()
        times = medians([fn for _, fn in gemms], settings)
        row["gemm"] = sum(times)
        row["gemm_parts"] = dict(zip((label for label, _ in gemms), times, strict=True))
        for name in names:
            row[f"{name}_per_gemm"] = row[name] / row["gemm"]
    return row


# -- crossover -------------------------------------------------------------------------

# Affine ladder shapes: out[n // M, M] from x[n // M, K] @ W[K, M].
LADDER_K, LADDER_M = 50, 100
SOFTMAX_CLASSES = 10
TRAIN_STEP_HIDDEN = 100  # fused train step ladder: x[n // 784, 784], H = 100
# Optimizer updates (param, grad, *state, *scalars): state arrays and scalar arguments.
UPDATE_ARGS = {
    "sgd_update": (0, (0.01,)),
    "momentum_update": (1, (0.01, 0.9)),
    "adagrad_update": (1, (0.01, 1e-7)),
    "adam_update": (2, (0.001, 0.1, 0.001, 1e-7)),
}
CORE_KERNELS = tuple(
    f"{family}_{verb}" for family in benchcases.KERNEL_FAMILIES for verb in ("forward", "backward")
)
LADDER_KERNELS = (*CORE_KERNELS, *UPDATE_ARGS, "train_step")


def kernel_args(name, n, dtype):
    """Arguments of kernel ``name`` (a core kernel or an optimizer update) whose first
    array has ``n`` elements."""
    normal = benchcases.normal
    if name.startswith("affine"):
        rows = max(1, n // LADDER_M)
        out, x = np.empty((rows, LADDER_M), dtype), normal((rows, LADDER_K), dtype, 1)
        W, b = normal((LADDER_K, LADDER_M), dtype, 2, 0.01), normal(LADDER_M, dtype, 3)
        if name == "affine_forward":
            return out, x, W, b
        return normal(out.shape, dtype, 4), x, W, np.empty_like(x), np.empty_like(W), b, True
    if name.startswith("softmax_ce"):
        rows = max(1, n // SOFTMAX_CLASSES)
        x, t = normal((rows, SOFTMAX_CLASSES), dtype, 1), benchcases.labels(rows, SOFTMAX_CLASSES)
        if name == "softmax_ce_forward":
            return x, t, np.empty_like(x)
        return x, t, 1.0 / rows, np.empty_like(x)
    x = normal(n, dtype, 1)
    if name in UPDATE_ARGS:
        states, scalars = UPDATE_ARGS[name]
        return (x, normal(n, dtype, 2, 0.01), *(np.zeros_like(x) for _ in range(states)), *scalars)
    extra = {
        "relu_forward": (np.empty_like(x), x <= 0),
        "relu_backward": (x <= 0, np.empty_like(x)),
        "sigmoid_forward": (np.empty_like(x),),
        "sigmoid_backward": (np.empty_like(x), np.empty_like(x)),
    }
    return (x, *extra[name])


def _on_path(path, fn):
    with kernels.force_path(path):
        fn()


def ladder_pair(name, n, dtype):
    """(serial, parallel) callables running kernel ``name`` with ``n`` elements in its
    first argument; the fused train step goes through ``fastbp.fused`` with a forced path."""
    if name == "train_step":
        x, t = benchcases.train_batch(max(1, n // benchcases.INPUT_SIZE), dtype)
        params = benchcases.two_layer_net("fastbp", TRAIN_STEP_HIDDEN, dtype).params
        step = benchcases.fused_step(params, x, t)
        return tuple(functools.partial(_on_path, path, step) for path in ("serial", "parallel"))
    kernel = getattr(update_kernels if name in UPDATE_ARGS else kernels, name)
    args = kernel_args(name, n, np.dtype(dtype))
    return functools.partial(kernel.serial, *args), functools.partial(kernel.parallel, *args)


def measured_crossover(ladder):
    """Smallest size from which the parallel build wins at every larger size; None if never."""
    found = None
    for point in reversed(ladder):
        if point["parallel"] >= point["serial"]:
            break
        found = point["size"]
    return found


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
                    "measured": measured_crossover(ladder),
                    "ladder": ladder,
                }
            )
    return rows


# -- output ----------------------------------------------------------------------------


def fmt_time(seconds):
    """'12.3 us', '4.56 ms', '1.23 s' (three significant digits)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-6:.3g} us"


def fmt_size(n):
    """1024 -> '1K', 4194304 -> '4M'; None -> 'none'; NEVER -> 'never'."""
    if n is None:
        return "none"
    if n == NEVER:
        return "never"
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def table(headers, rows):
    """Fixed-width text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for i, cells in enumerate([headers, *rows]):
        first = f"{cells[0]:<{widths[0]}}"
        rest = (f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True))
        lines.append("  ".join([first, *rest]).rstrip())
        if i == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(row, key, fmt):
    return fmt(row[key]) if key in row else "-"


def _ratio(value):
    return f"{value:.2f}x"


def section_table(section, rows, frameworks):
    """The table of one section ("kernel", "layer" or "train")."""
    headers = [section, "dtype", "fastbp", "reference", "speed-up"]
    keys = [("fastbp", fmt_time), ("reference", fmt_time), ("speedup", _ratio)]
    if section == "train":
        headers += ["fused", "speed-up", "layers", "speed-up", "bare GEMM"]
        keys += [("fused", fmt_time), ("fused_speedup", _ratio)]
        keys += [("layers", fmt_time), ("layers_speedup", _ratio), ("gemm", fmt_time)]
        compared = {"fastbp": "fastbp", "fused": "fused", "layers": "layers", "reference": "ref"}
        headers += [f"{short}/GEMM" for short in compared.values()]
        keys += [(f"{name}_per_gemm", _ratio) for name in compared]
        headers += list(frameworks)
        keys += [(name, fmt_time) for name in frameworks]
    body = [
        [row["case"], row["dtype"], *(_cell(row, key, fmt) for key, fmt in keys)]
        for row in rows
        if row["section"] == section
    ]
    return table(headers, body) if body else ""


def crossover_table(rows):
    """Measured crossover per kernel and dtype, then the parallel speed-up ladder."""
    dtypes = benchcases.DTYPES
    by_kernel = {}
    for row in rows:
        by_kernel.setdefault(row["kernel"], {})[row["dtype"]] = row
    summary = [
        [name, fmt_size(CROSSOVER[name]), *(fmt_size(found[d]["measured"]) for d in dtypes)]
        for name, found in by_kernel.items()
    ]
    parts = [table(["kernel", "CROSSOVER", *(f"measured {d}" for d in dtypes)], summary)]
    for dtype in dtypes:
        ladder_rows = [
            [row["kernel"], *(f"{p['serial'] / p['parallel']:.3g}" for p in row["ladder"])]
            for row in rows
            if row["dtype"] == dtype
        ]
        if ladder_rows:
            sizes = [fmt_size(p["size"]) for p in rows[0]["ladder"]]
            title = f"serial / parallel time, {dtype} (> 1: parallel wins)"
            parts.append(title + "\n" + table(["kernel", *sizes], ladder_rows))
    unmeasured = sorted(set(CROSSOVER) - set(LADDER_KERNELS))
    if unmeasured:
        parts.append(f"no ladder case for (not measured): {', '.join(unmeasured)}")
    return "\n\n".join(parts)


def machine_info():
    """Where and how the numbers were taken."""
    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return info
    info["blas"] = [
        f"{pool['internal_api']} {pool['version']} ({pool['num_threads']} threads)"
        for pool in threadpool_info()
        if pool["user_api"] == "blas"
    ]
    return info


# -- command line ----------------------------------------------------------------------


def configure_parser(parser):
    """Add the ``bench`` options to ``parser`` (an argparse parser or subparser)."""
    parser.add_argument("--json", metavar="PATH", help="also write every row as JSON to PATH")
    parser.add_argument(
        "--quick", action="store_true", help="one size per case and short runs (CI smoke test)"
    )
    parser.add_argument(
        "--crossover",
        action="store_true",
        help="time serial vs parallel kernel builds over sizes 1K..4M and report crossovers",
    )
    parser.add_argument(
        "--filter",
        metavar="SUBSTR",
        default="",
        help="only rows whose 'section case dtype' (or kernel name) contains SUBSTR",
    )
    return parser


def available_frameworks():
    """{name: step builder} of the other frameworks that are installed."""
    return {
        name: make_step
        for name, make_step in OTHER_FRAMEWORKS.items()
        if importlib.util.find_spec(name) is not None
    }


def main(args):
    """Run the benchmark described by parsed ``args``; print tables; return 0."""
    settings = QUICK if args.quick else FULL
    info = machine_info()
    print(
        f"fastbp bench: median of {settings.min_repeat}..{settings.repeat} samples of "
        f">= {fmt_time(settings.min_time)} each"
        f"; {info['cpu_count']} CPUs, {info['numba_threads']} Numba threads, "
        f"load average {info['loadavg_start'][0]:.2f}",
        *(f"; BLAS: {blas}" for blas in info.get("blas", ())),
        sep="",
        flush=True,
    )
    result = {"machine": info, "settings": dataclasses.asdict(settings)}
    if args.crossover:
        result["crossover"] = crossover_rows(settings, args.filter)
        print(crossover_table(result["crossover"]))
    else:
        frameworks = available_frameworks()
        result["rows"] = []
        selected = (case for case in cases(settings, frameworks) if args.filter in case.label)
        for section, group in itertools.groupby(selected, key=lambda case: case.section):
            rows = [run_case(case, settings) for case in group]
            result["rows"] += rows
            print("\n" + section_table(section, rows, frameworks), flush=True)
    info["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {info['loadavg_end'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    parser = configure_parser(argparse.ArgumentParser(prog="fastbp bench", description=__doc__))
    raise SystemExit(main(parser.parse_args()))
