"""One thread pool at a time: fastbp's calls never wake NumPy's BLAS worker threads.

NumPy's OpenBLAS workers spin for about 0.1 s after each call that woke them, and
fastbp's Numba threads then share the cores with them: the next kernels ran up to 5x
slower (measured: a weight-decay ``np.dot`` in ``MultiLayerNet.loss`` made its gradient
4x slower than the book's). So with several Numba threads, every product fastbp computes
runs on its private single-threaded BLAS (``fastbp.kernels.blas``) or in its own loops.
The worker (``blas_pool_worker.py``, a fresh interpreter) reads the CPU time of NumPy's
BLAS threads from /proc while the nets, layers and an optimizer run, and, as a control
that the reading sees them at all, while NumPy's own GEMMs run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("blas_pool_worker.py")

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task") or (os.cpu_count() or 1) < 2,
    reason="needs Linux's per-thread /proc and at least 2 CPUs",
)


def test_fastbp_leaves_numpys_blas_threads_asleep():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    if found["workers"] == 0 or found["numpy"] < 0.2 or found["numba_threads"] < 2:
        pytest.skip(f"NumPy's BLAS threads are not measurable here: {found}")
    # Busy-waiting workers run all the time (about 1 CPU second per wall second).
    assert found["fastbp"] < 0.05, found
