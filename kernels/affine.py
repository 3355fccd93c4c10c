"""Affine layer: ``out = x @ W + b`` and its gradients, on ``P`` blocks at once.

The work is cut into ``P`` blocks (one per Numba thread in the parallel build, 1 in the
serial build; ``blas.plan`` chooses), each block calling the BLAS on its own rows of the
batch (and, backward, its own rows of dW), single-threaded when ``P > 1``. A chunk of
mostly-zero rows of x (MNIST images: about 80% zeros) skips the BLAS forward: each row's
output is the sum of the W rows at its nonzeros (``kernels/nonzeros.py``). W, b, dout,
dx, dW and db share one float dtype (float32 or float64); all arrays are C-contiguous
and checked by the caller (``fastbp.layers.Affine``).
"""

import numpy as np
from numba import prange

from fastbp.kernels.blas import block_of, columns_in_dtype, gemm, plan, rows_in_dtype, sum_blocks
from fastbp.kernels.dispatch import choose_sparse, sparse_density, twin
from fastbp.kernels.nonzeros import (
    buffer_size,
    by_columns,
    column_block,
    combine_rows,
    count_nonzeros,
    count_rows,
    record_nonzeros,
    record_rows,
    split,
)

# Rows of x taken at a time by a block forward: counted, then cast into the block's scratch
# rows (float32 images, float64 weights) or read again while still in cache.
CHUNK_ROWS = 128


@twin
def affine_forward(out, x, W, b, xw, density, cols, own):
    """out[N, M] = x[N, K] @ W[K, M] + b[M], written in place, on P = cols.shape[0]
    blocks of rows, each taken CHUNK_ROWS rows at a time (so that a chunk of x is still
    in cache when it is read the second time). xw: None when x has W's dtype, else a
    scratch xw[P * CHUNK_ROWS, K] in W's dtype where each block casts its chunk of x (no
    full-size copy of x). A chunk whose rows have at most a fraction ``density`` of
    nonzeros (negative: never counted) takes the sparse rows, recording each row's
    nonzeros into its block's cols[p] (int64, K each); the others, the BLAS. ``own``:
    each block on the private single-threaded BLAS (``blas.plan``). Returns the number of
    sparse chunks."""
    n, k = x.shape
    blocks = cols.shape[0]
    sparse_chunks = 0
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, n)
        for s0 in range(lo, hi, CHUNK_ROWS):
            s1 = min(s0 + CHUNK_ROWS, hi)
            nonzeros, limit = 0, density * (s1 - s0) * k
            for i in range(s0, s1):
                if density < 0 or nonzeros > limit:
                    break
                nonzeros += count_nonzeros(x[i])
            if density >= 0 and nonzeros <= limit:
                sparse_chunks += 1
                for i in range(s0, s1):
                    end = record_nonzeros(x[i], cols[p], 0, cols.shape[1])
                    combine_rows(W, x[i], cols[p], 0, end, out[i])
            else:
                rows = rows_in_dtype(x, xw, s0, s1, p * CHUNK_ROWS)
                gemm(rows, W, out[s0:s1], False, False, own)
            for i in range(s0, s1):
                for j in range(out.shape[1]):
                    out[i, j] += b[j]
    return sparse_chunks


@twin
def affine_backward(dout, x, xw, W, dx, dW, db, need_dx, max_nnz, nz, dbp, own):
    """dx[N, K] = dout @ W.T (if ``need_dx``), dW[K, M] = x.T @ dout, db[M] = dout summed,
    on P = dbp.shape[0] blocks: block p computes its rows of dx and of dW and its share
    of db into dbp[p] (summed after, in block order); ``own`` as in affine_forward.

    x[N, K] is in W's dtype or float32. When x has at most ``max_nnz`` nonzeros (negative:
    never, and they are not counted), dW comes from them (``nonzeros.by_columns``),
    recorded in nz (int64, ``nonzeros.split`` with cap = max_nnz). Else dW is a GEMM
    on x in W's dtype: x itself (xw None), or xw, a buffer of x's shape that each block
    fills with its columns of x. Returns whether dW came from the nonzeros."""
    n, m = dout.shape
    k = x.shape[1]
    blocks = dbp.shape[0]
    cap = max(max_nnz, 0)
    rowptr, ends, colptr, cols, rows = split(nz, n, k, blocks, cap)
    sparse = max_nnz >= 0 and count_rows(x, rowptr, cap) <= max_nnz
    for p in prange(blocks):
        lo, hi = block_of(p, blocks, n)
        if need_dx:
            gemm(dout[lo:hi], W, dx[lo:hi], False, True, own)
        if sparse:
            record_rows(x, rowptr, ends, cols, lo, hi)
        else:
            k0, k1 = block_of(p, blocks, k)
            gemm(columns_in_dtype(x, xw, k0, k1), dout, dW[k0:k1], True, False, own)
        for j in range(m):
            dbp[p, j] = 0
        for i in range(lo, hi):
            for j in range(m):
                dbp[p, j] += dout[i, j]
    if sparse:
        for p in prange(blocks):
            k0, k1 = block_of(p, blocks, k)
            offsets, cursor = column_block(colptr, rows, n, blocks, p, k0, k1)
            by_columns(x, dout, dW, rowptr, ends, cols, offsets, rows, cursor, k0, k1, False)
    sum_blocks(dbp, db)
    return sparse


def forward(out, x, W, b, density=None):
    """``affine_forward`` on the blocks ``blas.plan`` picks: x[N, K] (float32 or W's
    dtype, C-contiguous), W[K, M], b[M], out[N, M] in W's dtype; sparse chunks up to
    ``density`` (None: as timed at this shape, ``dispatch.choose_sparse``; negative:
    never)."""
    build, blocks, own = plan(affine_forward, out.size * x.shape[1])
    (n, k), m = x.shape, out.shape[1]
    xw = np.empty((blocks * CHUNK_ROWS, k), W.dtype) if x.dtype != W.dtype else None
    cols = np.empty((blocks, k), np.int64)
    if density is None:
        key = ("affine_forward", x.dtype, W.dtype, blocks, n.bit_length(), k, m)
        density = sparse_density(key)
        if density is None:

            def trial(density, rows):
                return build(out[:rows], x[:rows], W, b, xw, density, cols, own) > 0

            density = choose_sparse(key, n, trial)
    build(out, x, W, b, xw, density, cols, own)


def backward(dout, x, W, dx, dW, db, need_dx, density=None):
    """``affine_backward`` on the blocks ``blas.plan`` picks: x[N, K] float32 or W's
    dtype (cast here only for a dense dW), the other arrays in W's dtype; dW from x's
    nonzeros up to ``density`` (None: as in ``forward``; negative: never)."""
    build, blocks, own = plan(affine_backward, dout.size * x.shape[1])
    (n, k), m = x.shape, dout.shape[1]
    xw = np.empty(x.shape, W.dtype) if x.dtype != W.dtype else None  # for a dense dW
    dbp = np.empty((blocks, db.size), db.dtype)

    def run(density, rows=n):
        max_nnz = int(density * rows * k) if density >= 0 else -1
        nz = np.empty(buffer_size(rows, k, blocks, max(max_nnz, 0)), np.int64)
        xs, ws = x[:rows], None if xw is None else xw[:rows]
        return build(dout[:rows], xs, ws, W, dx[:rows], dW, db, need_dx, max_nnz, nz, dbp, own)

    if density is None:
        key = ("affine_backward", x.dtype, W.dtype, blocks, n.bit_length(), k, m, need_dx)
        density = sparse_density(key)
        if density is None:
            density = choose_sparse(key, n, run)
    run(density)
