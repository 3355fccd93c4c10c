"""Threads and processes: thread-count independence, determinism, fork/spawn, two threads.

Anything that could crash or hang the interpreter (a forked child starting an OpenMP
region, concurrent parallel launches) runs in a subprocess (``concurrency_worker.py``)
under a timeout; the test asserts on its exit code and output.
"""

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastbp.kernels import force_path, relu_forward

WORKER = Path(__file__).with_name("concurrency_worker.py")
TIMEOUT = 300  # seconds; generous because a cold Numba cache compiles every kernel


def run_worker(*args, threads=None):
    """Run a worker scenario; returns its stdout after checking it exited 0 with "OK"."""
    env = dict(os.environ)
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    done = subprocess.run(
        [sys.executable, str(WORKER), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.startswith("OK"), done.stdout
    return done.stdout


def test_one_thread_and_two_threads_agree(tmp_path):
    """Parallel-path results with NUMBA_NUM_THREADS=1 and =2 agree within rounding (the
    worker also checks that repeated runs in one process are bit-identical)."""
    results = {}
    for threads in (1, 2):
        out = tmp_path / f"threads{threads}.npz"
        assert f"threads={threads}" in run_worker("results", str(out), threads=threads)
        with np.load(out) as data:
            results[threads] = dict(data)
    assert results[1].keys() == results[2].keys()
    for key, one in results[1].items():
        # Column sums over thousands of rows, added up in another order with 2 threads.
        rtol = 1e-4 if one.dtype == np.float32 else 1e-12
        np.testing.assert_allclose(results[2][key], one, rtol=rtol, atol=rtol, err_msg=key)


FORK_WHILE_CHOOSING = """
import os, signal, time
from fastbp.kernels import dispatch

with dispatch._sparse_lock:  # held, as by another thread timing a shape, at the fork
    pid = os.fork()
    if pid == 0:  # the child: time a new shape, then leave at once
        os._exit(0 if dispatch.choose_sparse(("child",), 1, lambda d, rows: False) == -1.0 else 1)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        raise SystemExit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, signal.SIGKILL)
raise SystemExit("the forked child hung on the sparse choices' lock")
"""


def test_a_child_forked_while_the_sparse_choice_is_being_timed_can_time_its_own():
    """The lock of the sparse choices held at the fork (by another thread of the parent)
    is not the child's: its first call of a new shape does not hang. (In a fresh
    interpreter: this one may hold other libraries' threads.)"""
    done = subprocess.run(
        [sys.executable, "-c", FORK_WHILE_CHOOSING], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_after_parallel_work(method):
    """A multiprocessing pool started after the parent ran parallel kernels works; forked
    children run serial kernels, even under force_path("parallel"), instead of aborting;
    spawn and forkserver children start clean and may run parallel kernels."""
    assert f"method={method}" in run_worker("pool", method, threads=2)


def test_python_threads_do_not_interfere():
    """Four Python threads (parallel, parallel, serial, size-chosen) calling the layers at
    once each get the results they get alone."""
    run_worker("threads", threads=2)


def test_force_path_is_per_thread():
    """force_path in one thread neither affects nor leaks into another thread."""
    entered, exited = threading.Barrier(2), threading.Barrier(2)
    seen = {}

    def body(path):
        with force_path(path):
            entered.wait()  # both threads are inside their blocks now
            seen[path] = relu_forward.pick(1) is getattr(relu_forward, path)
            exited.wait()

    threads = [threading.Thread(target=body, args=(p,)) for p in ("serial", "parallel")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert seen == {"serial": True, "parallel": True}
    assert relu_forward.pick(1) is relu_forward.serial  # nothing leaked: small -> serial
    with force_path("parallel"):
        assert relu_forward.pick(1) is relu_forward.parallel
