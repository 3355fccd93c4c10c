"""The fused train step (fastbp.fused, kernels/two_layer_step.py) against the book's TwoLayerNet.

Every combination runs on both builds (serial and parallel) and both first layers (dense
BLAS and sparse), with batches that have all-zero rows and all-zero columns.
"""

import time

import numpy as np
import pytest
from helpers import assert_close, assert_loss_close, normal, rtol_for

from fastbp import checks, reference
from fastbp.fused import TwoLayerStep
from fastbp.kernels import dispatch, force_path
from fastbp.nets import LayerNet, TwoLayerNet
from fastbp.optimizers import SGD
from fastbp.train import gradient_step

# (N, K, H, C): batch of one, odd sizes, more hidden units than a column block.
SHAPES = [(1, 9, 5, 3), (13, 37, 11, 4), (6, 20, 70, 10)]
# (x dtype, weights dtype): the book feeds float32 images to float64 weights.
DTYPES = [(np.float64, np.float64), (np.float32, np.float32), (np.float32, np.float64)]
PATHS = ("serial", "parallel")


def make_params(rng, k, h, c, dtype):
    return {
        "W1": normal(rng, (k, h), dtype, 0.3),
        "b1": normal(rng, h, dtype, 0.1),
        "W2": normal(rng, (h, c), dtype, 0.3),
        "b2": normal(rng, c, dtype, 0.1),
    }


def sparse_batch(rng, n, k, dtype, density=0.3):
    """About ``density`` nonzeros, an all-zero first column and (n > 2) second row."""
    x = rng.random((n, k)) * (rng.random((n, k)) < density)
    x[:, 0] = 0
    if n > 2:
        x[1] = 0
    x[0, 1] = 0.5  # at least one nonzero
    return x.astype(dtype)


def labels(rng, n, c, one_hot):
    t = rng.integers(0, c, n)
    return np.eye(c, dtype=np.float32)[t] if one_hot else t


def book_gradient(params, x, t):
    """(loss, grads) of the book's TwoLayerNet, computed in float64 from the same values."""
    net = reference.TwoLayerNet(*params["W1"].shape, params["W2"].shape[1])
    for name, p in params.items():
        net.params[name][...] = p
    grads = net.gradient(x.astype(np.float64), t)
    return net.lastLayer.loss, grads


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("one_hot", [False, True])
@pytest.mark.parametrize(("x_dtype", "w_dtype"), DTYPES)
@pytest.mark.parametrize(("n", "k", "h", "c"), SHAPES)
def test_gradient_matches_book(rng, n, k, h, c, x_dtype, w_dtype, one_hot, sparse, path):
    params = make_params(rng, k, h, c, w_dtype)
    x = sparse_batch(rng, n, k, x_dtype)
    t = labels(rng, n, c, one_hot)
    x_before = x.copy()
    step = TwoLayerStep.from_params(params, sparse=sparse)
    with force_path(path):
        grads = step.gradient(x, t)
    assert step.used_sparse == sparse
    loss, expected = book_gradient(params, x, t)
    rtol = rtol_for(w_dtype)
    assert_loss_close(step.loss, loss, rtol)
    assert step.loss.dtype == w_dtype
    for name in ("W1", "b1", "W2", "b2"):
        assert grads[name].dtype == w_dtype
        assert_close(grads[name], expected[name], rtol)
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("x_dtype", "w_dtype"), DTYPES)
@pytest.mark.parametrize(("n", "k", "h", "c"), SHAPES)
def test_loss_alone_matches_book_and_leaves_grads(rng, n, k, h, c, x_dtype, w_dtype, path):
    params = make_params(rng, k, h, c, w_dtype)
    x, t = sparse_batch(rng, n, k, x_dtype), labels(rng, n, c, False)
    step = TwoLayerStep.from_params(params)
    grads = {name: g.copy() for name, g in step.gradient(x[::-1].copy(), t).items()}
    with force_path(path):
        loss = step.loss_of(x, t)
    assert_loss_close(loss, book_gradient(params, x, t)[0], rtol_for(w_dtype))
    for name, g in step.grads.items():
        np.testing.assert_array_equal(g, grads[name])


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sgd_step_is_gradient_then_update(rng, dtype, sparse, path):
    n, k, h, c = SHAPES[1]
    params = make_params(rng, k, h, c, dtype)
    manual = {name: p.copy() for name, p in params.items()}
    x = sparse_batch(rng, n, k, np.float32)
    t = labels(rng, n, c, False)
    lr = 0.5
    with force_path(path):
        gradient_step = TwoLayerStep.from_params(manual, sparse=sparse)
        grads = gradient_step.gradient(x, t)
        for name in manual:
            manual[name] -= lr * grads[name]
        loss = TwoLayerStep.from_params(params, sparse=sparse).sgd_step(x, t, lr)
    assert_loss_close(loss, gradient_step.loss, rtol_for(dtype))
    for name in params:
        assert_close(params[name], manual[name], rtol_for(dtype))


def test_sgd_step_loss_is_before_the_update(rng):
    n, k, h, c = SHAPES[1]
    params = make_params(rng, k, h, c, np.float64)
    x = sparse_batch(rng, n, k, np.float64)
    t = labels(rng, n, c, False)
    expected, _ = book_gradient(params, x, t)
    loss = TwoLayerStep.from_params(params).sgd_step(x, t, 0.1)
    assert_loss_close(loss, expected, 1e-12)
    assert book_gradient(params, x, t)[0] < expected  # the step went downhill


def test_auto_times_the_first_call_of_a_shape_then_keeps_its_choice(rng, monkeypatch):
    """``sparse="auto"``: the first call of a shape times both first layers; every call
    after takes the chosen one (the same bits each time), equal to the dense path's
    results to rounding."""
    monkeypatch.setattr(dispatch, "_sparse_choices", {})
    n, k, h, c = SHAPES[1]
    params = make_params(rng, k, h, c, np.float64)
    step, dense = (TwoLayerStep.from_params(params, sparse=s) for s in ("auto", False))
    x, t = sparse_batch(rng, n, k, np.float64, density=0.05), labels(rng, n, c, False)
    first = {name: g.copy() for name, g in step.gradient(x, t).items()}
    (density,) = dispatch._sparse_choices.values()
    assert density in (dispatch.SPARSE_GATE, -1.0)
    for _ in range(3):
        grads = step.gradient(x, t)
        assert step.used_sparse == (density > 0)
        for name, g in grads.items():
            np.testing.assert_array_equal(g, first[name], strict=True)
    assert_close(first["W1"], dense.gradient(x, t)["W1"], 1e-12)
    assert len(dispatch._sparse_choices) == 1


@pytest.mark.parametrize("n", [13, 700])  # 700: the trial runs take the first 512 rows
def test_auto_first_sgd_step_updates_the_params_once(rng, monkeypatch, n):
    """The trial runs of the first call compute, never update: one sgd_step moves the
    params by one step of the book's gradient."""
    monkeypatch.setattr(dispatch, "_sparse_choices", {})
    k, h, c = 784, 20, 10
    params = make_params(rng, k, h, c, np.float64)
    x, t = sparse_batch(rng, n, k, np.float32, density=0.15), labels(rng, n, c, True)
    loss, grads = book_gradient(params, x, t)
    expected = {name: p - 0.1 * grads[name] for name, p in params.items()}
    assert_loss_close(TwoLayerStep.from_params(params).sgd_step(x, t, 0.1), loss, 1e-12)
    for name, p in params.items():
        assert_close(p, expected[name], 1e-12)


def test_auto_keeps_the_blas_where_the_first_batch_is_too_dense(rng, monkeypatch):
    monkeypatch.setattr(dispatch, "_sparse_choices", {})
    n, k, h, c = SHAPES[1]
    step = TwoLayerStep.from_params(make_params(rng, k, h, c, np.float64))
    x, t = rng.random((n, k)), labels(rng, n, c, False)
    step.gradient(x, t)
    assert not step.used_sparse
    assert list(dispatch._sparse_choices.values()) == [-1.0]
    step.gradient(sparse_batch(rng, n, k, np.float64, density=0.05), t)
    assert not step.used_sparse


@pytest.mark.parametrize(
    ("sparse_time", "dense_time", "wins"), [(0.002, 0.006, True), (0.006, 0.002, False)]
)
def test_the_sparse_layer_is_kept_only_where_it_was_faster(
    monkeypatch, sparse_time, dense_time, wins
):
    monkeypatch.setattr(dispatch, "_sparse_choices", {})
    calls = []

    def trial(density, rows):
        calls.append(density)
        time.sleep(sparse_time if density >= 0 else dense_time)
        return density >= 0

    expected = dispatch.SPARSE_GATE if wins else -1.0
    assert dispatch.choose_sparse("shape", 100, trial) == expected
    assert len(calls) == 1 + 2 * dispatch.SPARSE_TRIALS
    assert (
        dispatch.choose_sparse("shape", 100, trial) == dispatch.sparse_density("shape") == expected
    )
    assert len(calls) == 1 + 2 * dispatch.SPARSE_TRIALS  # timed once


def test_buffers_are_reused(rng):
    n, k, h, c = SHAPES[1]
    params = make_params(rng, k, h, c, np.float64)
    step = TwoLayerStep.from_params(params, sparse=True)
    x = sparse_batch(rng, n, k, np.float32)
    t = labels(rng, n, c, False)
    first = step.gradient(x, t)
    buffers = {name: id(b) for name, b in step._work.items()}
    ids = {name: id(g) for name, g in first.items()}
    for batch in (n, n - 4, n):  # same size, smaller, same again
        grads = step.gradient(x[:batch], t[:batch])
        assert {name: id(g) for name, g in grads.items()} == ids
        step.sgd_step(x[:batch], t[:batch], 0.1)
        assert {name: id(b) for name, b in step._work.items()} == buffers
    step.gradient(np.vstack([x, x]), np.concatenate([t, t]))  # larger: enlarged once
    assert id(step._work["z1"]) != buffers["z1"]


def test_fresh_gradients_on_request(rng):
    n, k, h, c = SHAPES[1]
    step = TwoLayerStep.from_params(make_params(rng, k, h, c, np.float64))
    x = sparse_batch(rng, n, k, np.float64)
    t = labels(rng, n, c, False)
    kept = step.gradient(x, t, reuse=False)
    copy = {name: g.copy() for name, g in kept.items()}
    step.gradient(x[::-1], t[::-1])
    assert all(kept[name] is not step.grads[name] for name in kept)
    for name in kept:
        np.testing.assert_array_equal(kept[name], copy[name])


def test_image_shaped_batches_are_flattened(rng):
    params = make_params(rng, 12, 5, 3, np.float64)
    x = rng.random((4, 1, 3, 4))
    t = labels(rng, 4, 3, False)
    grads = TwoLayerStep.from_params(params).gradient(x, t)
    expected = book_gradient(params, x.reshape(4, -1), t)[1]
    assert_close(grads["W1"], expected["W1"], 1e-12)


@pytest.mark.parametrize(
    ("t", "error"),
    [
        (np.array([0, 1, 3]), ValueError),  # out of range for 3 classes
        (np.array([0, -1, 2]), ValueError),
        (np.array([0, 1]), ValueError),  # wrong length
        (np.array([0.0, 1.0, 2.0]), TypeError),
        (np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]]), ValueError),  # not one-hot
    ],
)
def test_bad_labels_raise_before_the_kernel(rng, t, error):
    params = make_params(rng, 8, 5, 3, np.float64)
    before = {name: p.copy() for name, p in params.items()}
    step = TwoLayerStep.from_params(params)
    with pytest.raises(error, match="t"):
        step.sgd_step(rng.random((3, 8)), t, 0.1)
    for name in params:
        np.testing.assert_array_equal(params[name], before[name])
    assert step.loss is None


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.ones((3, 7)), ValueError, "features"),
        (np.ones((3, 8), np.int64), TypeError, "x"),
        (np.ones((0, 8)), ValueError, "empty"),
        (np.ones(8), ValueError, "x"),
    ],
)
def test_bad_batches_raise(rng, x, error, match):
    step = TwoLayerStep.from_params(make_params(rng, 8, 5, 3, np.float64))
    with pytest.raises(error, match=match):
        step.gradient(x, np.zeros(len(x), np.int64))


def test_bad_params_raise(rng):
    p = make_params(rng, 8, 5, 3, np.float64)
    with pytest.raises(ValueError, match="b1"):
        TwoLayerStep(p["W1"], p["b2"], p["W2"], p["b2"])
    with pytest.raises(TypeError, match="W2"):
        TwoLayerStep(p["W1"], p["b1"], p["W2"].astype(np.float32), p["b2"])
    with pytest.raises(ValueError, match="W1"):
        TwoLayerStep(np.asfortranarray(p["W1"]), p["b1"], p["W2"], p["b2"])
    with pytest.raises(TypeError, match="W1"):
        TwoLayerStep(p["W1"].tolist(), p["b1"], p["W2"], p["b2"])
    with pytest.raises(ValueError, match="sparse"):
        TwoLayerStep.from_params(p, sparse="yes")
    with pytest.raises(TypeError, match="lr"):
        TwoLayerStep.from_params(p).sgd_step(np.ones((1, 8)), [0], "0.1")


def layer_by_layer(net, x, t):
    """The layer API's backprop (what TwoLayerNet.gradient does without the fused step)."""
    return LayerNet.gradient(net, x, t)


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_net_gradient_is_fused_and_equals_the_layers(rng, x_dtype):
    net = TwoLayerNet(37, 11, 4, rng=1)
    x = sparse_batch(rng, 13, 37, x_dtype)
    t = labels(rng, 13, 4, False)
    assert net.fused_step(x) is not None
    grads = net.gradient(x, t)
    loss = net.lastLayer.loss
    expected = layer_by_layer(net, x, t)
    assert loss == pytest.approx(net.lastLayer.loss, rel=1e-12)
    for name in expected:
        assert grads[name].dtype == expected[name].dtype
        assert_close(grads[name], expected[name], 1e-12)
    again = net.gradient(x, t)
    assert all(again[name] is not grads[name] for name in grads)  # new arrays every call


def test_net_gradient_falls_back_to_the_layers(rng):
    net = TwoLayerNet(10, 6, 3, dtype=np.float32, rng=2)
    x = rng.random((5, 10))  # float64 batch, float32 params: NumPy computes in float64
    t = labels(rng, 5, 3, False)
    assert net.fused_step(x) is None
    assert net.gradient(x, t)["W1"].dtype == np.float64
    assert net.fused_step(x.astype(np.float32)) is not None


def test_train_step_with_sgd_is_one_fused_call(rng, monkeypatch):
    calls = []
    sgd_step = TwoLayerStep.sgd_step
    monkeypatch.setattr(TwoLayerStep, "sgd_step", lambda *a: calls.append(a) or sgd_step(*a))
    fused, plain = TwoLayerNet(37, 11, 4, rng=3), TwoLayerNet(37, 11, 4, rng=3)
    x = sparse_batch(rng, 13, 37, np.float32)
    t = labels(rng, 13, 4, True)
    loss = gradient_step(fused, SGD(lr=0.3), x, t)
    assert len(calls) == 1
    grads = layer_by_layer(plain, x, t)
    for name, p in plain.params.items():
        p -= 0.3 * grads[name]
    assert loss == pytest.approx(float(plain.lastLayer.loss), rel=1e-12)
    for name in plain.params:
        assert_close(fused.params[name], plain.params[name], 1e-12)


def test_train_step_runs_a_wrapper_s_own_gradient(rng):
    class Wrapper:  # like fastbp.distributed.DataParallel: delegates unknown attributes
        def __init__(self, net):
            self.net, self.calls = net, 0

        def __getattr__(self, name):
            return getattr(self.net, name)

        def gradient(self, x, t):
            self.calls += 1
            return self.net.gradient(x, t)

    wrapper = Wrapper(TwoLayerNet(37, 11, 4, rng=4))
    gradient_step(
        wrapper, SGD(lr=0.1), sparse_batch(rng, 5, 37, np.float32), labels(rng, 5, 4, False)
    )
    assert wrapper.calls == 1


@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_fused_net_leaves_the_layers_as_the_book_does(rng, x_dtype):
    """After the fused loss and gradient, what a script reads from the layers (dW, db, x,
    mask, y, loss) is this batch's, equal to a layer-by-layer pass, and each layer's
    backward runs on it (issue: stale attributes after the fused gradient)."""
    fused, layered = TwoLayerNet(37, 11, 4, rng=3), TwoLayerNet(37, 11, 4, rng=3)
    x = sparse_batch(rng, 13, 37, x_dtype)
    t = labels(rng, 13, 4, True)
    grads = fused.gradient(x, t)
    LayerNet.gradient(layered, x, t)
    for name in ("Affine1", "Affine2"):
        ours, book = fused.layers[name], layered.layers[name]
        assert ours.dW is grads["W" + name[-1]] and ours.db is grads["b" + name[-1]]
        for attr in ("dW", "db", "x"):
            assert_close(getattr(ours, attr), getattr(book, attr), 1e-12)
    np.testing.assert_array_equal(fused.layers["Relu1"].mask, layered.layers["Relu1"].mask)
    assert_close(fused.lastLayer.y, layered.lastLayer.y, 1e-12)
    assert fused.lastLayer.loss == pytest.approx(layered.lastLayer.loss, rel=1e-12)
    dout = fused.lastLayer.backward(1)
    for layer in reversed(fused.layers.values()):
        dout = layer.backward(dout)
    assert dout.shape == x.shape
    dW = fused.layers["Affine1"].dW
    fused.loss(x[:5], t[:5])  # the forward alone moves the forward state, not dW
    assert fused.layers["Affine1"].x.shape == (5, 37)
    assert fused.layers["Affine1"].dW is dW


def test_one_net_shared_by_threads_gives_each_call_its_own_gradient(rng):
    """Issue 10, finding 1: threads sharing one TwoLayerNet (its fused step's buffers)
    with sparse and dense batches of different sizes: every gradient is the one a lone
    call gives (it segfaulted or was silently wrong when the buffers were shared)."""
    import threading

    net = TwoLayerNet(60, 16, 5, rng=4)
    batches = [
        (sparse_batch(rng, n, 60, np.float32), labels(rng, n, 5, False)) for n in (3, 40, 17)
    ]
    batches += [(rng.random((n, 60)), labels(rng, n, 5, True)) for n in (1, 29)]
    expected = [net.gradient(x, t) for x, t in batches]
    failures = []

    def work(seed):
        order = np.random.default_rng(seed).permutation(len(batches) * 8) % len(batches)
        for i in order:
            try:
                got = net.gradient(*batches[i])
            except Exception as error:  # noqa: BLE001  (a thread's error is a failure)
                failures.append(repr(error))
                continue
            if not all(np.array_equal(got[k], expected[i][k]) for k in got):
                failures.append(i)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_step_state_changed_between_calls_is_checked_on_every_call(rng):
    """Issue 10, finding 3: sparse switched, a param replaced by another shape or reshaped
    in place, a gradient buffer replaced: checked before the kernel runs (these crashed)."""
    n, k, h, c = SHAPES[1]
    params = make_params(rng, k, h, c, np.float64)
    step = TwoLayerStep.from_params(params, sparse=False)
    x, t = sparse_batch(rng, n, k, np.float64), labels(rng, n, c, False)
    step.gradient(x, t)
    step.sparse = True
    assert_close(step.gradient(x, t)["W1"], book_gradient(params, x, t)[1]["W1"], 1e-12)
    assert step.used_sparse
    step.sparse = "sometimes"
    with pytest.raises(ValueError, match="sparse"):
        step.gradient(x, t)
    step.sparse = False
    step.params["W1"] = np.zeros((k + 1, h))
    with pytest.raises(ValueError, match="features per sample"):
        step.gradient(x, t)
    step.params["W1"] = params["W1"]
    params["b1"].shape = (1, h)  # reshaped in place
    with pytest.raises(ValueError, match="b1"):
        step.gradient(x, t)
    params["b1"].shape = (h,)
    step.grads["W2"] = np.zeros((h + 3, c))
    with pytest.raises(ValueError, match=r"grads\['W2'\]"):
        step.gradient(x, t)
    step.grads["W2"] = params["W2"]  # the parameter itself
    with pytest.raises(ValueError, match="share memory"):
        step.gradient(x, t)
    step.grads["W2"] = np.zeros((h, c))
    step.gradient(x, t)  # these grads and params were checked: the next call skips it ...
    step.params["b2"] = step.grads["b2"][:]  # ... until a param is another array
    with pytest.raises(ValueError, match="share memory"):
        step.gradient(x, t)
    step.params["b2"] = params["b2"]
    step.gradient(x, t)
    step.grads["b1"] = params["b1"].view()  # or a gradient is
    with pytest.raises(ValueError, match="share memory"):
        step.gradient(x, t)


def test_sparse_offsets_are_64_bit(rng):
    """Issue 10, finding 4: the nonzero offsets are int64, so past 2**31 nonzeros they
    cannot wrap (such a batch needs > 8 GB: the dtype is what is checked here)."""
    n, k, h, c = SHAPES[1]
    step = TwoLayerStep.from_params(make_params(rng, k, h, c, np.float64), sparse=True)
    step.gradient(sparse_batch(rng, n, k, np.float64), labels(rng, n, c, False))
    assert step._work["nz"].dtype == np.int64


@pytest.mark.parametrize("dtype", [np.bool_, np.int8, np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 7, 300])
def test_labels_classes_are_the_one_hot_argmax(rng, dtype, n):
    t = np.eye(10, dtype=dtype)[rng.integers(0, 10, n)]
    classes = np.full(n, -1, np.intp)
    checked = checks.labels(t, n, 10, np.float64, classes)
    np.testing.assert_array_equal(checked, t)
    np.testing.assert_array_equal(classes, t.argmax(axis=1))
    index_labels = rng.integers(0, 10, n)
    np.testing.assert_array_equal(
        checks.labels(index_labels, n, 10, np.float64, classes), index_labels
    )
    np.testing.assert_array_equal(classes, t.argmax(axis=1))  # left alone for index labels


@pytest.mark.parametrize("bad", ["two ones", "no one", "a half", "nan"])
def test_labels_classes_reject_what_labels_rejects(rng, bad):
    t = np.eye(4)[rng.integers(0, 4, 6)]
    t[3] = {"two ones": [1, 1, 0, 0], "no one": 0, "a half": [0.5, 0, 0, 0], "nan": np.nan}[bad]
    with pytest.raises(ValueError, match=r"row 3 does not"):
        checks.labels(t, 6, 4, np.float64)
    with pytest.raises(ValueError, match=r"row 3 does not"):
        checks.labels(t, 6, 4, np.float64, np.empty(6, np.intp))
