"""The kernels' Python bodies: a subset of the suite rerun with ``NUMBA_DISABLE_JIT=1``.

With the JIT disabled, ``njit`` returns the plain function and ``prange`` is ``range``, so
both builds of every twin are the kernel's own Python body, and the tests below exercise
every kernel module (affine, relu, sigmoid, softmax_ce and fast_exp, labels,
optimizers, two_layer_step) as Python, where coverage can see it::

    NUMBA_DISABLE_JIT=1 python -m pytest -k "<KEEP>" <SUBSET>

The subset leaves out what only makes sense compiled or is too slow interpreted: the
large sizes, checks of Numba's compile options, the training runs, the subprocess tests
and fast_exp's accuracy bound (which assumes the compiled build's fused multiply-adds).
The outer test is marked ``nojit``: ``-m "not nojit"`` deselects it.
"""

import os
import subprocess
import sys
import types
from pathlib import Path

import numba
import numpy as np
import pytest

from fastbp import kernels
from fastbp.kernels import optimizers, two_layer_step
from fastbp.kernels.dispatch import Twin

ROOT = Path(__file__).resolve().parent.parent
SUBSET = [
    "tests/test_nojit.py",
    "tests/test_bad_input.py",
    "tests/test_numerics.py",
    "tests/test_kernels.py",
    "tests/test_layers.py",
    "tests/test_properties.py",
    "tests/test_nets.py",
    "tests/test_optimizers.py",
    "tests/test_fused.py",
]
KEEP = "not large and not dispatch_picks_the_build_by_size and not trains_to"


@pytest.mark.nojit
@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="the outer run starts the JIT-less one")
def test_subset_passes_without_jit():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", KEEP] + SUBSET,
        cwd=ROOT,
        env={**os.environ, "NUMBA_DISABLE_JIT": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    # Only this test skips in there: the JIT-less checks below must have run.
    assert " passed" in summary and " 1 skipped" in summary, summary


def _twins():
    modules = (kernels, optimizers, two_layer_step)
    return {name: k for m in modules for name, k in vars(m).items() if isinstance(k, Twin)}


@pytest.mark.skipif(not numba.config.DISABLE_JIT, reason="checks the JIT-less builds")
def test_both_builds_are_the_python_bodies():
    twins = _twins()
    assert len(twins) >= 12
    for name, twin in twins.items():
        for build in (twin.serial, twin.parallel):
            assert isinstance(build, types.FunctionType), name
            assert build.__code__ is twin.serial.__code__, name


@pytest.mark.skipif(not numba.config.DISABLE_JIT, reason="checks the JIT-less builds")
@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_forced_builds_run_without_jit(path):
    x = np.array([-1.0, 0.0, np.nan, 2.0])
    out, mask = np.empty_like(x), np.empty(x.shape, bool)
    with kernels.force_path(path):
        kernels.relu_forward(x, out, mask)
    np.testing.assert_array_equal(out, [0.0, 0.0, np.nan, 2.0])
    np.testing.assert_array_equal(mask, [True, True, False, False])
