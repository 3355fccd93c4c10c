"""``fastbp bench`` output and the shared benchmark cases (no timing assertions)."""

import argparse
import json
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from fastbp import bench, benchcases, benchloop, cli, kernels, report
from fastbp.kernels import dispatch


def run_bench(tmp_path, *argv):
    """Run ``fastbp bench --quick --json PATH *argv`` in-process; return the parsed JSON."""
    path = tmp_path / "bench.json"
    parser = bench.configure_parser(argparse.ArgumentParser())
    args = parser.parse_args(["--quick", "--json", str(path), *argv])
    assert bench.main(args) == 0
    return json.loads(path.read_text())


def test_quick_json_rows_have_medians_and_ratios(tmp_path, capsys):
    result = run_bench(tmp_path, "--section", "kernels,layers,train")
    rows = result["rows"]
    assert {row["section"] for row in rows} == {"kernels", "layers", "train"}
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
    rows = run_bench(tmp_path, "--section", "layers", "--filter", "Relu.backward")["rows"]
    assert [(row["case"], row["dtype"]) for row in rows] == [
        ("Relu.backward 100x50", "float32"),
        ("Relu.backward 100x50", "float64"),
    ]


def test_crossover_json(tmp_path, capsys):
    rows = run_bench(tmp_path, "--section", "crossover", "--filter", "relu_backward")["crossover"]
    assert [(row["kernel"], row["dtype"]) for row in rows] == [
        ("relu_backward", "float32"),
        ("relu_backward", "float64"),
    ]
    for row in rows:
        assert row["current"] == bench.CROSSOVER["relu_backward"]
        assert [point["size"] for point in row["ladder"]] == list(bench.QUICK.ladder)
        assert row["measured"] == dispatch.measured_crossover(row["ladder"])
    assert "relu_backward" in capsys.readouterr().out


def test_density_json(tmp_path, capsys):
    rows = run_bench(tmp_path, "--section", "crossover", "--filter", "affine_forward")["density"]
    threads = sorted({1, numba.get_num_threads()})
    expected = [("affine_forward", d, n) for d in benchcases.DTYPES for n in threads]
    assert [(row["kernel"], row["dtype"], row["threads"]) for row in rows] == expected
    for row in rows:
        assert [point["size"] for point in row["ladder"]] == list(bench.QUICK.densities)
    assert "sparse / dense time by density" in capsys.readouterr().out


def test_densities_are_where_the_blas_starts_to_win():
    def row(dtype, threads, *dense_wins):
        points = [
            {"size": 0.1 * (i + 1), "sparse": 1.0, "dense": 0.5 if wins else 2.0}
            for i, wins in enumerate(dense_wins)
        ]
        return {"kernel": "affine_forward", "dtype": dtype, "threads": threads, "ladder": points}

    found = report.densities([row("float32", 2, False, True, True), row("float64", 1, False)])
    assert found[("affine_forward", np.dtype(np.float32), True)] == pytest.approx(0.2)
    assert found[("affine_forward", np.dtype(np.float64), False)] == 1.0  # sparse won everywhere


@pytest.mark.parametrize("name", benchcases.SPARSE_KERNELS)
def test_sparse_pairs_do_the_same_work(name):
    """The density ladder's two callables give equal results to rounding."""
    results = []
    for call in benchcases.sparse_pair(name, 0.2, "float64"):
        grads = call()
        if name == "two_layer_step":
            results.append([grads[key].copy() for key in sorted(grads)])
        else:  # the layer wrappers: their outputs among the arguments
            outputs = call.args[:1] if name == "affine_forward" else call.args[3:6]
            results.append([a.copy() for a in outputs])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * np.abs(b).max())


def ladder(*parallel_wins):
    return [
        {"size": 1 << i, "serial": 1.0, "parallel": 0.5 if wins else 2.0}
        for i, wins in enumerate(parallel_wins)
    ]


def test_measured_crossover_is_where_dispatching_costs_least():
    assert dispatch.measured_crossover(ladder(False, True, False, True, True)) == 8
    assert dispatch.measured_crossover(ladder(True, True)) == 1
    assert dispatch.measured_crossover(ladder(True, False)) is None
    # One noisy point does not move it (the old rule said 16 here, or never) ...
    assert dispatch.measured_crossover(ladder(False, True, True, False, True, True)) == 2
    assert dispatch.measured_crossover(ladder(False, False, True, True, True, False)) == 4
    # ... and the dtypes' ladders count together.
    assert dispatch.measured_crossover(ladder(False, True, False)) is None
    assert dispatch.measured_crossover(ladder(False, True, True), ladder(False, True, False)) == 2
    never = ladder(False, False, False)
    assert dispatch.measured_crossover(ladder(False, False, True), never) is None


def test_table_is_fixed_width():
    lines = report.text_table(["case", "time"], [["a", "1 us"], ["longer", "22.5 ms"]]).splitlines()
    assert lines[0] == "case       time"
    assert lines[2] == "a          1 us"
    assert lines[3] == "longer  22.5 ms"


@pytest.mark.parametrize("dtype", benchcases.DTYPES)
@pytest.mark.parametrize("family", benchcases.LAYER_FAMILIES)
def test_layer_cases_do_the_same_work(family, dtype):
    shape = (3, 7, 5) if family == "Affine" else (4, 6)
    results = {}
    for impl in benchcases.IMPLS:
        forward, backward = benchcases.layer_case(family, impl, shape, dtype)
        results[impl] = forward(), backward()
    tol = 1e-5 if dtype == "float32" else 1e-12
    for got, want in zip(results["fastbp"], results["reference"], strict=True):
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("family", benchcases.KERNEL_FAMILIES)
def test_kernel_cases_run(family):
    shape = (3, 7, 5) if family == "affine" else (4, 6)
    for impl in benchcases.IMPLS:
        for fn in benchcases.kernel_case(family, impl, shape, "float64"):
            fn()


@pytest.mark.parametrize("impl", benchcases.STEP_BUILDERS)
def test_train_step_builds_and_runs(impl):
    benchcases.train_step_case(impl, 5, 3, "float32")()


def test_unknown_combinations_skip():
    with pytest.raises(NotImplementedError):
        benchcases.kernel_case("relu", "fastbp", (2, 3, 4), "float64")
    with pytest.raises(NotImplementedError):
        benchcases.layer_case("Relu", "torch", (2, 3), "float64")
    with pytest.raises(NotImplementedError):
        benchcases.train_step_case("fastbp", 5, 2, "float16")
    with pytest.raises(NotImplementedError):
        benchcases.train_step_case("caffe", 5, 2, "float64")


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
    start = benchcases.two_layer_params(6, dtype)
    params = {}
    for name, make_step in benchcases.STEP_BUILDERS.items():
        params[name] = {key: value.copy() for key, value in start.items()}
        make_step(params[name], x, t)()
    tol = 1e-5 if dtype == "float32" else 1e-12
    for key in benchcases.PARAM_KEYS:
        ref = params["reference"][key]
        for name in benchcases.STEP_BUILDERS:
            assert params[name][key].dtype == ref.dtype == np.dtype(dtype)
            np.testing.assert_allclose(params[name][key], ref, rtol=tol, atol=tol)
    assert not np.array_equal(params["reference"]["W2"], start["W2"])


@pytest.mark.parametrize("name", bench.LADDER_KERNELS)
def test_crossover_ladder_runs_every_kernel_on_both_paths(name):
    for fn in bench.ladder_pair(name, 2048, "float32"):
        fn()


def test_every_twin_kernel_is_on_the_crossover_ladder():
    assert set(bench.LADDER_KERNELS) == set(kernels.CROSSOVER)


def test_crossover_is_the_rule_applied_to_the_measured_ladders():
    """CROSSOVER is read from kernels/crossover.json (the bench's output), both dtypes of
    every kernel, by the one rule the bench's tables use."""
    rows = json.loads(dispatch.CROSSOVER_FILE.read_text())["crossover"]
    assert {(row["kernel"], row["dtype"]) for row in rows} == {
        (name, dtype) for name in bench.LADDER_KERNELS for dtype in benchcases.DTYPES
    }
    for name, value in kernels.CROSSOVER.items():
        ladders = [row["ladder"] for row in rows if row["kernel"] == name]
        found = dispatch.measured_crossover(*ladders)
        if name in dispatch.MEASURED_IN_THE_LOOP:
            assert value == dispatch.MEASURED_IN_THE_LOOP[name]
        else:
            assert value == (dispatch.NEVER if found is None else found)


@pytest.mark.parametrize("name", benchcases.LAYER_LADDER_KERNELS)
def test_layer_ladder_calls_give_the_kernel_about_n_units(name, monkeypatch):
    """The ladder's size is the one dispatch compares with CROSSOVER[name]."""
    seen = []
    real = kernels.dispatch.Twin.pick
    monkeypatch.setattr(
        kernels.dispatch.Twin,
        "pick",
        lambda twin, size: (seen.append((twin.name, size)), real(twin, size))[1],
    )
    call = benchcases.layer_ladder_call(name, 1 << 16, "float64")
    with kernels.force_path("serial"):  # forced: every call goes through pick
        call()
    sizes = [size for kernel, size in seen if kernel == name]
    assert sizes and all((1 << 15) <= size <= (1 << 16) for size in sizes), seen


def test_asv_calls_per_sample_is_a_power_of_ten_in_range():
    assert benchcases.calls_per_sample((1, 50)) == 1000
    assert benchcases.calls_per_sample((100, 50)) == 100
    assert benchcases.calls_per_sample((1000, 1000, 1000)) == 1


def test_user_loop_variants_start_from_the_books_weights_and_agree():
    """One iteration of the book's ch05 loop per variant, on the same batch: the same
    update to rounding (float32 images, float64 weights and one-hot labels)."""
    nets = {v: benchcases.user_loop_net(v) for v in benchcases.USER_LOOP_VARIANTS}
    for network in nets.values():
        assert network.params["W1"].dtype == np.float64
        np.testing.assert_array_equal(network.params["W1"], nets["book"].params["W1"])
    params = {}
    for variant, network in nets.items():
        phases, accuracy = benchcases.user_loop(network)
        assert list(phases) == list(benchcases.USER_LOOP_PHASES)
        np.random.seed(5)  # noqa: NPY002 (the loop draws batches like the book)
        for phase in phases.values():
            phase()
        train_acc, test_acc = accuracy()
        assert 0 <= train_acc <= 1 and 0 <= test_acc <= 1
        params[variant] = network.params
    assert type(nets["book+layers"].layers["Affine1"]).__module__ == "fastbp.layers"
    assert type(nets["book+layers"].lastLayer).__module__ == "fastbp.layers"
    for variant in benchcases.USER_LOOP_VARIANTS[1:]:
        for key in benchcases.PARAM_KEYS:
            np.testing.assert_allclose(params[variant][key], params["book"][key], atol=1e-12)
    assert benchcases.iterations_per_epoch() == 80  # 8,000 embedded training images


def test_user_loop_section_rows(tmp_path, capsys):
    rows = run_bench(tmp_path, "--section", "userloop")["rows"]
    assert [row["case"] for row in rows] == [*benchcases.USER_LOOP_VARIANTS, "book-after"]
    book = rows[0]
    for row in rows:
        phases = sum(row[name] for name in benchcases.USER_LOOP_PHASES)
        assert row["iteration"] > 0 and phases > 0 and row["accuracy"] > 0
        per_epoch = row["iterations_per_epoch"]
        assert row["per_iteration"] == pytest.approx(row["iteration"] + row["accuracy"] / per_epoch)
        assert row["speedup"] == pytest.approx(book["per_iteration"] / row["per_iteration"])
        assert row["processes"] == bench.QUICK.loop_processes
        assert row["iterations"] == bench.QUICK.loop_rounds * bench.QUICK.loop_block
        low, high = row["per_iteration_range"]
        assert low <= row["per_iteration"] <= high
    out = capsys.readouterr().out
    assert "book / nets" in out and "after fastbp ran" in out


def test_user_loop_ratios_are_the_median_of_each_rounds_ratio(monkeypatch):
    """A slow spell of the machine that takes a round weighs on both sides of its ratio."""
    spells = iter([1, 1, 1, 1, 3, 3, 3, 3, 1, 1, 1, 1])  # round 2 three times as slow

    def run(variant, rounds, block):
        cost = next(spells) * (2.0 if variant in ("book", "book-after") else 1.0)
        return {name: cost for name in benchloop.MEASURES}

    monkeypatch.setattr(benchloop, "_run_child", run)
    rows = {row["case"]: row for row in benchloop.bench(3, 1, 1)}
    assert rows["nets"]["speedup"] == rows["nets"]["gradient_speedup"] == 2.0
    assert rows["book-after"]["speedup"] == 1.0
    low, high = rows["nets"]["per_iteration_range"]
    assert high == pytest.approx(3 * low)


def test_user_loop_processes_load_numba_only_where_fastbp_runs():
    """A process of the book's classes never imports Numba; one that ran fastbp first has
    (``_run_child`` raises otherwise)."""
    for variant in ("book", "book-after"):
        run = benchloop._run_child(variant, 1, 2)
        assert run["iteration"] > 0 and run["accuracy"] > 0
        assert run["numba_loaded"] is (variant == "book-after")


def test_peers_section_has_the_book_and_fastbp_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "available_peers", list)  # whatever is installed
    rows = run_bench(tmp_path, "--section", "peers")["rows"]
    assert [row["case"] for row in rows][-1].startswith("user-loop gradient")
    assert rows[0]["columns"] == ["book", "fused"] and rows[0]["baseline"] == "book"
    assert rows[-1]["columns"] == list(benchcases.USER_LOOP_VARIANTS)
    assert rows[-1]["nets_speedup"] == pytest.approx(rows[-1]["book"] / rows[-1]["nets"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's own
@pytest.mark.parametrize("peer", benchcases.PEER_STEPS)
def test_peer_steps_match_the_book_when_installed(peer):
    pytest.importorskip(benchcases.PEER_MODULES[peer])
    x, t = benchcases.train_batch(8, "float64")
    start = benchcases.two_layer_params(6, "float64")
    book = {key: value.copy() for key, value in start.items()}
    benchcases.reference_step(book, x, t)()
    grads = benchcases.PEER_GRADIENTS[peer](start)(x, t)
    expected = benchcases.net_on(benchcases.reference.TwoLayerNet, start).gradient(x, t)
    for key in benchcases.PARAM_KEYS:
        np.testing.assert_allclose(np.asarray(grads[key]), expected[key], atol=1e-12)
    benchcases.PEER_STEPS[peer](start, x, t)()  # runs


def test_unknown_section_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        bench.configure_parser(argparse.ArgumentParser()).parse_args(["--section", "gpu"])
    assert "unknown section gpu" in capsys.readouterr().err
    assert bench.section_list("all") == bench.ALL_SECTIONS
    assert "setup" not in bench.ALL_SECTIONS and "setup" in bench.SECTIONS


def test_version_and_bench_help(capsys):
    from fastbp import __version__

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"fastbp {__version__}"
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    out = capsys.readouterr().out
    assert "Time fastbp against the book's NumPy code" in out and "--section" in out


BOOK = Path(__file__).resolve().parent.parent.parent / "shared" / "book"


@pytest.mark.skipif(not BOOK.is_dir(), reason="the book's code is not in ../shared/book")
def test_the_user_loops_book_variant_is_the_books_code(monkeypatch):
    """fastbp.reference.TwoLayerNet (the user loop's "book") against the book's own
    ch05/two_layer_net.py on common/layers.py: the same layers, bit for bit the same
    loop (gradient, update, loss, accuracy)."""
    for name in ("common", "common.layers", "common.functions", "two_layer_net"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(BOOK / "ch05"))
    monkeypatch.syspath_prepend(str(BOOK))
    from two_layer_net import TwoLayerNet as BookNet

    nets = {}
    for name, cls in (("book", BookNet), ("ours", benchcases.reference.TwoLayerNet)):
        np.random.seed(0)  # noqa: NPY002 (the book's nets draw from the global state)
        nets[name] = cls(input_size=784, hidden_size=50, output_size=10)
    layer_classes = {
        name: [type(layer).__name__ for layer in (*net.layers.values(), net.lastLayer)]
        for name, net in nets.items()
    }
    assert layer_classes["ours"] == layer_classes["book"]
    assert list(nets["ours"].layers) == list(nets["book"].layers)
    results = {}
    for name, network in nets.items():
        phases, accuracy = benchcases.user_loop(network)
        np.random.seed(1)  # noqa: NPY002
        for _ in range(3):
            for phase in phases.values():
                phase()
        results[name] = (network.loss(*benchcases.mnist_batch(50)), accuracy(), network.params)
    (loss, acc, params), (book_loss, book_acc, book_params) = results["ours"], results["book"]
    assert loss == book_loss and acc == book_acc
    for key in benchcases.PARAM_KEYS:
        np.testing.assert_array_equal(params[key], book_params[key])
