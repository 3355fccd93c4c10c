"""A vectorisable ``exp`` for float32/float64 scalars inside ``@njit`` loops.

Numba calls libm's scalar ``exp`` for ``np.exp`` here (llvmlite without SVML), which keeps
every loop around it scalar. ``fast_exp`` is branch-free arithmetic that LLVM vectorises:

    k = rint(x / ln2),  r = x - k*ln2 (ln2 split hi + lo),  |r| <= ln2/2
    exp(x) = p(r) * 2**k1 * 2**(k - k1),  k1 = floor(k / 2)

with ``p`` a polynomial fitted to ``exp`` on [-ln2/2, ln2/2] (float64: degree 11, float32:
degree 6, evaluated in the input's own precision) and each power of two built from exponent
bits. Splitting 2**k in two keeps both factors normal, so gradual underflow into subnormals
and overflow to inf come out of the last multiply by IEEE rounding. Inputs are clamped to
just past the range where exp is finite and non-zero, NaN propagates.

Accuracy against ``np.exp`` (tests/test_fastexp.py): float64 within 3e-16 relative for
normal results, float32 within 2.5e-7 relative; subnormal results within one subnormal
step of the last multiply. Without JIT (``NUMBA_DISABLE_JIT=1``) the same code runs on
NumPy scalars.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

# Only FMA contraction: the range reduction must not be reassociated.
FLAGS = {"contract"}


def _constants(dtype, lo, hi, ln2_hi, ln2_lo, coefficients):
    """(lo, hi, 1/ln2, ln2_hi, ln2_lo, 1/2, 1, polynomial) in ``dtype``, highest degree first."""
    c = np.dtype(dtype).type
    poly = tuple(c(a) for a in coefficients)
    return c(lo), c(hi), c(1 / np.log(2)), c(ln2_hi), c(ln2_lo), c(0.5), c(1), poly


# exp(x) = 0 below lo and inf above hi (past the subnormal and overflow thresholds).
# ln2_hi has trailing zero bits so k * ln2_hi is exact (fdlibm's and Cephes' splits).
# Coefficients of r**n (n = degree..0), fitted for minimal relative error on |r| <= ln2/2.
F64 = _constants(
    np.float64,
    -746.0,
    710.0,
    6.93147180369123816490e-01,
    1.90821492927058770002e-10,
    (
        2.3412293152153824e-08,
        2.756161933336801e-07,
        2.7561404511565296e-06,
        2.4801681398184684e-05,
        0.00019841266845884527,
        0.0013888888769763394,
        0.008333333333835093,
        0.0416666666671406,
        0.16666666666667518,
        0.4999999999999945,
        1.0,
        1.0,
    ),
)
F32 = _constants(
    np.float32,
    -104.0,
    89.0,
    0.693359375,
    -2.12194440e-4,
    (
        0.0013814613921567798,
        0.0083687175065279,
        0.04166838899254799,
        0.1666652113199234,
        0.4999999403953552,
        1.0,
        1.0,
    ),
)


def constants(x):
    """The constant tuple (``F32`` or ``F64``) for ``x``'s float type."""
    return F32 if isinstance(x, np.float32) else F64


@overload(constants)
def _constants_jit(x):
    table = F32 if x == types.float32 else F64
    return lambda x: table


def typed(value, like):
    """``value`` in the float type of ``like`` (a scalar or an array): keeps float32 math
    in float32, where Numba would promote a Python number to float64."""
    return np.asarray(like).dtype.type(value)


@overload(typed)
def _typed_jit(value, like):
    dtype = like.dtype if isinstance(like, types.Array) else like
    cast = np.float32 if dtype == types.float32 else np.float64
    return lambda value, like: cast(value)


def pow2(k, like):
    """2.0**k in ``like``'s float type, for integral ``k`` in the normal exponent range."""
    return type(like)(np.ldexp(1.0, int(k)))


@intrinsic
def _int_bits_as_float(typingctx, bits):
    """Reinterpret int64 bits as float64, int32 bits as float32."""
    float_type = types.float64 if bits.bitwidth == 64 else types.float32

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType() if bits.bitwidth == 64 else ir.FloatType())

    return float_type(bits), codegen


@overload(pow2)
def _pow2_jit(k, like):
    if like == types.float32:
        # Numba widens int32 arithmetic to int64; narrowing the finished bits lets LLVM
        # keep the whole computation in int32 lanes.
        return lambda k, like: _int_bits_as_float(np.int32((np.int32(k) + 127) << 23))
    return lambda k, like: _int_bits_as_float((np.int64(k) + 1023) << 52)


@register_jitable(fastmath=FLAGS)
def fast_exp(x):
    """e**x for a float32 or float64 scalar, computed in that type (see the module notes)."""
    lo, hi, inv_ln2, ln2_hi, ln2_lo, half, one, poly = constants(x)
    clamped = lo if x < lo else x  # comparisons with NaN are false: NaN stays NaN
    clamped = hi if clamped > hi else clamped
    finite = clamped if clamped == clamped else one  # keeps NaN out of the integer part
    k = np.rint(finite * inv_ln2)
    r = (clamped - k * ln2_hi) - k * ln2_lo
    p = poly[0]
    for a in poly[1:]:
        p = p * r + a
    k1 = np.floor(k * half)
    return p * pow2(k1, x) * pow2(k - k1, x)
