"""Every kernel, both builds, against fastbp.reference: three-way agreement.

Each test runs ``kernel.serial`` and ``kernel.parallel`` on the same inputs, each into
NaN-filled outputs (so an element a build forgets to write shows up), checks that the
inputs are untouched and that the two builds agree to 1 ulp, then compares the result with
the NumPy reference at the tolerances of ``helpers.rtol_for``. Sizes: batch 1, odd sizes,
and one large case per kernel (>= 1M elements, where the parallel build has many chunks).
"""

import numpy as np
import pytest
from helpers import (
    CORE_KERNELS,
    FLOATS,
    INDEX_DTYPES,
    assert_close,
    assert_loss_close,
    index_labels,
    normal,
    one_hot,
    rtol_for,
)
from numba import njit

from fastbp import kernels
from fastbp import reference as ref
from fastbp.kernels import affine, nonzeros
from fastbp.kernels.dispatch import NEVER

# Elementwise kernels: flat sizes (batch 1, 7x13, > 1M).
FLAT_SIZES = {"batch1": 1, "odd": 7 * 13, "large": (1 << 20) + 7}
# Affine (N, K, M): the output N x M of the large case has > 1M elements.
AFFINE_SHAPES = {"batch1": (1, 5, 3), "odd": (7, 13, 11), "large": (1031, 17, 1031)}
# Softmax logits (N, C).
SOFTMAX_SHAPES = {"batch1": (1, 10), "odd": (7, 13), "large": (100_003, 11)}
# Sparse x (its dtype, W's): the book's float32 images through float64 weights, and alike.
SPARSE_DTYPES = [(np.float32, np.float64), (np.float32, np.float32), (np.float64, np.float64)]
LABEL_KINDS = (*(np.dtype(d).name for d in INDEX_DTYPES), "onehot")


def run_builds(kernel, args, outputs):
    """Run both builds of ``kernel`` on ``args`` and check they agree.

    ``outputs`` maps argument positions to output arrays; each build writes into its own
    NaN-filled (bool: False) copy. Returns (outputs, return value) of the serial build.
    """
    results = []
    for build in (kernel.serial, kernel.parallel):
        call = list(args)
        for pos, out in outputs.items():
            call[pos] = np.full_like(out, False if out.dtype == np.bool_ else np.nan)
        inputs = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        value = build(*call)
        for pos, (before, arg) in enumerate(zip(inputs, args, strict=True)):
            if pos not in outputs and isinstance(arg, np.ndarray):
                np.testing.assert_array_equal(arg, before, strict=True)
        results.append(([call[pos] for pos in outputs], value))
    (serial, serial_value), (parallel, parallel_value) = results
    for a, b in zip(serial, parallel, strict=True):
        if a.dtype == np.bool_:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_array_max_ulp(a, b, maxulp=1)
    if serial_value is not None:
        # The loss is a sum over rows; the parallel build adds them in another order.
        assert parallel_value == pytest.approx(serial_value, rel=1e-12)
    return serial, serial_value


def with_special_values(x):
    """``x`` with NaN, +-inf and +-0 in its first entries (as many as fit)."""
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], x.dtype)[: x.size]
    x[: special.size] = special
    return x


@pytest.fixture(params=FLOATS, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param


@pytest.mark.parametrize("size", FLAT_SIZES.values(), ids=FLAT_SIZES.keys())
def test_relu(rng, dtype, size):
    x = with_special_values(normal(rng, size, dtype))
    dout = normal(rng, size, dtype)
    out, mask = np.empty_like(x), np.empty(size, np.bool_)
    (out, mask), _ = run_builds(kernels.relu_forward, (x, out, mask), {1: out, 2: mask})
    expected, expected_mask = ref.relu_forward(x)
    np.testing.assert_array_equal(mask, expected_mask)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(np.signbit(out), np.signbit(expected))  # -0.0 -> +0.0
    (dx,), _ = run_builds(kernels.relu_backward, (dout, mask, np.empty_like(dout)), {2: dout})
    np.testing.assert_array_equal(dx, ref.relu_backward(dout, mask))


@pytest.mark.parametrize("size", FLAT_SIZES.values(), ids=FLAT_SIZES.keys())
def test_sigmoid(rng, dtype, size):
    # Up to |x| = 40 in float32 and 400 in float64: the tails where a naive exp overflows.
    x = with_special_values(normal(rng, size, dtype, scale=10 if dtype == np.float32 else 100))
    (y,), _ = run_builds(kernels.sigmoid_forward, (x, np.empty_like(x)), {1: x})
    with np.errstate(invalid="ignore"):  # NumPy warns on logaddexp(0, inf); the result is right
        expected = ref.sigmoid(x)
    assert_close(y, expected, rtol_for(dtype))
    y = ref.sigmoid(normal(rng, size, dtype))
    dout = normal(rng, size, dtype)
    (dx,), _ = run_builds(kernels.sigmoid_backward, (dout, y, np.empty_like(y)), {2: y})
    assert_close(dx, ref.sigmoid_backward(dout, y), rtol_for(dtype))


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("shape", AFFINE_SHAPES.values(), ids=AFFINE_SHAPES.keys())
def test_affine_forward(rng, dtype, shape, blocks):
    n, k, m = shape
    x, W, b = normal(rng, (n, k), dtype), normal(rng, (k, m), dtype), normal(rng, m, dtype)
    out = np.empty((n, m), dtype)
    cols = np.empty((blocks, k), np.int64)
    (out,), _ = run_builds(
        kernels.affine_forward, (out, x, W, b, None, -1.0, cols, blocks > 1), {0: out}
    )
    assert_close(out, ref.affine_forward(x, W, b), rtol_for(dtype))


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("shape", [*AFFINE_SHAPES.values(), (300, 9, 4)])
def test_affine_forward_casts_float32_rows_by_blocks(rng, shape, blocks):
    """The book's float32 images through float64 weights: cast CHUNK_ROWS rows at a time
    into each block's scratch, equal to NumPy's product of the cast x."""
    n, k, m = shape
    x = normal(rng, (n, k), np.float32)
    W, b = normal(rng, (k, m), np.float64), normal(rng, m, np.float64)
    out, scratch = np.empty((n, m)), np.empty((blocks * affine.CHUNK_ROWS, k))
    args = (out, x, W, b, scratch, -1.0, np.empty((blocks, k), np.int64), blocks > 1)
    (out, _), _ = run_builds(kernels.affine_forward, args, {0: out, 4: scratch})
    assert_close(out, ref.affine_forward(x, W, b), rtol_for(np.float64))


@njit
def _combine_rows(A, v, idx, lo, hi, out):
    nonzeros.combine_rows(A, v, idx, lo, hi, out)


@njit
def _record_nonzeros(v, out, p, end):
    return nonzeros.record_nonzeros(v, out, p, end)


@pytest.mark.parametrize("size", [1, 15, 16, 17, 40, 784])
@pytest.mark.parametrize("dtype", FLOATS)
def test_record_nonzeros_stays_in_its_room(rng, size, dtype):
    """The positions of v's nonzeros (NaN counts, -0.0 does not) into out[p:end], in
    order, for every room from none to more than enough: nothing written outside it."""
    v = (rng.random(size) * (rng.random(size) < 0.5)).astype(dtype)
    v[: min(size, 2)] = [np.nan, -0.0][: min(size, 2)]
    found = np.flatnonzero(v != 0)
    for p, room in [(0, found.size), (3, found.size + 20), (5, 0), (1, found.size // 2)]:
        out = np.full(p + room + 40, -1, np.int64)
        end = _record_nonzeros(v, out, p, p + room)
        written = min(room, found.size)
        assert end == p + written
        np.testing.assert_array_equal(out[p:end], found[:written])
        assert (out[:p] == -1).all() and (out[p + room :] == -1).all()
    out = np.full(found.size // 2 + 3, -1, np.int64)  # an end past out's: out's end holds
    end = _record_nonzeros(v, out, 3, out.size + 100)
    np.testing.assert_array_equal(out[3:end], found[: end - 3])
    assert end == min(out.size, 3 + found.size)


# Row widths about the 64-byte vector, the chunk and the NARROW_BYTES boundaries.
COMBINED_WIDTHS = [1, 7, 15, 16, 17, 31, 32, 33, 64, 65, 127, 128, 129, 255, 256, 257, 300]


@pytest.mark.parametrize("m", COMBINED_WIDTHS)
@pytest.mark.parametrize("x_dtype,w_dtype", SPARSE_DTYPES)
def test_combine_rows(rng, m, x_dtype, w_dtype):
    """out = v[idx[lo:hi]] @ A[idx[lo:hi]] for ranges of 0, 1, odd and more than TERMS
    terms, from offsets, and an empty (hi < lo) one, with v strided (a column of x)."""
    k = 2 * nonzeros.TERMS + 9
    A = normal(rng, (k, m), w_dtype)
    v = normal(rng, (k, 3), x_dtype)[:, 1]
    idx = rng.permutation(k).astype(np.int64)
    for lo, hi in [(0, 0), (3, 4), (5, 12), (1, k), (0, nonzeros.TERMS), (6, 2)]:
        out = np.full(m, np.nan, w_dtype)
        _combine_rows(A, v, idx, lo, hi, out)
        terms = idx[lo:hi]
        expected = v[terms].astype(np.float64) @ A[terms].astype(np.float64)
        assert_close(out, expected.reshape(m), rtol_for(w_dtype))


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 5, 3), (7, 13, 11), (40, 50, 9), (257, 100, 31)])
@pytest.mark.parametrize("x_dtype,w_dtype", SPARSE_DTYPES)
def test_affine_forward_sparse_rows(rng, shape, blocks, x_dtype, w_dtype):
    """Blocks of mostly-zero rows (all-zero rows, NaN and -0.0 among them) sum the W rows
    at their nonzeros: equal to the dense product, in both builds."""
    n, k, m = shape
    x = rng.random((n, k)) * (rng.random((n, k)) < 0.2)
    x[n // 2] = 0
    x[0, : min(k, 3)] = [np.nan, -0.0, 1.5][: min(k, 3)]
    x = x.astype(x_dtype)
    W, b = normal(rng, (k, m), w_dtype), normal(rng, m, w_dtype)
    xw = None if x_dtype == w_dtype else np.empty((blocks * affine.CHUNK_ROWS, k), w_dtype)
    expected = ref.affine_forward(x.astype(w_dtype), W, b)
    for build in (kernels.affine_forward.serial, kernels.affine_forward.parallel):
        out, cols = np.full((n, m), np.nan, w_dtype), np.empty((blocks, k), np.int64)
        build(out, x, W, b, xw, 0.25, cols, blocks > 1)
        assert_close(out, expected, rtol_for(w_dtype))


@pytest.mark.parametrize("blocks", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 5, 3), (7, 13, 11), (40, 50, 9), (257, 100, 31)])
@pytest.mark.parametrize("x_dtype,w_dtype", SPARSE_DTYPES)
def test_affine_backward_sparse_dW(rng, shape, blocks, x_dtype, w_dtype):
    """dW from x's nonzeros (all-zero rows and columns, NaN and -0.0 among them), or
    with one nonzero too many the dense GEMM (a float32 x cast by the blocks): equal to
    x.T @ dout, in both builds, with dx and db."""
    n, k, m = shape
    x = rng.random((n, k)) * (rng.random((n, k)) < 0.2)
    x[n // 2], x[:, k // 2] = 0, 0
    x[0, : min(k, 3)] = [np.nan, -0.0, 1.5][: min(k, 3)]
    x = x.astype(x_dtype)
    dout, W = normal(rng, (n, m), w_dtype), normal(rng, (k, m), w_dtype)
    expected_dx, expected_dW, expected_db = ref.affine_backward(dout, x.astype(w_dtype), W)
    for max_nnz in (np.count_nonzero(x), np.count_nonzero(x) - 1):  # sparse, then not
        for build in (kernels.affine_backward.serial, kernels.affine_backward.parallel):
            dx, dW, db = (np.full(shape, np.nan, w_dtype) for shape in ((n, k), (k, m), m))
            nz = np.empty(nonzeros.buffer_size(n, k, blocks, max(max_nnz, 0)), np.int64)
            xw = np.empty((n, k), w_dtype) if x_dtype != w_dtype else None
            args = (dout, x, xw, W, dx, dW, db, True, max_nnz, nz)
            build(*args, np.empty((blocks, m), w_dtype), blocks > 1)
            for got, expected in ((dx, expected_dx), (dW, expected_dW), (db, expected_db)):
                assert_close(got, expected, rtol_for(w_dtype))


@pytest.mark.parametrize("need_dx", [True, False], ids=["need_dx", "no_dx"])
@pytest.mark.parametrize("shape", AFFINE_SHAPES.values(), ids=AFFINE_SHAPES.keys())
@pytest.mark.parametrize("blocks", [1, 2, 3])
def test_affine_backward(rng, dtype, shape, need_dx, blocks):
    n, k, m = shape
    dout, x, W = normal(rng, (n, m), dtype), normal(rng, (n, k), dtype), normal(rng, (k, m), dtype)
    dx, dW, db = np.empty((n, k), dtype), np.empty((k, m), dtype), np.empty(m, dtype)
    nz = np.empty(nonzeros.buffer_size(n, k, blocks, 0), np.int64)
    dbp = np.empty((blocks, m), dtype)
    args = (dout, x, None, W, dx, dW, db, need_dx, -1, nz, dbp, blocks > 1)
    outputs = {4: dx, 5: dW, 6: db, 10: dbp}
    (dx, dW, db, _), _ = run_builds(kernels.affine_backward, args, outputs)
    expected_dx, expected_dW, expected_db = ref.affine_backward(dout, x, W)
    rtol = rtol_for(dtype)
    if need_dx:
        assert_close(dx, expected_dx, rtol)
    else:
        assert np.isnan(dx).all()  # not computed, not even touched
    assert_close(dW, expected_dW, rtol)
    assert_close(db, expected_db, rtol)


@pytest.mark.parametrize("labels", LABEL_KINDS)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES.values(), ids=SOFTMAX_SHAPES.keys())
def test_softmax_ce(rng, dtype, shape, labels):
    n, c = shape
    x = normal(rng, shape, dtype, scale=5)
    t = index_labels(rng, n, c, np.int64 if labels == "onehot" else labels)
    if labels == "onehot":
        t = one_hot(t, c, dtype)
    (y,), loss = run_builds(kernels.softmax_ce_forward, (x, t, np.empty_like(x)), {2: x})
    expected_loss, expected_y = ref.softmax_ce_forward(x, t)
    rtol = rtol_for(dtype)
    assert_close(y, expected_y, rtol)
    assert_loss_close(loss, expected_loss, rtol)
    dout = 1.7
    (dx,), _ = run_builds(kernels.softmax_ce_backward, (y, t, dout / n, np.empty_like(y)), {3: y})
    assert_close(dx, ref.softmax_ce_backward(y, t, dout), rtol)


@pytest.mark.parametrize("name", CORE_KERNELS)
def test_dispatch_picks_the_build_by_size(name):
    kernel = getattr(kernels, name)
    crossover = kernels.CROSSOVER[name]
    assert kernel.pick(min(crossover, 1 << 40) - 1) is kernel.serial
    if crossover != NEVER:
        assert kernel.pick(crossover) is kernel.parallel
    with kernels.force_path("serial"):
        assert kernel.pick(1 << 30) is kernel.serial
    with kernels.force_path("parallel"):
        assert kernel.pick(1) is kernel.parallel
    assert kernel.parallel.targetoptions["parallel"] is True
    assert "parallel" not in kernel.serial.targetoptions


def test_calling_a_twin_runs_the_picked_build(monkeypatch):
    kernel, calls = kernels.relu_forward, []
    for path in ("serial", "parallel"):
        monkeypatch.setattr(kernel, path, lambda *args, path=path: calls.append((path, args[1:])))
    big = np.ones(kernels.CROSSOVER["relu_forward"])
    kernel(big[:10], 1, 2)
    kernel(big, 3, 4)
    with kernels.force_path("parallel"):
        kernel(big[:10], 5)
    assert calls == [("serial", (1, 2)), ("parallel", (3, 4)), ("parallel", (5,))]


def test_force_path_rejects_unknown_paths():
    with pytest.raises(ValueError, match="path"), kernels.force_path("gpu"):
        pass


def test_a_kernel_without_a_crossover_fails_at_definition():
    """Every @twin kernel needs its CROSSOVER entry: a missing one is an error where the
    kernel is defined (at import), not at its first call."""
    from fastbp.kernels.dispatch import twin

    with pytest.raises(LookupError, match="no_such_kernel has no CROSSOVER entry"):

        @twin
        def no_such_kernel(x):
            return x
