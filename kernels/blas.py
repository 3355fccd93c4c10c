"""GEMM from compiled code: NumPy's own BLAS, or a private single-threaded OpenBLAS.

Inside ``@njit`` code Numba's ``np.dot`` calls SciPy's bundled OpenBLAS, while NumPy
calls its own (a second copy with its own worker threads). A loop mixing fastbp and
NumPy then has two OpenBLAS thread pools spinning against each other for the same
cores (measured on 2 cores: the book's NumPy train step 0.7 -> 2 ms). ``gemm`` calls the
CBLAS ``dgemm``/``sgemm`` of the library NumPy itself links (ILP64 OpenBLAS in the NumPy
wheels), found at import through NumPy's extension module, with NumPy's thread count.

``gemm(..., own_thread=True)`` is for Numba threads that each multiply their own block
of rows inside a parallel loop: it calls a private instance of OpenBLAS (the
``scipy-openblas64`` package, loaded under its own name with one thread), so no BLAS
thread pool competes with Numba's threads, and the user's NumPy keeps its own setting.
(Switching NumPy's OpenBLAS to one thread per call instead was measured to cost ~300 us
per switch: OpenBLAS stops and restarts its threads.) ``PARALLEL_BLAS`` says whether the
private instance loaded; without it, GEMM kernels keep to one block.

The compiled code calls fixed symbols (``fastbp_cblas_dgemm64`` and the like), bound at
import (``llvmlite.binding.add_symbol``), so ``cache=True`` kernels load in a fresh
process without recompiling. Where a library is missing (NumPy with MKL or Accelerate,
no private OpenBLAS), a symbol is bound to a compiled fallback with the same signature
that calls ``np.dot`` (SciPy's BLAS).
"""

import ctypes
import importlib.util
import os
import sys

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload
from numba.np import linalg as _numba_linalg
from numba.np.ufunc import parallel as _numba_parallel

from fastbp.kernels.dispatch import FASTMATH


def _numba_targets_without_scipy():
    """Import ``numba.np.arraymath`` (which Numba imports on its first compile or cache
    load) without the import of ``scipy.linalg`` it makes to learn whether ``np.dot`` in
    compiled code will have a BLAS: 0.3-0.4 s of every process's first kernel call, for a
    library fastbp's kernels do not call (they call the GEMMs bound below). Here the
    answer is whether SciPy is installed; Numba imports it when it compiles code that
    needs it (``ensure_blas``, restored after). No-op once Numba has loaded its targets."""
    if "numba.np.arraymath" in sys.modules:
        return
    ensure_blas = _numba_linalg.ensure_blas

    def scipy_installed():
        if importlib.util.find_spec("scipy") is None:
            raise ImportError("scipy 0.16+ is required for linear algebra")

    _numba_linalg.ensure_blas = scipy_installed
    try:
        from numba.np import arraymath
    finally:
        _numba_linalg.ensure_blas = ensure_blas
    arraymath.ensure_blas = ensure_blas


_numba_targets_without_scipy()

# CBLAS enums (C ints) and the names NumPy's ILP64 OpenBLAS exports, newest first.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
NUMPY_NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")
SYMBOL = "fastbp_cblas_{}gemm64"
OWN_THREAD_SYMBOL = "fastbp_own_thread_cblas_{}gemm64"

# void gemm(int order, int ta, int tb, i64 m, i64 n, i64 k, T alpha, T *a, i64 lda,
#           T *b, i64 ldb, T beta, T *c, i64 ldc)
_INT, _LONG = types.int32, types.int64


def _signature(t):
    ptr = types.CPointer(t)
    return types.void(
        _INT, _INT, _INT, _LONG, _LONG, _LONG, t, ptr, _LONG, ptr, _LONG, t, ptr, _LONG
    )


def _numpy_blas():
    """NumPy's extension module as a library: dlsym on it searches the libraries it
    links, i.e. NumPy's BLAS."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as umath
    return ctypes.CDLL(umath.__file__)


def _private_blas():
    """A private single-threaded instance of OpenBLAS (``scipy-openblas64``), or None.

    It is loaded under its own file name, so it shares no state or threads with NumPy's
    copy; OPENBLAS_NUM_THREADS=1 while it loads keeps it from starting a thread pool."""
    try:
        import scipy_openblas64
    except ImportError:
        return None
    path = os.path.join(scipy_openblas64.get_lib_dir(), f"lib{scipy_openblas64.get_library()}.so")
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
    except OSError:
        return None
    finally:
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    setter = getattr(lib, "scipy_openblas_set_num_threads64_", None)
    if setter is None:
        return None
    setter.argtypes = [ctypes.c_int]
    setter(1)
    return lib


def _function(lib, prefix):
    """Address of the ILP64 CBLAS ``{prefix}gemm`` in ``lib``, or None."""
    if lib is None:
        return None
    for name in NUMPY_NAMES:
        try:
            return ctypes.cast(getattr(lib, name.format(prefix)), ctypes.c_void_p).value
        except AttributeError:
            continue
    return None


def _fallback(t):
    """Address of a compiled function with the CBLAS signature above that computes with
    ``np.dot``: row-major, each leading dimension the row length (all ``gemm`` passes)."""

    @cfunc(_signature(t), cache=True)
    def fallback_gemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
        A = carray(a, (k, m) if ta == TRANS else (m, k))
        B = carray(b, (n, k) if tb == TRANS else (k, n))
        C = carray(c, (m, n))
        if ta == TRANS:  # four calls: each operand keeps one layout (no copies)
            prod = np.dot(A.T, B.T) if tb == TRANS else np.dot(A.T, B)
        else:
            prod = np.dot(A, B.T) if tb == TRANS else np.dot(A, B)
        prod *= alpha
        if beta == 0:  # CBLAS: C is not read
            C[:] = prod
        else:
            C[:] = prod + beta * C

    return fallback_gemm.address


def _bind(lib, symbol):
    """Bind ``symbol`` (both dtypes) to ``lib``'s GEMMs; returns True where they are."""
    found = True
    for prefix, t in (("d", types.float64), ("s", types.float32)):
        address = _function(lib, prefix)
        if address is None:
            found = False
            address = _fallback(t)
        ll.add_symbol(symbol.format(prefix), address)
    return found


NUMPY_BLAS = _bind(_numpy_blas(), SYMBOL)
PARALLEL_BLAS = _bind(_private_blas(), OWN_THREAD_SYMBOL)


@intrinsic
def _call(typingctx, a, b, out, ta, tb, m, n, k, own):
    """CBLAS row-major ``out[m, n] = op(a) @ op(b)``, inner size k (ld = row strides),
    by the private single-threaded OpenBLAS if ``own`` else by NumPy's."""
    dtype = out.dtype
    sig = types.void(a, b, out, ta, tb, m, n, k, own)

    def codegen(context, builder, signature, args):
        a_v, b_v, out_v, ta_v, tb_v, m_v, n_v, k_v, own_v = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = context.get_value_type(dtype)
        c_args = [context.get_value_type(arg) for arg in _signature(dtype).args]
        fnty = ir.FunctionType(ir.VoidType(), c_args)
        prefix = "d" if dtype == types.float64 else "s"
        numpy_fn, own_fn = (
            cgutils.get_or_insert_function(builder.module, fnty, symbol.format(prefix))
            for symbol in (SYMBOL, OWN_THREAD_SYMBOL)
        )
        own_flag = context.cast(builder, own_v, own, types.boolean)
        fn = builder.select(own_flag, own_fn, numpy_fn)
        arrays = [
            context.make_array(ty)(context, builder, v)
            for ty, v in ((a, a_v), (b, b_v), (out, out_v))
        ]

        def ld(arr, ty):  # elements from one row to the next, at least 1 (BLAS rule)
            if ty.layout == "C":
                step = builder.extract_value(arr.shape, 1)
            else:  # rows of a wider C array: the row stride (unit inner stride checked)
                size = ir.Constant(i64, context.get_abi_sizeof(real))
                step = builder.sdiv(builder.extract_value(arr.strides, 0), size)
            one = ir.Constant(i64, 1)
            return builder.select(builder.icmp_signed("<", step, one), one, step)

        def trans(flag, ty):
            flag = context.cast(builder, flag, ty, types.boolean)
            return builder.select(flag, ir.Constant(i32, TRANS), ir.Constant(i32, NO_TRANS))

        builder.call(
            fn,
            [
                ir.Constant(i32, ROW_MAJOR), trans(ta_v, ta), trans(tb_v, tb),
                m_v, n_v, k_v, ir.Constant(real, 1.0),
                arrays[0].data, ld(arrays[0], a), arrays[1].data, ld(arrays[1], b),
                ir.Constant(real, 0.0), arrays[2].data, ld(arrays[2], out),
            ],
        )  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


def gemm(a, b, out, trans_a, trans_b, own_thread=False):
    """out[M, N] = op(a) @ op(b), op(x) = x.T if its flag else x, without copies; a, b,
    out: 2-D arrays of one dtype (float32 or float64), each C-contiguous or a block of
    rows and columns of a C-contiguous array (``x[:, k0:k1]``: unit inner stride, which
    the compiled code assumes for any non-C layout). Like ``np.dot(.., out=out)``, out's
    previous contents (NaN included) are ignored. ``own_thread``: computed on the calling
    thread alone (the private OpenBLAS), for calls from inside a parallel loop.
    (This Python body runs with NUMBA_DISABLE_JIT; compiled code calls the BLAS.)"""
    np.dot(a.T if trans_a else a, b.T if trans_b else b, out)


@overload(gemm, jit_options={"nogil": True})
def _gemm(a, b, out, trans_a, trans_b, own_thread=False):
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout in "CA" for x in arrays):
        raise TypingError("gemm takes 2-D arrays with rows of unit stride")
    if not (a.dtype == b.dtype == out.dtype and out.dtype in (types.float32, types.float64)):
        raise TypingError("gemm takes float32 or float64 arrays of one dtype")

    def impl(a, b, out, trans_a, trans_b, own_thread=False):
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        if m <= LOOP_ROWS:
            _few_rows(a, b, out, trans_a, trans_b, k)
        else:
            _call(a, b, out, trans_a, trans_b, m, n, k, own_thread)

    return impl


# Up to this many rows of out, ``gemm`` runs compiled loops, not the BLAS: OpenBLAS packs
# the whole of b even for one row (one row of 784 through 784x50: 10 us by the BLAS, 5 by
# the loops; two rows 17 and 12; four about even).
LOOP_ROWS = 2


@njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def _few_rows(a, b, out, trans_a, trans_b, k):
    """out[M, N] = op(a) @ op(b) by loops over the rows of b (dot products along them
    when b is transposed), for a few rows M."""
    m, n = out.shape
    for i in range(m):
        if trans_b:
            for j in range(n):
                total = out.dtype.type(0)
                for p in range(k):
                    total += (a[p, i] if trans_a else a[i, p]) * b[j, p]
                out[i, j] = total
        else:
            for j in range(n):
                out[i, j] = 0
            for p in range(k):
                v = a[p, i] if trans_a else a[i, p]
                for j in range(n):
                    out[i, j] += v * b[p, j]


@njit(inline="always", cache=True, nogil=True)
def block_of(p, blocks, n):
    """[lo, hi) of block p when n items are cut into ``blocks`` near-equal blocks."""
    size = -(-n // blocks)
    lo = min(p * size, n)
    return lo, min(lo + size, n)


_num_threads = None  # this thread's Numba thread count, as a C call (set on first use)


def num_threads():
    """``numba.get_num_threads()``, this thread's setting, in ~0.1 us rather than ~1 us:
    after the first call (which starts the threading layer) it calls the layer's C
    function that Numba's own function calls after its two start-up locks (Numba keeps it
    as ``numba.np.ufunc.parallel._get_num_threads``; the public function where absent)."""
    global _num_threads
    if _num_threads is None:
        numba.get_num_threads()
        _num_threads = getattr(_numba_parallel, "_get_num_threads", numba.get_num_threads)
    return _num_threads()


def plan(kernel, size):
    """(build, blocks, own) for a GEMM kernel ``Twin`` doing ``size`` multiply-adds (its
    largest product's N * K * M; ``CROSSOVER`` holds them for these kernels).

    With several Numba threads every GEMM runs on the private single-threaded BLAS
    (``own``): the parallel build gives each thread its block, the serial build (small
    work) one block, and NumPy's BLAS threads, never woken, never spin against Numba's.
    With one Numba thread (``NUMBA_NUM_THREADS=1``) one block runs on NumPy's BLAS and
    its threads, as NumPy itself would."""
    threads = num_threads()
    if not PARALLEL_BLAS or threads == 1:
        return kernel.serial, 1, False
    build = kernel.pick(size)
    return build, threads if build is kernel.parallel else 1, True


@njit(inline="always", cache=True, nogil=True)
def sum_blocks(parts, out):
    """out[M] = parts[P, M] summed over the P blocks, in block order (loops: inside a
    parallel build an array expression would be a parallel region of its own)."""
    for j in range(out.size):
        out[j] = parts[0, j]
    for p in range(1, parts.shape[0]):
        for j in range(out.size):
            out[j] += parts[p, j]


def rows_in_dtype(x, xw, lo, hi, at):
    """Rows lo:hi of x as a GEMM operand: x's own rows when xw is None, else copied (cast
    to xw's dtype) into xw[at : at + hi - lo]. (Compiled, xw's type makes the choice.)"""
    if xw is None:
        return x[lo:hi]
    rows = xw[at : at + hi - lo]
    rows[:] = x[lo:hi]
    return rows


@overload(rows_in_dtype, jit_options={"nogil": True})
def _rows_in_dtype(x, xw, lo, hi, at):
    if isinstance(xw, types.NoneType):
        return lambda x, xw, lo, hi, at: x[lo:hi]

    def impl(x, xw, lo, hi, at):
        rows = xw[at : at + hi - lo]
        for i in range(lo, hi):
            for j in range(x.shape[1]):
                rows[i - lo, j] = x[i, j]
        return rows

    return impl


def columns_in_dtype(x, xw, lo, hi):
    """Columns lo:hi of x as a GEMM operand: x's own when xw is None, else copied (cast
    to xw's dtype) into xw[:, lo:hi] (xw of x's shape). (Compiled, xw's type makes the
    choice.)"""
    if xw is None:
        return x[:, lo:hi]
    xw[:, lo:hi] = x[:, lo:hi]
    return xw[:, lo:hi]


@overload(columns_in_dtype, jit_options={"nogil": True})
def _columns_in_dtype(x, xw, lo, hi):
    if isinstance(xw, types.NoneType):
        return lambda x, xw, lo, hi: x[:, lo:hi]

    def impl(x, xw, lo, hi):
        for i in range(x.shape[0]):
            # Row views indexed from 0: Numba knows the index is not negative, so the
            # loop vectorises (indexed lo:hi it was 6x slower).
            source, target = x[i, lo:hi], xw[i, lo:hi]
            for j in range(source.size):
                target[j] = source[j]
        return xw[:, lo:hi]

    return impl
