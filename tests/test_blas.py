"""``fastbp.kernels.blas.gemm``: NumPy's own BLAS from compiled code.

The compiled ``gemm`` (every transpose combination, both dtypes, NaN-filled outputs) and
the ``np.dot`` fallback bound where NumPy has no ILP64 CBLAS are compared with NumPy's
``@``; a fresh interpreter loads the BLAS-calling kernels from Numba's cache. (Numba
itself loads SciPy's OpenBLAS too, but with gemm bound to NumPy's the kernels never call
it, so its worker threads stay asleep.)
"""

import ctypes
import json
import os
import subprocess
import sys

import llvmlite.binding as ll
import numpy as np
import pytest
import threadpoolctl
from numba import njit, types

from fastbp.kernels import blas

TRANSPOSES = [(False, False), (False, True), (True, False), (True, True)]
# (M, N, K): a row, odd sizes, an empty inner dimension (the product is zeros).
SHAPES = [(1, 50, 784), (7, 11, 13), (3, 4, 0)]
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


@njit
def compiled_gemm(a, b, out, trans_a, trans_b):
    blas.gemm(a, b, out, trans_a, trans_b)


def operands(rng, dtype, shape, trans_a, trans_b):
    """a, b stored so that op(a) is M x K and op(b) is K x N; their product by NumPy."""
    m, n, k = shape
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, (a.T if trans_a else a) @ (b.T if trans_b else b)


def assert_product(actual, a, b, trans_a, trans_b, expected):
    """Equal to rounding: error within RTOL of |op(a)| @ |op(b)| (sums that cancel)."""
    scale = np.abs(a.T if trans_a else a) @ np.abs(b.T if trans_b else b)
    assert np.all(np.abs(actual - expected) <= RTOL[a.dtype.type] * scale)


def test_numpy_openblas64_is_bound():
    """With NumPy's ILP64 OpenBLAS wheels, compiled code calls that very library's dgemm
    and sgemm (no silent fallback)."""
    config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    if "USE64BITINT" not in config.get("openblas configuration", ""):
        pytest.skip(f"NumPy's BLAS is {config['name']}, not ILP64 OpenBLAS")
    assert blas.NUMPY_BLAS
    paths = [lib["filepath"] for lib in threadpoolctl.threadpool_info()]
    library = ctypes.CDLL(next(path for path in paths if "numpy" in path and "openblas" in path))
    for prefix in "ds":
        name = next(n for n in blas.NUMPY_NAMES if hasattr(library, n.format(prefix)))
        expected = ctypes.cast(getattr(library, name.format(prefix)), ctypes.c_void_p).value
        assert ll.address_of_symbol(blas.SYMBOL.format(prefix)) == expected


def test_private_single_threaded_openblas_is_bound():
    """The own-thread GEMMs run on a second OpenBLAS instance with one thread, so Numba's
    threads never share a BLAS thread pool (and NumPy's setting is left alone)."""
    assert blas.PARALLEL_BLAS
    private = [
        lib
        for lib in threadpoolctl.threadpool_info()
        if "/scipy_openblas64/lib/" in lib["filepath"]
    ]
    assert [lib["num_threads"] for lib in private] == [1]


@njit
def compiled_own_gemm(a, b, out, trans_a, trans_b):
    blas.gemm(a, b, out, trans_a, trans_b, True)


@pytest.mark.parametrize("own_thread", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(("trans_a", "trans_b"), TRANSPOSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_numpy(rng, dtype, trans_a, trans_b, shape, own_thread):
    a, b, expected = operands(rng, dtype, shape, trans_a, trans_b)
    before = a.copy(), b.copy()
    out = np.full(expected.shape, np.nan, dtype)
    (compiled_own_gemm if own_thread else compiled_gemm)(a, b, out, trans_a, trans_b)
    assert_product(out, a, b, trans_a, trans_b, expected)
    np.testing.assert_array_equal(a, before[0])
    np.testing.assert_array_equal(b, before[1])


def test_gemm_rejects_fortran_ordered_arrays():
    a = np.ones((4, 4))
    with pytest.raises(Exception, match="unit stride"):
        compiled_gemm(a.T, a, np.empty((4, 4)), False, False)


@njit
def compiled_block_gemm(a, b, out, lo, hi, trans_a):
    """out[lo:hi] = op(a[:, lo:hi]) @ b: a block of columns of a (row stride > width)."""
    blas.gemm(a[:, lo:hi], b, out[lo:hi], trans_a, False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_on_column_blocks_of_a_wider_array(rng, dtype):
    """The fused step's dW1 blocks: x[:, lo:hi].T @ dz1 reads x with its full row length."""
    x = rng.standard_normal((7, 13)).astype(dtype)
    dz = rng.standard_normal((7, 5)).astype(dtype)
    out = np.full((13, 5), np.nan, dtype)
    for lo, hi in ((0, 6), (6, 13), (13, 13)):
        compiled_block_gemm(x, dz, out, lo, hi, True)
    assert_product(out, x, dz, True, False, x.T @ dz)


@pytest.mark.parametrize(("trans_a", "trans_b"), TRANSPOSES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fallback_matches_numpy(rng, dtype, trans_a, trans_b):
    """The np.dot fallback, called through its CBLAS signature like the kernels call it."""
    real = ctypes.c_double if dtype == np.float64 else ctypes.c_float
    ptr, i32, i64 = ctypes.POINTER(real), ctypes.c_int32, ctypes.c_int64
    numba_type = types.float64 if dtype == np.float64 else types.float32
    fallback = ctypes.CFUNCTYPE(
        None, i32, i32, i32, i64, i64, i64, real, ptr, i64, ptr, i64, real, ptr, i64
    )(blas._fallback(numba_type))
    m, n, k = SHAPES[1]
    a, b, expected = operands(rng, dtype, (m, n, k), trans_a, trans_b)
    for beta in (0.0, 0.5):  # beta = 0 ignores the NaNs, beta = 0.5 adds half of c
        c = np.full((m, n), np.nan if beta == 0 else 2.0, dtype)
        flags = [blas.TRANS if t else blas.NO_TRANS for t in (trans_a, trans_b)]
        fallback(
            blas.ROW_MAJOR, *flags, m, n, k, 2.0,
            a.ctypes.data_as(ptr), a.shape[1], b.ctypes.data_as(ptr), b.shape[1],
            beta, c.ctypes.data_as(ptr), n,
        )  # fmt: skip
        assert_product(c - (1.0 if beta else 0.0), a, b, trans_a, trans_b, 2 * expected)


WORKER = """
import json, sys, numpy as np
from numba import njit
from fastbp.kernels import affine_backward, affine_forward
x, W, b, dout = np.ones((3, 4)), np.ones((4, 2)), np.ones(2), np.ones((3, 2))
out, dx, dW, db = np.empty((3, 2)), np.empty((3, 4)), np.empty((4, 2)), np.empty(2)
affine_forward.serial(out, x, W, b, None, 0.5, np.empty((1, 4), np.int64), False)
nz = np.empty(12, np.int64)
affine_backward.serial(dout, x, None, W, dx, dW, db, True, -1, nz, np.empty((1, 2)), False)
scipy_linalg = "scipy.linalg" in sys.modules
dot = njit(lambda a, b: np.dot(a, b))(x, W)  # Numba's own np.dot: it imports SciPy's BLAS now
print(json.dumps({
    "scipy_linalg": scipy_linalg, "dot": dot.tolist(),
    "misses": sum(len(k.serial.stats.cache_misses) for k in (affine_forward, affine_backward)),
    "out": out.tolist(), "dx": dx.tolist(), "dW": dW.tolist(),
}))
"""


def run_worker(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cached_kernels_load_and_run(tmp_path):
    """A second fresh interpreter loads the affine kernels from the cache (the BLAS symbol
    resolves at load time) and gets the same results. Neither imports scipy.linalg for
    them (``blas._numba_targets_without_scipy``); Numba's compiled np.dot still works."""
    first, second = run_worker(tmp_path), run_worker(tmp_path)
    assert first["misses"] == 2 and second["misses"] == 0
    for run in (first, second):
        assert not run["scipy_linalg"]
        assert run["dot"] == [[4.0, 4.0]] * 3
        assert run["out"] == [[5.0, 5.0]] * 3
        assert run["dx"] == [[2.0] * 4] * 3
        assert run["dW"] == [[3.0, 3.0]] * 4
