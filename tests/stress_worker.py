"""Scenarios for tests/test_stress.py, each run in its own interpreter under a timeout.

    python stress_worker.py threads ROUNDS     # threads sharing layer objects, shapes vary
    python stress_worker.py mutate             # layer state changed between calls
    python stress_worker.py idx-bomb PATH DECLARED   # read a gzip bomb, report peak memory
    python stress_worker.py idx-stream         # an endless FIFO behind a valid IDX header
    python stress_worker.py softmax OUT.npz    # parallel softmax outputs (cache determinism)

A scenario prints "OK ..." and exits 0 when every check passes; a failed check raises
(exit 1); memory corruption shows up as the signal the test sees.
"""

import os
import resource
import sys
import threading
import warnings

import numpy as np

# Exceptions a call may raise when another thread changed the shared state it reads:
# clear errors naming the argument, never anything else.
CLEAR = (ValueError, TypeError, RuntimeError)


def attempt(call, *args):
    """call(*args), or None when it raised one of the CLEAR errors."""
    try:
        return call(*args)
    except CLEAR:
        return None


def layer_calls(layers, rng, n, cols):
    """Forward and backward through each shared layer on a batch of n rows; every result
    that comes back must be internally consistent."""
    relu, sigmoid, affine, softmax = layers
    x = rng.standard_normal((n, cols))
    for layer in (relu, sigmoid):
        out = attempt(layer.forward, x)
        assert out is None or out.shape == x.shape
        dx = attempt(layer.backward, x)
        assert dx is None or dx.shape == x.shape
    out = attempt(affine.forward, x)
    if out is None:
        return
    assert out.shape[0] == n
    dx = attempt(affine.backward, np.ones_like(out))
    assert dx is None or dx.shape[1:] == x.shape[1:]  # some thread's x, in one piece
    loss = attempt(softmax.forward, out, rng.integers(0, out.shape[1], n))
    assert loss is None or np.isfinite(loss)
    dx = attempt(softmax.backward)
    assert dx is None or (dx.ndim == 2 and np.all(np.isfinite(dx)))


def threads(rounds):
    from fastbp import layers
    from fastbp.kernels import force_path

    cols = 64
    rng = np.random.default_rng(0)
    shared = (
        layers.Relu(),
        layers.Sigmoid(),
        layers.Affine(rng.standard_normal((cols, 16)), rng.standard_normal(16)),
        layers.SoftmaxWithLoss(),
    )
    # Batch sizes from 1 row to above every parallel crossover (1 << 16 elements).
    sizes = (1, 3, 17, 300, 1100, 2048)
    failures = []
    start = threading.Barrier(len(sizes) + 1)

    def worker(index):
        try:
            rng = np.random.default_rng(index)
            start.wait()
            for round_ in range(int(rounds)):
                path = ("serial", "parallel")[(index + round_) % 2]
                with force_path(path):
                    n = sizes[(index + round_) % len(sizes)]
                    layer_calls(shared, rng, n, cols)
        except BaseException as error:  # reported by the main thread
            failures.append(repr(error))

    def mutator():
        """Swaps the shared state for arrays of other shapes and dtypes meanwhile."""
        rng = np.random.default_rng(99)
        relu, sigmoid, affine, _ = shared
        start.wait()
        for i in range(int(rounds) * 4):
            relu.mask = rng.random((i % 7 + 1, cols)) < 0.5
            sigmoid.out = rng.random((i % 5 + 1, cols)).astype(np.float32)
            if i % 3 == 0:
                W = affine.W
                W.shape = (cols // 2, 32)  # in place, as a user could; then back
                W.shape = (cols, 16)

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(len(sizes))]
    workers.append(threading.Thread(target=mutator))
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=240)
        assert not thread.is_alive(), "a thread hung"
    assert not failures, failures[:3]
    print(f"OK threads={len(workers)} rounds={rounds}")


def mutate():
    """State changed between forward and backward: a clear error or a right answer."""
    from fastbp import layers, reference

    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6))
    relu, sigmoid = layers.Relu(), layers.Sigmoid()
    relu.forward(x)
    sigmoid.forward(x)
    for layer, name, value in [
        (relu, "mask", np.ones((3, 6), bool)),  # other shape
        (relu, "mask", np.ones((4, 6))),  # other dtype
        (relu, "mask", "garbage"),
        (sigmoid, "out", np.ones((2, 6))),
        (sigmoid, "out", np.ones((4, 6), np.int64)),
    ]:
        setattr(layer, name, value)
        try:
            layer.backward(x)
        except (ValueError, TypeError) as error:
            assert name in str(error) or "dout" in str(error), error
        else:
            raise AssertionError(f"{type(layer).__name__}.{name} = {value!r} was accepted")
    relu.mask = np.asfortranarray(x <= 0)  # a valid mask in another layout: used as is
    np.testing.assert_array_equal(relu.backward(x), np.where(x <= 0, 0, x))
    W, b = rng.standard_normal((6, 3)), rng.standard_normal(3)
    affine = layers.Affine(W, b)
    out = affine.forward(x)
    affine.W = rng.standard_normal((6, 5))  # replaced by another shape before backward
    try:
        affine.backward(np.ones_like(out))
    except ValueError as error:
        assert "W" in str(error)
    else:
        raise AssertionError("a W of another shape was accepted")
    affine.W = W
    W.shape = (3, 6)  # the caller's W reshaped in place
    try:
        affine.backward(np.ones_like(out))
    except ValueError as error:
        assert "W" in str(error)
    else:
        raise AssertionError("a W reshaped in place was accepted")
    W.shape = (6, 3)
    softmax = layers.SoftmaxWithLoss()
    t = np.array([0, 1, 2, 0])
    softmax.forward(out, t)
    t[:] = 99  # the caller's labels changed after forward: backward uses its own copy
    softmax.t = None
    softmax.y = None
    expected = reference.softmax_ce_backward(
        reference.softmax_ce_forward(out, np.array([0, 1, 2, 0]))[1], np.array([0, 1, 2, 0]), 1.0
    )
    np.testing.assert_allclose(softmax.backward(), expected, rtol=1e-12)
    print("OK mutate")


def peak_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def idx_bomb(path, declared):
    from fastbp.data import IMAGE_MAGIC, read_idx

    before = peak_bytes()
    try:
        read_idx(path, IMAGE_MAGIC)
    except ValueError as error:
        assert "trailing" in str(error), error
    else:
        raise AssertionError("the bomb was accepted")
    grown = peak_bytes() - before
    assert grown <= 2 * int(declared) + (16 << 20), f"peak grew by {grown} bytes"
    print(f"OK idx-bomb grown={grown}")


def idx_stream():
    """A FIFO fed a valid header declaring 2 images of 4x4, then zeros without end."""
    import tempfile

    from fastbp.data import IMAGE_MAGIC, read_idx

    fifo = os.path.join(tempfile.mkdtemp(), "endless-idx3-ubyte")
    os.mkfifo(fifo)

    def feed():
        header = b"".join(v.to_bytes(4, "big") for v in (IMAGE_MAGIC, 2, 4, 4))
        with warnings.catch_warnings(), open(fifo, "wb") as f:
            f.write(header)
            try:
                while True:
                    f.write(bytes(1 << 16))
            except BrokenPipeError:
                pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    try:
        read_idx(fifo, IMAGE_MAGIC)
    except ValueError as error:
        assert "trailing" in str(error), error
    else:
        raise AssertionError("the endless stream was accepted")
    print("OK idx-stream")


def softmax(out):
    """Parallel softmax outputs for several class counts (compiled here or loaded)."""
    from fastbp import kernels

    rng = np.random.default_rng(0)
    results, hits = {}, 0
    for dtype in (np.float32, np.float64):
        for c in (10, 37, 100):
            x = (3 * rng.standard_normal((200, c))).astype(dtype)
            t = rng.integers(0, c, 200)
            y = np.empty_like(x)
            loss = kernels.softmax_ce_forward.parallel(x, t, y)
            results[f"{np.dtype(dtype).name}/{c}"] = y
            results[f"{np.dtype(dtype).name}/{c}/loss"] = np.array(loss)
    hits = sum(kernels.softmax_ce_forward.parallel.stats.cache_hits.values())
    np.savez(out, **results)
    print(f"OK softmax hits={hits}")


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    scenarios = {
        "threads": threads,
        "mutate": mutate,
        "idx-bomb": idx_bomb,
        "idx-stream": idx_stream,
        "softmax": softmax,
    }
    scenarios[scenario](*args)
