"""Sparse rows: where a vector's nonzeros are, and sums of matrix rows weighted by them.

MNIST images are about 80% zeros, so ``x @ W`` (and ``x.T @ d``) can skip most of the
rows of W: ``record_nonzeros`` lists the positions of a vector's nonzeros (16 at a time
with vector compresses), ``combine_rows`` sums the matrix rows at them, weighted by the
vector's values, in registers. Both are LLVM intrinsics written here: single AVX-512
instructions where the CPU has them, and correct, if slower, code where it has not.
NaN counts as nonzero (it must propagate), -0.0 as zero, like ``np.nonzero``.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from fastbp.kernels.dispatch import FASTMATH

LANES = 16  # elements compared and compressed at a time
VECTORS = 4  # 64-byte vectors of sums per chunk of a combined row (and two chains each)
TERMS = 32  # terms summed per pass over a combined row's chunks
# Rows up to this size are summed in registers (wider ones, where A outgrows L2, stream
# better four rows at a time; measured on Zen 5, f32 and f64).
NARROW_BYTES = 1024

jit = njit(inline="always", cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")


def _splat(builder, value, lanes):
    """<lanes x value's type> with value in every lane."""
    vector = ir.VectorType(value.type, lanes)
    first = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.IntType(32)(0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(first, ir.Constant(vector, ir.Undefined), zeros)


def compress_chunk(v, c, out, p):
    """out[p:p + m] = the positions c + q (q < LANES) where v[c + q] != 0, in order;
    returns m. Compiled, it reads v[c : c + LANES] and writes out[p : p + LANES] unchecked
    (past the m positions: scratch values). (This Python body runs with NUMBA_DISABLE_JIT.)"""
    found = np.flatnonzero(v[c : c + LANES] != 0)
    out[p : p + found.size] = found + c
    return found.size


@overload(compress_chunk, jit_options={"nogil": True})
def _compress_chunk_impl(v, c, out, p):
    return lambda v, c, out, p: _compress_chunk(v, c, out, p)


@intrinsic
def _compress_chunk(typingctx, v, c, out, p):
    """``compress_chunk`` as two compresses in registers (eight int64 positions each:
    ``llvm.experimental.vector.compress``, one AVX-512 instruction) and two full stores,
    each at the end of the positions before it (measured faster on Zen 5 than one
    compress straight to memory)."""
    vectors = all(isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C" for a in (v, out))
    if not (vectors and v.dtype in (types.float32, types.float64) and out.dtype == types.int64):
        raise TypingError("_compress_chunk takes a contiguous float vector and an int64 one")
    sig = types.intp(v, c, out, p)

    def codegen(context, builder, signature, args):
        v_v, c_v, out_v, p_v = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        values_type = ir.VectorType(context.get_value_type(v.dtype), LANES)
        index_type = ir.VectorType(i64, LANES)
        source = context.make_array(v)(context, builder, v_v)
        target = context.make_array(out)(context, builder, out_v)
        start = builder.bitcast(builder.gep(source.data, [c_v]), values_type.as_pointer())
        values = builder.load(start, align=1)
        nonzero = builder.fcmp_unordered("!=", values, ir.Constant(values_type, [0.0] * LANES))
        positions = builder.add(
            _splat(builder, c_v, LANES), ir.Constant(index_type, list(range(LANES)))
        )
        half, written = LANES // 2, i64(0)
        half_type, half_mask = ir.VectorType(i64, half), ir.VectorType(ir.IntType(1), half)
        compress = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(half_type, [half_type, half_mask, half_type]),
            f"llvm.experimental.vector.compress.v{half}i64",
        )
        popcount = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.IntType(half), [ir.IntType(half)]),
            f"llvm.ctpop.i{half}",
        )
        for h in range(2):
            pick = ir.Constant(ir.VectorType(i32, half), list(range(h * half, (h + 1) * half)))
            part = builder.shuffle_vector(positions, ir.Constant(index_type, ir.Undefined), pick)
            mask = builder.shuffle_vector(nonzero, ir.Constant(nonzero.type, ir.Undefined), pick)
            packed = builder.call(compress, [part, mask, ir.Constant(half_type, ir.Undefined)])
            at = builder.gep(target.data, [builder.add(p_v, written)])
            builder.store(packed, builder.bitcast(at, half_type.as_pointer()), align=8)
            count = builder.call(popcount, [builder.bitcast(mask, ir.IntType(half))])
            written = builder.add(written, builder.zext(count, i64))
        return written

    return sig, codegen


@jit
def count_nonzeros(v):
    """Number of nonzeros of the contiguous vector v (vectorised: no branch)."""
    count = 0
    for c in range(v.size):
        count += v[c] != 0
    return count


@jit
def record_nonzeros(v, out, p, end):
    """Positions of the nonzeros of the contiguous vector v into out[p:end], in order;
    returns the position after the last one written. Writes nothing at or past ``end``
    (where v has more nonzeros than fit, the rest are dropped: the caller counted them),
    nor past out's end. Chunks are compressed while LANES places are left, then one entry
    at a time until out is full."""
    end = min(end, out.size)
    c = 0
    while c + LANES <= v.size and p + LANES <= end:
        p += compress_chunk(v, c, out, p)
        c += LANES
    for q in range(c, v.size):
        if p >= end:  # no room left (for a counted row: no nonzero left)
            break
        if v[q] != 0:
            out[p] = q
            p += 1
    return p


def combine_rows(A, v, idx, lo, hi, out):
    """out[:] = sum over p in [lo, hi) of v[idx[p]] * A[idx[p], :] (0 for an empty range),
    in A's dtype. Compiled, it reads the rows idx[lo:hi] of A and entries of v unchecked.
    (This Python body runs with NUMBA_DISABLE_JIT.)"""
    out[:] = 0
    for p in range(lo, hi):
        out += v[idx[p]] * A[idx[p]]


@overload(combine_rows, inline="always", jit_options={"nogil": True})
def _combine_rows_impl(A, v, idx, lo, hi, out):
    narrow = NARROW_BYTES // (A.dtype.bitwidth // 8)

    def impl(A, v, idx, lo, hi, out):
        if out.size <= narrow:
            _combine_rows(A, v, idx, lo, hi, out)
        else:
            _combine_wide(A, v, idx, lo, hi, out)

    return impl


@jit
def _combine_wide(A, v, idx, lo, hi, out):
    """``combine_rows`` for rows wider than NARROW_BYTES: four terms per pass over out,
    which stays in L1 while the four rows of A stream through."""
    for j in range(out.size):
        out[j] = 0
    p = lo
    while p <= hi - 4:
        a, b, c, d = idx[p], idx[p + 1], idx[p + 2], idx[p + 3]
        va, vb, vc, vd = v[a], v[b], v[c], v[d]
        for j in range(out.size):
            out[j] += va * A[a, j] + vb * A[b, j] + vc * A[c, j] + vd * A[d, j]
        p += 4
    for q in range(p, hi):
        a = idx[q]
        va = v[a]
        for j in range(out.size):
            out[j] += va * A[a, j]


def _masked_memory(builder, vector):
    """(load, store): ``llvm.masked.load`` / ``.store`` of ``vector`` (lanes off the mask
    are neither read nor written)."""
    i32, pointer = ir.IntType(32), ir.PointerType()
    mask = ir.VectorType(ir.IntType(1), vector.count)
    name = f"v{vector.count}{'f32' if isinstance(vector.element, ir.FloatType) else 'f64'}.p0"
    load = ir.FunctionType(vector, [pointer, i32, mask, vector])
    store = ir.FunctionType(ir.VoidType(), [vector, pointer, i32, mask])
    return (
        cgutils.get_or_insert_function(builder.module, load, f"llvm.masked.load.{name}"),
        cgutils.get_or_insert_function(builder.module, store, f"llvm.masked.store.{name}"),
    )


def _at_least(builder, value, low):
    return builder.select(builder.icmp_signed("<", value, low), low, value)


def _at_most(builder, value, high):
    return builder.select(builder.icmp_signed(">", value, high), high, value)


def _ceil_div(builder, value, divisor):
    """ceil(value / divisor) for value >= 0 and a constant int64 divisor."""
    return builder.sdiv(builder.add(value, ir.IntType(64)(divisor - 1)), ir.IntType(64)(divisor))


@intrinsic
def _combine_rows(typingctx, A, v, idx, lo, hi, out):
    """``combine_rows`` for rows of at most NARROW_BYTES, the sums in registers.

    The terms are taken TERMS at a time; for each such block, out is cut into chunks of
    VECTORS 64-byte vectors (the last chunk: as many as it needs), each chunk summed over
    the block's terms in registers (even and odd terms on two chains, so that the
    additions overlap) with masked loads at the row's end, and added to out (set, for
    the first block) with one masked store per vector.
    """
    floats = (types.float32, types.float64)
    arrays = all(isinstance(a, types.Array) for a in (A, v, idx, out))
    if not (
        arrays and A.ndim == 2 and A.layout == "C" and A.dtype in floats
        and out.ndim == 1 and out.layout == "C" and out.dtype == A.dtype
        and v.ndim == 1 and v.dtype in floats and v.dtype.bitwidth <= A.dtype.bitwidth
        and idx.ndim == 1 and idx.dtype == types.int64
    ):  # fmt: skip
        raise TypingError(
            "_combine_rows takes C-contiguous A[K, M] and out[M] of one float dtype, "
            "a float vector v no wider, and int64 positions"
        )
    sig = types.none(A, v, idx, types.intp, types.intp, out)

    def codegen(context, builder, signature, args):
        A_v, v_v, idx_v, lo, hi, out_v = args
        i32, i64, byte = ir.IntType(32), ir.IntType(64), ir.IntType(8)
        item, size = context.get_value_type(A.dtype), A.dtype.bitwidth // 8
        lanes = 64 // size
        vector = ir.VectorType(item, lanes)
        load, store = _masked_memory(builder, vector)
        rows = context.make_array(A)(context, builder, A_v)
        values = context.make_array(v)(context, builder, v_v)
        positions = context.make_array(idx)(context, builder, idx_v)
        target = context.make_array(out)(context, builder, out_v)
        (m,) = cgutils.unpack_tuple(builder, target.shape, 1)
        row_bytes = cgutils.unpack_tuple(builder, rows.strides, 2)[0]
        (value_bytes,) = cgutils.unpack_tuple(builder, values.strides, 1)
        zero = ir.Constant(vector, [0.0] * lanes)
        width = VECTORS * lanes
        chunks = _ceil_div(builder, m, width)
        terms = _at_least(builder, builder.sub(hi, lo), i64(0))
        blocks = _at_least(builder, _ceil_div(builder, terms, TERMS), i64(1))
        sums = [[cgutils.alloca_once(builder, vector) for _ in range(VECTORS)] for _ in range(2)]
        lane = [ir.Constant(ir.VectorType(i64, lanes), list(range(q * lanes, (q + 1) * lanes)))
                for q in range(VECTORS)]  # fmt: skip
        flags = tuple(sorted(FASTMATH))

        def add_term(p, chain, j0, masks):
            """chain's sums += v[idx[p]] * A[idx[p], j0 : j0 + width], one sum per mask."""
            row = builder.load(builder.gep(positions.data, [p]))
            at = builder.gep(values.data, [builder.mul(row, value_bytes)], source_etype=byte)
            value = builder.load(at, typ=context.get_value_type(v.dtype))
            weight = _splat(
                builder, builder.fpext(value, item) if v.dtype != A.dtype else value, lanes
            )
            start = builder.add(builder.mul(row, row_bytes), builder.mul(j0, i64(size)))
            for q, (mask, total) in enumerate(zip(masks, sums[chain], strict=False)):
                offset = builder.add(start, i64(q * lanes * size))
                where = builder.gep(rows.data, [offset], source_etype=byte)
                x = builder.call(load, [where, i32(size), mask, zero])
                product = builder.fmul(weight, x, flags=flags)
                builder.store(builder.fadd(builder.load(total), product, flags=flags), total)

        def add_chunk(p0, count, first, j0, vectors):
            """out[j0 : j0 + vectors * lanes] (+)= the terms p0 : p0 + count."""
            columns = _splat(builder, builder.sub(m, j0), lanes)
            masks = [builder.icmp_signed("<", lane[q], columns) for q in range(vectors)]
            ats = [
                builder.gep(target.data, [builder.add(j0, i64(q * lanes))]) for q in range(vectors)
            ]
            for q in range(vectors):
                so_far = builder.call(load, [ats[q], i32(size), masks[q], zero])
                builder.store(builder.select(first, zero, so_far), sums[0][q])
                builder.store(zero, sums[1][q])
            with cgutils.for_range(builder, builder.sdiv(count, i64(2))) as pair:
                p = builder.add(p0, builder.mul(pair.index, i64(2)))
                add_term(p, 0, j0, masks)
                add_term(builder.add(p, i64(1)), 1, j0, masks)
            with builder.if_then(builder.trunc(count, ir.IntType(1))):
                add_term(builder.sub(builder.add(p0, count), i64(1)), 0, j0, masks)
            for q in range(vectors):
                both = builder.fadd(builder.load(sums[0][q]), builder.load(sums[1][q]))
                builder.call(store, [both, ats[q], i32(size), masks[q]])

        with cgutils.for_range(builder, blocks) as block:
            p0 = builder.add(lo, builder.mul(block.index, i64(TERMS)))
            count = _at_least(builder, _at_most(builder, builder.sub(hi, p0), i64(TERMS)), i64(0))
            first = builder.icmp_signed("==", block.index, i64(0))
            with cgutils.for_range(builder, chunks) as chunk:
                j0 = builder.mul(chunk.index, i64(width))
                # The vectors this chunk needs (the last chunk of a row may need fewer).
                left = _ceil_div(builder, builder.sub(m, j0), lanes)
                done = builder.append_basic_block("chunk.done")
                cases = [builder.append_basic_block(f"chunk.{q}") for q in range(1, VECTORS + 1)]
                switch = builder.switch(left, cases[-1])
                for vectors, case in enumerate(cases, 1):
                    switch.add_case(i64(vectors), case)
                    builder.position_at_end(case)
                    add_chunk(p0, count, first, j0, vectors)
                    builder.branch(done)
                builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


def buffer_size(n, k, blocks, cap):
    """Entries (int64) of the ``split`` buffer for x[N, K], P blocks, cap nonzeros."""
    return 2 * n + 1 + k + blocks + 2 * (cap + n * LANES) + blocks * n


@jit
def split(nz, n, k, blocks, cap):
    """(rowptr[N + 1], ends[N], colptr[K + P], cols[R], rows[R + P * N]) in nz, with
    R = cap + N * LANES: the row offsets (counted) and ends (recorded), each column
    block's offsets (one more than its columns), the nonzeros' columns by row (each row's
    followed by LANES entries of room for ``record_nonzeros``' full stores), and their
    rows by column (however many were recorded, they fit) followed by one N-entry
    scratch per block (``column_block``)."""
    at = 2 * n + 1 + k + blocks
    by_row = at + cap + n * LANES
    return nz[: n + 1], nz[n + 1 : 2 * n + 1], nz[2 * n + 1 : at], nz[at:by_row], nz[by_row:]


@jit
def column_block(colptr, rows, n, blocks, p, lo, hi):
    """(offsets, cursor) of ``by_columns`` for column block p, columns lo:hi of the
    ``split`` buffer: its colptr entries and its N-entry scratch at the end of rows."""
    scratch = rows.size - blocks * n
    return colptr[lo + p : hi + p + 1], rows[scratch + p * n : scratch + (p + 1) * n]


@jit
def count_rows(x, rowptr, cap):
    """rowptr[N + 1] = the row offsets of x[N, K]'s nonzeros (row i's count plus LANES
    apart), as long as they fit in ``cap`` (the room the caller has for them); returns
    their number, or as soon as it passes ``cap`` a number larger than cap (rowptr is
    then incomplete). Serial: cheaper than waking a thread for one pass over x."""
    total = 0
    rowptr[0] = 0
    for i in range(x.shape[0]):
        total += count_nonzeros(x[i])
        if total > cap:
            return total
        rowptr[i + 1] = total + (i + 1) * LANES
    return total


@jit
def record_rows(x, rowptr, ends, cols, lo, hi):
    """Rows lo:hi of x's nonzeros by row: row i's columns into cols[rowptr[i] : ends[i]]
    (sorted; at most the room rowptr[i + 1] - rowptr[i] that ``count_rows`` left)."""
    for i in range(lo, hi):
        ends[i] = record_nonzeros(x[i], cols, rowptr[i], rowptr[i + 1])


@jit
def first_at_least(cols, lo, hi, c):
    """First position in [lo, hi) of the sorted cols[lo:hi] holding a value >= c (hi if none)."""
    while lo < hi:
        mid = (lo + hi) // 2
        if cols[mid] < c:
            lo = mid + 1
        else:
            hi = mid
    return lo


@jit
def by_columns(x, d, out, rowptr, ends, cols, offsets, rows, cursor, lo, hi, skip_empty):
    """out[lo:hi] = x[:, lo:hi].T @ d[N, M] from x's recorded nonzeros (``record_rows``).

    They are sorted by column first: column c's rows into rows[offsets[c - lo] :
    offsets[c - lo + 1]] (offsets[hi - lo + 1]); the positions are those among all
    columns', so blocks of columns write apart. cursor[N]: scratch. ``skip_empty``: the
    rows of out for all-zero columns of x (0) are left unwritten.
    """
    n = x.shape[0]
    base = 0  # nonzeros in the columns before lo, all rows
    for c in range(offsets.size):
        offsets[c] = 0
    for i in range(n):
        cursor[i] = first_at_least(cols, rowptr[i], ends[i], lo)
        base += cursor[i] - rowptr[i]
        for p in range(cursor[i], ends[i]):
            if cols[p] >= hi:
                break
            offsets[cols[p] - lo + 1] += 1
    offsets[0] = base
    for c in range(hi - lo):
        offsets[c + 1] += offsets[c]
    for i in range(n):  # offsets[c] runs ahead as the fill cursor of column lo + c ...
        for p in range(cursor[i], ends[i]):
            c = cols[p] - lo
            if c >= hi - lo:
                break
            rows[offsets[c]] = i
            offsets[c] += 1
    for c in range(hi - lo, 0, -1):  # ... and is shifted back afterwards
        offsets[c] = offsets[c - 1]
    offsets[0] = base
    for r in range(lo, hi):
        start, end = offsets[r - lo], offsets[r - lo + 1]
        if not (skip_empty and start == end):
            combine_rows(d, x[:, r], rows, start, end, out[r])
