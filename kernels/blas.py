"""GEMM through NumPy's own BLAS, so that one process has one BLAS thread pool.

Inside ``@njit`` code Numba's ``np.dot`` calls SciPy's bundled OpenBLAS, while NumPy
calls its own (a second copy with its own worker threads). A loop mixing fastbp and
NumPy then has two OpenBLAS thread pools spinning against each other for the same
cores (measured on 2 cores: the book's NumPy train step 0.7 -> 2 ms). ``gemm`` calls the
CBLAS ``dgemm``/``sgemm`` of the library NumPy itself links (ILP64 OpenBLAS in the NumPy
wheels), found at import through NumPy's extension module.

The compiled code calls the fixed symbols ``fastbp_cblas_dgemm64`` and
``fastbp_cblas_sgemm64``, bound at import (``llvmlite.binding.add_symbol``) to NumPy's
functions, so ``cache=True`` kernels load in a fresh process without recompiling. Where
NumPy has no ILP64 CBLAS (an MKL or Accelerate build), they are bound to a compiled
fallback with the same signature that calls ``np.dot`` (SciPy's BLAS, as before).
(Numba still loads SciPy's OpenBLAS when it compiles or loads code; its threads are
started but stay asleep while nothing calls it.)
"""

import ctypes

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

# CBLAS enums (C ints) and the names NumPy's ILP64 OpenBLAS exports, newest first.
ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112
NUMPY_NAMES = ("scipy_cblas_{}gemm64_", "cblas_{}gemm64_")
SYMBOL = "fastbp_cblas_{}gemm64"

# void gemm(int order, int ta, int tb, i64 m, i64 n, i64 k, T alpha, T *a, i64 lda,
#           T *b, i64 ldb, T beta, T *c, i64 ldc)
_INT, _LONG = types.int32, types.int64


def _signature(t):
    ptr = types.CPointer(t)
    return types.void(
        _INT, _INT, _INT, _LONG, _LONG, _LONG, t, ptr, _LONG, ptr, _LONG, t, ptr, _LONG
    )


def _numpy_function(prefix):
    """Address of NumPy's ILP64 CBLAS ``{prefix}gemm``, or None."""
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # NumPy 1.x
        from numpy.core import _multiarray_umath as umath
    # dlsym on the extension searches the libraries it links, i.e. NumPy's BLAS.
    lib = ctypes.CDLL(umath.__file__)
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


def _bind():
    """Bind the two fixed symbols; returns True where they are NumPy's BLAS."""
    found = True
    for prefix, t in (("d", types.float64), ("s", types.float32)):
        address = _numpy_function(prefix)
        if address is None:
            found = False
            address = _fallback(t)
        ll.add_symbol(SYMBOL.format(prefix), address)
    return found


NUMPY_BLAS = _bind()


@intrinsic
def _call(typingctx, a, b, out, ta, tb, m, n, k):
    """CBLAS row-major ``out[m, n] = op(a) @ op(b)``, inner size k (ld = row lengths)."""
    dtype = out.dtype
    sig = types.void(a, b, out, ta, tb, m, n, k)

    def codegen(context, builder, signature, args):
        a_v, b_v, out_v, ta_v, tb_v, m_v, n_v, k_v = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = context.get_value_type(dtype)
        c_args = [context.get_value_type(arg) for arg in _signature(dtype).args]
        fnty = ir.FunctionType(ir.VoidType(), c_args)
        prefix = "d" if dtype == types.float64 else "s"
        fn = cgutils.get_or_insert_function(builder.module, fnty, SYMBOL.format(prefix))
        arrays = [
            context.make_array(ty)(context, builder, v)
            for ty, v in ((a, a_v), (b, b_v), (out, out_v))
        ]

        def ld(arr):  # row length of a C-contiguous 2-D array, at least 1 (BLAS rule)
            cols = builder.extract_value(arr.shape, 1)
            one = ir.Constant(i64, 1)
            return builder.select(builder.icmp_signed("<", cols, one), one, cols)

        def trans(flag, ty):
            flag = context.cast(builder, flag, ty, types.boolean)
            return builder.select(flag, ir.Constant(i32, TRANS), ir.Constant(i32, NO_TRANS))

        builder.call(
            fn,
            [
                ir.Constant(i32, ROW_MAJOR), trans(ta_v, ta), trans(tb_v, tb),
                m_v, n_v, k_v, ir.Constant(real, 1.0),
                arrays[0].data, ld(arrays[0]), arrays[1].data, ld(arrays[1]),
                ir.Constant(real, 0.0), arrays[2].data, ld(arrays[2]),
            ],
        )  # fmt: skip
        return context.get_dummy_value()

    return sig, codegen


def gemm(a, b, out, trans_a, trans_b):
    """out[M, N] = op(a) @ op(b), op(x) = x.T if its flag else x, without copies; a, b,
    out: C-contiguous 2-D arrays of one dtype (float32 or float64). Like
    ``np.dot(.., out=out)``, out's previous contents (NaN included) are ignored.
    (This Python body runs with NUMBA_DISABLE_JIT; compiled code calls the BLAS.)"""
    np.dot(a.T if trans_a else a, b.T if trans_b else b, out)


@overload(gemm, jit_options={"nogil": True})
def _gemm(a, b, out, trans_a, trans_b):
    arrays = (a, b, out)
    if not all(isinstance(x, types.Array) and x.ndim == 2 and x.layout == "C" for x in arrays):
        raise TypingError("gemm takes C-contiguous 2-D arrays")
    if not (a.dtype == b.dtype == out.dtype and out.dtype in (types.float32, types.float64)):
        raise TypingError("gemm takes float32 or float64 arrays of one dtype")

    def impl(a, b, out, trans_a, trans_b):
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        _call(a, b, out, trans_a, trans_b, m, n, k)

    return impl
