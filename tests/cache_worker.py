"""Run by tests/test_kernel_cache.py in a fresh interpreter (its own NUMBA_CACHE_DIR).

    python cache_worker.py

Calls the serial and then the parallel build of two kernels (relu_forward, and
softmax_ce_forward, which calls a separately cached helper) and prints, as JSON, per
build: cache hits and misses of this process, its ``parallel`` target option, whether
Numba's threading layer had started by then (only a parallel region starts it) and the
kernel's outputs.
"""

import json

import numba
import numpy as np

from fastbp import kernels


def threads_started():
    try:
        numba.threading_layer()
    except ValueError:  # raised until the first parallel region runs
        return False
    return True


def data():
    """Logits x[4, 3] and labels t[4] (the test computes the expected outputs from them)."""
    return np.linspace(-3, 3, 12).reshape(4, 3), np.array([0, 2, 1, 2])


def main():
    x, t = data()
    # name: (arguments, position of the output reported)
    calls = {
        "relu_forward": (lambda: (x.ravel(), np.empty(12), np.empty(12, np.bool_)), 1),
        "softmax_ce_forward": (lambda: (x, t, np.empty((4, 3))), 2),
    }
    report = {}
    for name, (make_args, out) in calls.items():
        for build_name in ("serial", "parallel"):
            build = getattr(getattr(kernels, name), build_name)
            args = make_args()
            value = build(*args)
            report[f"{name}.{build_name}"] = {
                "hits": len(build.stats.cache_hits),
                "misses": len(build.stats.cache_misses),
                "parallel": bool(build.targetoptions.get("parallel", False)),
                "threads_started": threads_started(),
                "out": args[out].tolist(),
                "value": value,
            }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
