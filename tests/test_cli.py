"""The fastbp command: fastbp train end to end (short runs), options, bench wiring."""

import re
import subprocess
import sys

import numpy as np
import pytest

from fastbp import cli
from fastbp.nets import TwoLayerNet
from fastbp.optimizers import SGD
from fastbp.train import History, plot_history, train
from tests.test_data import fake_mnist

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_main(capsys, *argv):
    status = cli.main(["train", "--no-progress", *argv])
    out = capsys.readouterr().out
    assert status == 0, out
    return out


def numbers_only(out):
    """The output without what depends on the clock or on paths (throughput, time)."""
    out = re.sub(r"\(\S+ samples/s\)", "", out)
    return [
        line
        for line in out.splitlines()
        if not line.startswith(("time ", "kernels ready", "learning curve"))
    ]


def test_train_as_a_subprocess(tmp_path):
    plot = tmp_path / "curve.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastbp",
            "train",
            "--epochs",
            "1",
            "--no-progress",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "8,000 training, 2,000 test images" in out
    assert "TwoLayerNet(784, 50, 10) float64, SGD(lr=0.5), batch 100, 1 epochs, seed 0" in out
    epoch = re.search(
        r"epoch 1/1  loss (\S+)  train acc (\S+)  test acc (\S+)  \((\S+) samples/s\)", out
    )
    assert epoch, out
    assert float(epoch[3]) > 0.8 and float(epoch[4].replace(",", "")) > 0
    assert f"learning curve: {plot}" in out
    assert plot.read_bytes().startswith(PNG_MAGIC) and plot.stat().st_size > 10_000
    assert "img" not in result.stderr  # --no-progress: no tqdm bar


def test_same_seed_same_numbers_other_seed_other_numbers(capsys, tmp_path):
    args = [
        "--epochs",
        "2",
        "--hidden",
        "20",
        "--dtype",
        "float32",
        "--plot",
        str(tmp_path / "c.png"),
    ]
    first = numbers_only(run_main(capsys, *args, "--seed", "3"))
    again = numbers_only(run_main(capsys, *args, "--seed", "3"))
    other = numbers_only(run_main(capsys, *args, "--seed", "4"))
    assert first == again
    assert first != other
    assert len([line for line in first if line.startswith("epoch")]) == 2


def test_multi_layer_net_float32_adam(capsys, tmp_path):
    out = run_main(
        capsys,
        "--layers",
        "30,20",
        "--optimizer",
        "adam",
        "--dtype",
        "float32",
        "--weight-decay",
        "0.001",
        "--epochs",
        "1",
        "--plot",
        str(tmp_path / "c.png"),
    )
    assert "MultiLayerNet(784, [30, 20], 10, 'relu', weight_decay_lambda=0.001) float32" in out
    assert "Adam(lr=0.002)" in out
    acc = float(re.search(r"test acc (\S+)", out)[1])
    assert acc > 0.8


def test_data_directory(capsys, tmp_path):
    fake_mnist(tmp_path, 30, 10, compress=True)
    out = run_main(
        capsys,
        "--data",
        str(tmp_path),
        "--epochs",
        "1",
        "--batch",
        "8",
        "--lr",
        "0.1",
        "--plot",
        str(tmp_path / "c.png"),
    )
    assert f"data: {tmp_path}: 30 training, 10 test images" in out
    assert "SGD(lr=0.1), batch 8" in out
    assert (tmp_path / "c.png").exists()


def test_missing_data_directory_files_are_named(capsys, tmp_path):
    assert cli.main(["train", "--data", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastbp: error: ") and "train-images-idx3-ubyte" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--layers", "10,x"], "expected positive integers"),
        (["--layers", "10", "--hidden", "5"], "not allowed with argument"),
        (["--lr", "-1"], "must be a finite number > 0"),
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--dtype", "float16"], "invalid choice"),
    ],
)
def test_bad_options_exit_with_a_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_train_and_bench(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "train" in out and "bench" in out


def test_bench_is_wired_to_fastbp_bench(capsys, monkeypatch):
    bench = pytest.importorskip("fastbp.bench")
    calls = []
    monkeypatch.setattr(bench, "main", lambda args: calls.append(args) or 0)
    parser = cli.parser_for(["bench"])
    args = parser.parse_args(["bench"])
    assert args.handler(args) == 0 and calls == [args]


def test_training_improves_the_loss(capsys, tmp_path):
    out = run_main(capsys, "--epochs", "3", "--dtype", "float32", "--plot", str(tmp_path / "c.png"))
    losses = [float(x) for x in re.findall(r"epoch \d/3  loss (\S+)", out)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.5 * losses[0]
    assert float(re.search(r"final test accuracy ([\d.]+)", out)[1]) > 0.85


# -- the training loop behind it (fastbp.train) -----------------------------------------


def tiny_data(n=10, n_test=4):
    rng = np.random.default_rng(0)
    x = rng.random((n + n_test, 6))
    t = np.argmax(x[:, :3], axis=1)  # learnable labels
    return (x[:n], t[:n]), (x[n:], t[n:])


def test_train_calls_step_and_callbacks_and_covers_every_sample():
    data = tiny_data()
    net = TwoLayerNet(6, 4, 3, rng=0)
    seen, steps, epochs = [], [], []

    def step(net_, optimizer, x, t):
        assert net_ is net and optimizer == "opt"
        seen.append(x.copy())
        return float(len(x))

    history = train(
        net,
        "opt",
        data,
        4,
        2,
        np.random.default_rng(1),
        on_step=lambda *args: steps.append(args),
        on_epoch=lambda epoch, h: epochs.append((epoch, len(h.loss))),
        step=step,
    )
    assert [len(x) for x in seen] == [4, 4, 2, 4, 4, 2]  # last batch holds the remainder
    epoch1 = np.sort(np.concatenate(seen[:3]), axis=0)
    np.testing.assert_array_equal(epoch1, np.sort(data[0][0], axis=0))
    assert not np.array_equal(np.concatenate(seen[:3]), np.concatenate(seen[3:]))  # reshuffled
    assert steps == [(1, 4.0, 4), (2, 4.0, 4), (3, 2.0, 2), (4, 4.0, 4), (5, 4.0, 4), (6, 2.0, 2)]
    assert epochs == [(1, 3), (2, 6)]
    assert history.loss == [4.0, 4.0, 2.0] * 2 and history.epoch_samples == [10, 10]
    assert len(history.train_acc) == len(history.test_acc) == 2
    assert history.samples_per_second > 0


def test_train_with_the_default_step_lowers_the_loss_and_updates_params_in_place():
    data = tiny_data(n=60)
    net = TwoLayerNet(6, 8, 3, weight_init_std=0.5, rng=0)
    W1 = net.params["W1"]
    before = W1.copy()
    history = train(net, SGD(lr=0.5), data, 10, 20, np.random.default_rng(0))
    assert net.params["W1"] is W1 and not np.array_equal(W1, before)
    assert np.mean(history.loss[-6:]) < 0.8 * np.mean(history.loss[:6])


@pytest.mark.parametrize(
    ("batch_size", "epochs", "match"),
    [(0, 1, "batch_size"), (2.5, 1, "batch_size"), (True, 1, "batch_size"), (4, -1, "epochs")],
)
def test_train_rejects_bad_sizes(batch_size, epochs, match):
    net = TwoLayerNet(6, 4, 3, rng=0)
    with pytest.raises(ValueError, match=match):
        train(net, SGD(), tiny_data(), batch_size, epochs, np.random.default_rng(0))


def test_plot_history_writes_a_png(tmp_path):
    history = History(loss=[2.0, 1.0, 0.5, 0.4], train_acc=[0.5, 0.7], test_acc=[0.4, 0.6])
    plot_history(history, tmp_path / "h.png", title="t")
    assert (tmp_path / "h.png").read_bytes().startswith(PNG_MAGIC)
