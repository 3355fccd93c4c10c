"""cache=True works for both builds of a twin, and they never collide in the cache.

``cache_worker.py`` runs twice in fresh interpreters that share an empty NUMBA_CACHE_DIR:
the first run compiles and writes every build, the second loads every build from the
cache, and the loaded parallel build still runs a parallel region and gives right results.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import cache_worker
import numpy as np
import pytest

from fastbp import reference as ref

WORKER = Path(cache_worker.__file__)
BUILDS = [
    f"{kernel}.{build}"
    for kernel in ("relu_forward", "softmax_ce_forward")
    for build in ("serial", "parallel")
]


def run_worker(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, str(WORKER)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(first run, second run, cache directory)."""
    cache_dir = tmp_path_factory.mktemp("numba-cache")
    return run_worker(cache_dir), run_worker(cache_dir), cache_dir


def test_first_run_compiles_and_second_run_loads_every_build(runs):
    first, second, _ = runs
    for build in BUILDS:
        assert (first[build]["hits"], first[build]["misses"]) == (0, 1), build
        assert (second[build]["hits"], second[build]["misses"]) == (1, 0), build


def test_serial_and_parallel_builds_are_cached_separately(runs):
    _, second, cache_dir = runs
    for kernel in ("relu_forward", "softmax_ce_forward"):
        for build, parallel in (("serial", False), ("parallel", True)):
            assert second[f"{kernel}.{build}"]["parallel"] is parallel
            assert len(list(cache_dir.rglob(f"*.{kernel}__{build}-*.nbi"))) == 1


def test_cached_parallel_build_runs_in_parallel_with_right_results(runs):
    _, second, _ = runs
    assert second["relu_forward.serial"]["threads_started"] is False
    assert second["relu_forward.parallel"]["threads_started"] is True
    x, t = cache_worker.data()
    loss, y = ref.softmax_ce_forward(x, t)
    for build in ("serial", "parallel"):
        np.testing.assert_array_equal(
            second[f"relu_forward.{build}"]["out"], ref.relu_forward(x.ravel())[0]
        )
        result = second[f"softmax_ce_forward.{build}"]
        np.testing.assert_allclose(result["out"], y, rtol=1e-12)
        assert result["value"] == pytest.approx(loss, rel=1e-12)
