# ruff: noqa: NPY002 (the book draws from the global np.random state; the tests seed it)
"""SimpleConvNet, DeepConvNet, MultiLayerNetExtend, Nesterov, RMSprop and Trainer.

Gradient checks against numerical gradients; the book's own classes (from ../shared/book,
skipped where absent) as the oracle for initial weights, losses, gradients, save/load
round trips and the Trainer's output.
"""

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from fastbp import optimizers
from fastbp import reference as ref
from fastbp.gradcheck import numerical_gradient
from fastbp.nets import DeepConvNet, MultiLayerNetExtend, SimpleConvNet
from fastbp.trainer import Trainer

BOOK = Path(__file__).resolve().parents[1].parent / "shared" / "book"
SMALL_CONV = {"filter_num": 3, "filter_size": 3, "pad": 0, "stride": 1}


@pytest.fixture(scope="module")
def book():
    """The book's modules by name (common.*, simple_convnet, deep_convnet)."""
    if not BOOK.is_dir():
        pytest.skip("the book's code (../shared/book) is not here")
    added = [str(BOOK), str(BOOK / "ch07"), str(BOOK / "ch08")]
    sys.path[:0] = added
    try:
        names = ("common.layers", "common.optimizer", "common.multi_layer_net_extend")
        names += ("common.trainer", "simple_convnet", "deep_convnet")
        yield {name.split(".")[-1]: importlib.import_module(name) for name in names}
    finally:
        del sys.path[: len(added)]


def small_deep_convnet(**kw):
    params = [{"filter_num": n, "filter_size": 3, "pad": p, "stride": 1} for n, p in
              ((2, 1), (2, 1), (3, 1), (3, 2), (4, 1), (4, 1))]  # fmt: skip
    return DeepConvNet((1, 8, 8), *params, hidden_size=5, output_size=3, **kw)


def assert_gradients_match(grads, numerical, atol):
    """Central differences (h = 1e-4) are good to ~1e-5 relative through ReLU nets."""
    assert grads.keys() == numerical.keys()
    for key in grads:
        np.testing.assert_allclose(grads[key], numerical[key], rtol=1e-4, atol=atol, err_msg=key)


def seeded_losses(net, seed=3):
    """Make each loss evaluation draw the same dropout masks (a fixed function)."""
    loss = net.loss

    def fixed(*args, **kwargs):
        np.random.seed(seed)
        return loss(*args, **kwargs)

    net.loss = fixed
    return net


def test_simple_convnet_gradient_matches_numerical(rng):
    net = SimpleConvNet((2, 7, 7), SMALL_CONV, hidden_size=4, output_size=3, weight_init_std=0.3,
                        rng=rng)  # fmt: skip
    x, t = rng.random((2, 2, 7, 7)), np.array([[1], [2]])  # (N, 1) labels, as ch07
    assert_gradients_match(net.gradient(x, t), net.numerical_gradient(x, t), 1e-6)


def test_deep_convnet_gradient_matches_numerical(rng):
    net = seeded_losses(small_deep_convnet(rng=rng))
    x, t = rng.random((2, 1, 8, 8)), np.array([0, 2])
    assert_gradients_match(net.gradient(x, t), net.numerical_gradient(x, t), 1e-6)


def test_multilayer_net_extend_gradient_matches_numerical(rng):
    net = MultiLayerNetExtend(6, [5, 4], 3, weight_decay_lambda=0.1, use_dropout=True,
                              dropout_ration=0.2, use_batchnorm=True, rng=rng)  # fmt: skip
    net = seeded_losses(net)
    x, t = rng.random((4, 6)), np.eye(3)[[0, 1, 2, 1]]
    grads = net.gradient(x, t)
    assert list(grads) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "gamma2", "beta2"] + [
        "W3",
        "b3",
    ]
    assert_gradients_match(grads, net.numerical_gradient(x, t), 1e-6)


def test_convnets_reproduce_the_books_weights_and_gradients(book, rng):
    x, t = rng.random((3, 1, 28, 28)).astype(np.float32), np.array([1, 5, 9])
    for ours, theirs in ((SimpleConvNet, book["simple_convnet"].SimpleConvNet),
                         (DeepConvNet, book["deep_convnet"].DeepConvNet)):  # fmt: skip
        np.random.seed(11)
        net = ours()
        np.random.seed(11)
        book_net = theirs()
        for key, value in book_net.params.items():
            np.testing.assert_array_equal(net.params[key], value)
        np.random.seed(12)
        grads = net.gradient(x, t)
        np.random.seed(12)
        book_grads = book_net.gradient(x, t)
        for key, value in book_grads.items():
            assert_close(grads[key], value, 1e-10)
        assert net.accuracy(x, t, 2) == pytest.approx(
            book_net.accuracy(x[:2], t[:2], 2) * 2 / 3 + float(net.accuracy(x[2:], t[2:])) / 3
        )


def test_save_and_load_params_both_ways(book, rng, tmp_path):
    x = rng.random((4, 1, 28, 28))
    np.random.seed(1)
    book_net = book["simple_convnet"].SimpleConvNet()
    book_net.save_params(tmp_path / "book.pkl")
    net = SimpleConvNet(rng=0)
    net.load_params(tmp_path / "book.pkl")
    assert_close(net.predict(x), book_net.predict(x), 1e-12)
    assert net.layers["Conv1"].W is net.params["W1"]
    net.params["W1"] *= 1.5  # in place: the layers see it
    net.save_params(tmp_path / "ours.pkl")
    book_net.load_params(tmp_path / "ours.pkl")
    assert_close(book_net.predict(x), net.predict(x), 1e-12)
    deep, book_deep = DeepConvNet(rng=2), book["deep_convnet"].DeepConvNet()
    deep.save_params(tmp_path / "deep.pkl")
    book_deep.load_params(tmp_path / "deep.pkl")
    assert_close(book_deep.predict(x), deep.predict(x), 1e-12)


@pytest.mark.parametrize("flags", [(False, False), (True, False), (False, True), (True, True)])
def test_multilayer_net_extend_is_the_books(book, rng, flags):
    use_dropout, use_batchnorm = flags
    x, t = rng.random((10, 20)).astype(np.float32), rng.integers(0, 4, 10)
    nets = []
    for cls in (MultiLayerNetExtend, book["multi_layer_net_extend"].MultiLayerNetExtend):
        np.random.seed(4)
        nets.append(cls(20, [8, 6], 4, weight_decay_lambda=0.01, use_dropout=use_dropout,
                        use_batchnorm=use_batchnorm))  # fmt: skip
    net, book_net = nets
    assert list(net.layers) == list(book_net.layers)
    for _ in range(3):
        np.random.seed(5)
        grads = net.gradient(x, t)
        np.random.seed(5)
        book_grads = book_net.gradient(x, t)
        for key, value in book_grads.items():  # b before batch norm: 0 plus rounding
            np.testing.assert_allclose(grads[key], value, rtol=1e-9, atol=1e-14)
            net.params[key] -= 0.1 * grads[key]
            book_net.params[key] -= 0.1 * value
    assert net.accuracy(x, t) == book_net.accuracy(x, t)
    assert net.loss(x, t) == pytest.approx(book_net.loss(x, t), rel=1e-10)


@pytest.mark.parametrize("name", ["Nesterov", "RMSprop"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_new_optimizers_match_the_reference(rng, name, dtype):
    params = {
        "W": rng.standard_normal((5, 7)).astype(dtype),
        "b": rng.standard_normal(7).astype(dtype),
    }
    book_params = {key: value.copy() for key, value in params.items()}
    opt, book_opt = getattr(optimizers, name)(lr=0.05), getattr(ref, name)(lr=0.05)
    W = params["W"]
    for _ in range(4):
        grads = {key: rng.standard_normal(p.shape).astype(dtype) for key, p in params.items()}
        opt.update(params, grads)
        book_opt.update(book_params, grads)
        for key in params:
            assert params[key].dtype == book_params[key].dtype
            assert_close(params[key], book_params[key], 1e-6 if dtype == np.float32 else 1e-13)
    assert params["W"] is W


def test_trainer_prints_and_records_like_the_books(book, rng, capsys):
    # 100 samples per evaluation: the book's accuracy skips a last partial batch.
    x, t = rng.random((300, 1, 8, 8)), rng.integers(0, 3, 300)
    runs = []
    for net_cls, trainer_cls in (
        (SimpleConvNet, Trainer),
        (book["simple_convnet"].SimpleConvNet, book["trainer"].Trainer),
    ):
        np.random.seed(9)
        net = net_cls((1, 8, 8), SMALL_CONV, hidden_size=6, output_size=3, weight_init_std=0.1)
        trainer = trainer_cls(net, x[:200], t[:200], x[200:], t[200:], epochs=2,
                              mini_batch_size=50, optimizer="RMSprop",
                              optimizer_param={"lr": 0.01},
                              evaluate_sample_num_per_epoch=100)  # fmt: skip
        trainer.train()
        runs.append((trainer, capsys.readouterr().out))
    (ours, out), (books, book_out) = runs
    assert [line.split(":")[0] for line in out.splitlines()] == [
        line.split(":")[0] for line in book_out.splitlines()
    ]
    np.testing.assert_allclose(ours.train_loss_list, books.train_loss_list, rtol=1e-10)
    assert ours.train_acc_list == books.train_acc_list
    assert ours.test_acc_list == books.test_acc_list


def test_numerical_gradient_is_the_books_central_difference():
    x = np.array([1.0, 2.0])
    np.testing.assert_allclose(numerical_gradient(lambda _: np.sum(x**2), x), 2 * x, rtol=1e-8)
