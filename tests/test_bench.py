"""``fastbp bench`` output and the shared benchmark cases (no timing assertions)."""

import argparse
import json

import numpy as np
import pytest

from fastbp import bench, benchcases


def run_bench(tmp_path, *argv):
    """Run ``fastbp bench --quick --json PATH *argv`` in-process; return the parsed JSON."""
    path = tmp_path / "bench.json"
    parser = bench.configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--json", str(path), *argv])
    assert bench.main(args) == 0
    return json.loads(path.read_text())


def test_quick_json_rows_have_medians_and_ratios(tmp_path, capsys):
    result = run_bench(tmp_path)
    rows = result["rows"]
    assert {row["section"] for row in rows} == {"kernel", "layer", "train"}
    for row in rows:
        assert row["fastbp"] > 0 and row["reference"] > 0
        assert row["speedup"] == pytest.approx(row["reference"] / row["fastbp"])
    train = [row for row in rows if row["section"] == "train"]
    # (50, 100) in both dtypes, plus the two real-MNIST rows.
    assert len(train) == 4 and sum("mnist" in row["case"] for row in train) == 2
    for row in train:
        assert set(row["gemm_parts"]) == {"x@W1", "z1@W2", "dz2@W2.T", "z1.T@dz2", "x.T@dz1"}
        assert row["gemm"] == pytest.approx(sum(row["gemm_parts"].values()))
        assert row["fastbp_per_gemm"] == pytest.approx(row["fastbp"] / row["gemm"])
        assert row["reference_per_gemm"] == pytest.approx(row["reference"] / row["gemm"])
        for name in ("fused", "layers"):
            assert row[f"{name}_speedup"] == pytest.approx(row["reference"] / row[name])
            assert row[f"{name}_per_gemm"] == pytest.approx(row[name] / row["gemm"])
    assert result["machine"]["cpu_count"] >= 1
    out = capsys.readouterr().out
    assert "speed-up" in out and "bare GEMM" in out and "fused/GEMM" in out
    assert "mnist H=50 B=100" in out


def test_filter_selects_rows(tmp_path):
    rows = run_bench(tmp_path, "--filter", "Relu.backward")["rows"]
    assert [(row["case"], row["dtype"]) for row in rows] == [
        ("Relu.backward 100x50", "float32"),
        ("Relu.backward 100x50", "float64"),
    ]


def test_crossover_json(tmp_path, capsys):
    rows = run_bench(tmp_path, "--crossover", "--filter", "relu_backward")["crossover"]
    assert [(row["kernel"], row["dtype"]) for row in rows] == [
        ("relu_backward", "float32"),
        ("relu_backward", "float64"),
    ]
    for row in rows:
        assert row["current"] == bench.CROSSOVER["relu_backward"]
        assert [point["size"] for point in row["ladder"]] == list(bench.QUICK.ladder)
        assert row["measured"] == bench.measured_crossover(row["ladder"])
    assert "relu_backward" in capsys.readouterr().out


def ladder(*parallel_wins):
    return [
        {"size": 1 << i, "serial": 1.0, "parallel": 0.5 if wins else 2.0}
        for i, wins in enumerate(parallel_wins)
    ]


def test_measured_crossover_is_where_parallel_wins_from_then_on():
    assert bench.measured_crossover(ladder(False, True, False, True, True)) == 8
    assert bench.measured_crossover(ladder(True, True)) == 1
    assert bench.measured_crossover(ladder(True, False)) is None


def test_table_is_fixed_width():
    lines = bench.table(["case", "time"], [["a", "1 us"], ["longer", "22.5 ms"]]).splitlines()
    assert lines[0] == "case       time"
    assert lines[2] == "a          1 us"
    assert lines[3] == "longer  22.5 ms"


@pytest.mark.parametrize("dtype", benchcases.DTYPES)
@pytest.mark.parametrize("family", benchcases.LAYER_FAMILIES)
def test_layer_cases_do_the_same_work(family, dtype):
    shape = (3, 7, 5) if family == "Affine" else (4, 6)
    results = {}
    for impl in benchcases.IMPLS:
        forward, backward = benchcases.layer_pair(family, impl, shape, dtype)
        results[impl] = forward(), backward()
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, want in zip(results["fastbp"], results["reference"], strict=True):
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("family", benchcases.KERNEL_FAMILIES)
def test_kernel_cases_run(family):
    shape = (3, 7, 5) if family == "affine" else (4, 6)
    for impl in benchcases.IMPLS:
        for fn in benchcases.kernel_pair(family, impl, shape, "float64"):
            fn()


@pytest.mark.parametrize("impl", benchcases.TRAIN_IMPLS)
def test_train_step_builds_and_runs(impl):
    benchcases.train_step(impl, 5, 3, "float32")()


def test_unknown_combinations_skip():
    with pytest.raises(NotImplementedError):
        benchcases.kernel_pair("relu", "fastbp", (2, 3, 4), "float64")
    with pytest.raises(NotImplementedError):
        benchcases.layer_pair("Relu", "torch", (2, 3), "float64")
    with pytest.raises(NotImplementedError):
        benchcases.train_step("fastbp", 5, 2, "float16")


@pytest.mark.parametrize("dtype", benchcases.DTYPES)
def test_train_batch_and_gemm_shapes(dtype):
    x, t = benchcases.train_batch(6, dtype)
    assert x.shape == (6, 784) and t.shape == (6, 10)
    assert x.dtype == t.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(t.sum(axis=1), 1)
    shapes = {label: fn().shape for label, fn in benchcases.bare_gemms(7, 6, dtype)}
    assert shapes == {
        "x@W1": (6, 7),
        "z1@W2": (6, 10),
        "dz2@W2.T": (6, 7),
        "z1.T@dz2": (7, 10),
        "x.T@dz1": (784, 7),
    }


def test_mnist_batch_keeps_the_books_dtypes():
    x, t = benchcases.mnist_batch(5)
    assert x.shape == (5, 784) and x.dtype == np.float32
    assert t.shape == (5, 10) and t.dtype == np.float64
    x32, t32 = benchcases.mnist_batch(5, "float32")
    assert x32.dtype == t32.dtype == np.float32


@pytest.mark.parametrize("dtype", benchcases.DTYPES)
def test_train_step_same_update_for_every_impl(dtype):
    x, t = benchcases.train_batch(8, dtype)
    nets = {impl: benchcases.two_layer_net(impl, 6, dtype) for impl in benchcases.IMPLS}
    start = nets["fastbp"].params["W2"].copy()
    np.testing.assert_array_equal(start, nets["reference"].params["W2"])
    fused = {key: value.copy() for key, value in nets["fastbp"].params.items()}
    benchcases.fused_step(fused, x, t)()
    by_layers = {key: value.copy() for key, value in nets["fastbp"].params.items()}
    benchcases.layers_step(by_layers, x, t)()
    for net in nets.values():
        benchcases.sgd_step(net, x, t)()
    tol = 1e-5 if dtype == "float32" else 1e-12
    for key in benchcases.PARAM_KEYS:
        ref = nets["reference"].params[key]
        for got in (nets["fastbp"].params[key], fused[key], by_layers[key]):
            assert got.dtype == ref.dtype == np.dtype(dtype)
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)
    assert not np.array_equal(nets["fastbp"].params["W2"], start)
