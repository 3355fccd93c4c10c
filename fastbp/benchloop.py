"""``fastbp bench --section userloop``: the book's ch05 loop, each variant in fresh processes.

A user runs either the book's classes or fastbp's in a process, not both, so each variant
runs in processes of its own (this module run as a program, in the environment ``fastbp
bench`` runs in), in an order that rotates round by round, so that every variant meets
the same machine. Measured in one process instead, the book's large evaluation GEMMs were
often stalled by memory the other variants had just released (on this VM the book's
accuracy phase took several times as long as in a process of its own), which flattered
fastbp.

Each process first runs ``WARM_EPOCHS`` untimed epochs (compilation, caches), then times
``rounds`` rounds of ``block`` iterations phase by phase and one accuracy (all training and
test images) per round. The variants are ``bookloop.USER_LOOP_VARIANTS`` and
"book-after": the book's classes timed after its warm epochs ran fastbp (the
``fastbp.nets`` and the ``fastbp.layers`` variants): the user's own NumPy code after
fastbp ran in the process, against "book", where fastbp's kernels (and Numba) never load
(both checked).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from fastbp import bookloop

VARIANTS = (*bookloop.USER_LOOP_VARIANTS, "book-after")
MEASURES = (*bookloop.USER_LOOP_PHASES, "iteration", "accuracy")
WARM_EPOCHS = {
    "book": ("book", "book"),
    "book+layers": ("book+layers", "book+layers"),
    "nets": ("nets", "nets"),
    "book-after": ("nets", "book+layers"),
}


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def child(variant, rounds, block):
    """One process of ``variant``: {measure: median seconds over its samples,
    "numba_loaded": whether Numba was imported}."""
    per_epoch = bookloop.iterations_per_epoch()
    measured = "book" if variant == "book-after" else variant
    loops = {  # built in a fixed order: each net reseeds np.random, which draws the batches
        name: bookloop.user_loop(bookloop.user_loop_net(name))
        for name in dict.fromkeys((*WARM_EPOCHS[variant], measured))
    }
    for name in WARM_EPOCHS[variant]:
        phases, accuracy = loops[name]
        for _ in range(per_epoch):
            for phase in phases.values():
                phase()
        accuracy()
    phases, accuracy = loops[measured]
    times = {name: [] for name in MEASURES}
    for _ in range(rounds):
        for _ in range(block):
            total = 0.0
            for name, phase in phases.items():
                elapsed = _timed(phase)
                times[name].append(elapsed)
                total += elapsed
            times["iteration"].append(total)
        times["accuracy"].append(_timed(accuracy))
    result = {name: statistics.median(t) for name, t in times.items()}
    result["numba_loaded"] = "numba" in sys.modules
    return result


def bench(processes, rounds, block):
    """``processes`` rounds of one process per variant (the order rotating); a row per
    variant with the medians over its processes of their medians, per_iteration =
    iteration + accuracy / iterations per epoch, and book / variant ratios: the median
    over the rounds of each round's ratio, so that a slower spell of the machine, which
    lasts tens of seconds on this VM, weighs on both sides of a ratio alike."""
    runs = {variant: [] for variant in VARIANTS}
    for round_number in range(processes):
        shift = round_number % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            runs[variant].append(_run_child(variant, rounds, block))
    per_epoch = bookloop.iterations_per_epoch()
    for found in runs.values():
        for run in found:
            run["per_iteration"] = run["iteration"] + run["accuracy"] / per_epoch
    rows = []
    for variant, found in runs.items():
        row = {"section": "userloop", "case": variant, "dtype": "x:f32 W:f64"}
        row.update({name: statistics.median(r[name] for r in found) for name in MEASURES})
        row["per_iteration"] = row["iteration"] + row["accuracy"] / per_epoch
        each = [r["per_iteration"] for r in found]
        row["per_iteration_range"] = [min(each), max(each)]  # over the processes
        row.update(processes=len(found), iterations=rounds * block, accuracies=rounds)
        row["iterations_per_epoch"] = per_epoch
        pairs = list(zip(runs["book"], found, strict=True))  # (book, variant) by round
        row.update({f"{name}_speedup": _median_ratio(pairs, name) for name in MEASURES})
        row["speedup"] = _median_ratio(pairs, "per_iteration")
        rows.append(row)
    return rows


def _median_ratio(pairs, name):
    """The median over (book run, variant run) pairs of book[name] / variant[name]."""
    return statistics.median(book[name] / run[name] for book, run in pairs)


def _run_child(variant, rounds, block):
    command = [sys.executable, "-m", "fastbp.benchloop", variant, str(rounds), str(block)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    run = json.loads(done.stdout.strip().splitlines()[-1])
    if run["numba_loaded"] != (variant != "book"):
        raise RuntimeError(f"a {variant!r} process had Numba loaded: {run['numba_loaded']}")
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.benchloop",
        description="One process of fastbp bench's userloop section (prints one JSON line).",
    )
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("rounds", type=int)
    parser.add_argument("block", type=int)
    args = parser.parse_args(argv)
    print(json.dumps(child(args.variant, args.rounds, args.block)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
