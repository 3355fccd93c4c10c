"""Scenarios for tests/test_concurrency.py, each run in its own interpreter.

    python concurrency_worker.py results OUT.npz   # parallel-path results, repeated
    python concurrency_worker.py pool METHOD        # a multiprocessing pool (fork/spawn/...)
    python concurrency_worker.py threads            # Python threads calling layers at once

A scenario prints "OK ..." and exits 0 when every check passes; any failure raises (exit
1), and a crash or hang shows up as the signal or timeout the test sees.
"""

import multiprocessing
import os
import sys
import tempfile
import threading

import numba
import numpy as np

from fastbp import layers
from fastbp.kernels import CROSSOVER, dispatch, force_path, relu_forward
from fastbp.kernels.dispatch import NEVER

COLS = 256
# Enough rows that every kernel's first argument is above its crossover: the default
# dispatch would choose the parallel build for all of them (but those never parallel).
ROWS = 2 * max(v for v in CROSSOVER.values() if v != NEVER) // COLS
DTYPES = (np.float32, np.float64)


def compute(seed, dtype):
    """Forward and backward of every kernel-backed layer on seeded (ROWS, COLS) data."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((ROWS, COLS)).astype(dtype)
    W = (rng.standard_normal((COLS, COLS)) / 16).astype(dtype)
    b = rng.standard_normal(COLS).astype(dtype)
    t = rng.integers(0, COLS, size=ROWS)
    affine = layers.Affine(W, b)
    results = {}
    for name, layer, args in [
        ("relu", layers.Relu(), (x,)),
        ("sigmoid", layers.Sigmoid(), (x,)),
        ("affine", affine, (x,)),
        ("softmax", layers.SoftmaxWithLoss(), (x, t)),
    ]:
        results[f"{name}_out"] = np.asarray(layer.forward(*args))
        results[f"{name}_dx"] = layer.backward(*([] if name == "softmax" else [x]))
    results["affine_dW"], results["affine_db"] = affine.dW, affine.db
    return results


def compute_all(seed, dtypes=DTYPES):
    return {f"{np.dtype(d).name}/{k}": v for d in dtypes for k, v in compute(seed, d).items()}


def assert_identical(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert np.array_equal(a[key], b[key], equal_nan=True), f"{what}: {key} differs"


def assert_close(a, b, what):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        rtol = 1e-5 if a[key].dtype == np.float32 else 1e-12
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=rtol, err_msg=what)


def warm():
    """Compile (or load from the cache) both builds before any process starts, so that
    children neither compile nor write the cache at the same time."""
    for path in ("serial", "parallel"):
        with force_path(path):
            compute_all(0, (np.float64,))


def results(out):
    with force_path("parallel"):
        first = compute_all(1)
        assert_identical(first, compute_all(1), "repeated run")
    np.savez(out, **first)
    print(f"OK threads={numba.get_num_threads()} layer={numba.threading_layer()}")


def child(task):
    """Runs in a pool worker: the results of ``compute_all`` on one path, and the path
    that a large ReLU would actually run on there."""
    path, seed = task
    if path == "default":
        return run_float64(seed), relu_forward.pick(ROWS * COLS) is relu_forward.parallel
    with force_path(path):
        return run_float64(seed), relu_forward.pick(ROWS * COLS) is relu_forward.parallel


def checked_child(task):
    """``child`` in a pool worker, its results compared there with the parent's (from
    the .npz file ``task[2]``: hundreds of MB would otherwise go back through a pipe);
    returns the path flag."""
    path, seed, expected_file = task
    got, parallel = child((path, seed))
    with np.load(expected_file) as expected:
        assert_close(got, dict(expected), f"{multiprocessing.current_process().name}")
    return parallel


def run_float64(seed):
    return compute_all(seed, (np.float64,))


def pool(method):
    warm()
    with force_path("parallel"):
        expected = run_float64(2)  # the parent has run parallel kernels before the pool
    layer = numba.threading_layer()
    context = multiprocessing.get_context(method)
    with tempfile.TemporaryDirectory() as folder:
        expected_file = os.path.join(folder, "expected.npz")
        np.savez(expected_file, **expected)
        tasks = [(path, 2, expected_file) for path in ("default", "parallel")]
        with context.Pool(2) as workers:
            ran_parallel = workers.map_async(checked_child, tasks).get(timeout=60)
    if method == "fork":  # forked children must be on the serial build, even when forced
        assert ran_parallel == [False, False], ran_parallel
    else:
        assert ran_parallel == [True, True], ran_parallel
    print(f"OK method={method} layer={layer} child_parallel={ran_parallel}")


def threads():
    tasks = [("parallel", 3), ("parallel", 4), ("serial", 5), ("default", 6)]
    expected = {task: child(task)[0] for task in tasks}  # one at a time, this thread
    failures = []
    start = threading.Barrier(len(tasks))

    def run(task):
        try:
            start.wait()
            for _ in range(2):
                assert_close(child(task)[0], expected[task], f"thread {task}")
        except BaseException as error:  # reported by the main thread
            failures.append((task, repr(error)))

    workers = [threading.Thread(target=run, args=(task,)) for task in tasks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert not worker.is_alive(), "a thread hung"
    assert not failures, failures
    assert dispatch._forced.get() is None  # no thread's force_path leaked into another
    print(f"OK threads={len(tasks)} layer={numba.threading_layer()}")


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    {"results": results, "pool": pool, "threads": threads}[scenario](*args)
