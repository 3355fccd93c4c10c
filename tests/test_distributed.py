"""Data-parallel training over MPI (fastbp.distributed), run as ``mpiexec -n N`` jobs.

The MPI tests need mpi4py and an ``mpiexec`` (the ``[mpi]`` extra); without mpi4py they
are skipped. Every job runs with a timeout, so a hang fails the test instead of CI.
Failures are injected with the test hook ``FASTBP_TEST_FAIL_AT`` of distributed_worker.py
(the library has no such hook).
The single-process run happens in this process first, which also fills the Numba cache
the ranks then load (two ranks compiling into one cache at once may race).
"""

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_close

from fastbp import benchdist, cli
from fastbp.distributed import FlatBuffer, find_mpiexec, get_mpi, shard
from fastbp.nets import TwoLayerNet

HERE = Path(__file__).parent
JOB_TIMEOUT = 60  # seconds; a job that takes longer is hung


def mpi4py_importable():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return True


needs_mpi = pytest.mark.skipif(
    not mpi4py_importable(), reason="mpi4py is not importable: install the [mpi] extra"
)


def test_fused_step_writes_gradients_into_flat_buffer_views(rng):
    """The zero-copy path of DataParallel: TwoLayerStep.gradient(out=views of one buffer)."""
    net = TwoLayerNet(20, 8, 5, rng=0)
    x, t = rng.standard_normal((7, 20)), rng.integers(0, 5, 7)
    buffer = FlatBuffer({k: v.shape for k, v in net.params.items()}, np.float64, extra=1)
    step = net.fused_step(x)
    grads = step.gradient(x, t, out=buffer.views)
    expected = net.gradient(x, t)
    for name, g in grads.items():
        assert g is buffer.views[name]
        assert_close(g, expected[name], 1e-12)
    wrong = {**buffer.views, "b1": np.empty(9)}
    with pytest.raises(ValueError, match=r"out\['b1'\]"):
        step.gradient(x, t, out=wrong)


def test_without_mpi4py_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # makes ``import mpi4py`` fail
    with pytest.raises(ImportError, match=r"pip install 'fastbp\[mpi\]'"):
        get_mpi()


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """Compile the worker's kernels in this process first, so ranks only load the cache."""
    import distributed_worker

    for kind in ("two", "multi"):
        distributed_worker.main(
            tmp_path_factory.mktemp("warm") / "one.npz", kind, distributed=False
        )


def run_job(ranks, args, env=None):
    """Run ``mpiexec -n ranks python args...``; (returncode, stdout + stderr) or fail on hang."""
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as e:
        pytest.skip(f"mpi4py is installed but {e}")
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        [mpiexec, "-n", str(ranks), sys.executable, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {ranks} hung for {JOB_TIMEOUT} s; output:\n{out}")
    return proc.returncode, out


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("batch_size", [0, 1, 2, 7, 100, 101])
def test_shards_partition_the_batch_evenly(batch_size, size):
    parts = [shard(batch_size, size, rank) for rank in range(size)]
    assert parts[0].start == 0 and parts[-1].stop == batch_size
    assert all(a.stop == b.start for a, b in zip(parts[:-1], parts[1:], strict=True))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_flat_buffer_views_share_one_array():
    shapes = {"W1": (3, 4), "b1": (4,), "W2": (4, 2)}
    buffer = FlatBuffer(shapes, np.float32, extra=1)
    assert buffer.flat.shape == (12 + 4 + 8 + 1,) and buffer.extra.shape == (1,)
    arrays = {
        k: np.arange(np.prod(s), dtype=np.float64).reshape(s) + i
        for i, (k, s) in enumerate(shapes.items())
    }
    buffer.pack(arrays, 0.5)
    for name, view in buffer.views.items():
        assert view.base is buffer.flat and view.dtype == np.float32
        assert_close(view, arrays[name] * 0.5, 0)
    buffer.flat[:] = 1
    buffer.unpack(arrays)
    assert all((a == 1).all() for a in arrays.values())


# MPICH settings that make two ranks on one machine talk over TCP (libfabric's tcp
# provider), as ranks on two machines would, instead of shared memory.
OVER_TCP = {"MPIR_CVAR_NOLOCAL": "1", "MPIR_CVAR_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp"}


@needs_mpi
@pytest.mark.parametrize(
    "ranks, transport, kind",
    [(2, "shared-memory", "two"), (2, "tcp", "two"), (3, "shared-memory", "multi")],
)
def test_ranks_match_one_process_on_the_same_global_batches(
    tmp_path, warm_cache, ranks, transport, kind
):
    import distributed_worker

    distributed_worker.main(tmp_path / "single.npz", kind, distributed=False)
    args = [HERE / "distributed_worker.py", tmp_path / "mpi.npz", kind, "--distributed"]
    code, out = run_job(ranks, args, env=OVER_TCP if transport == "tcp" else None)
    assert code == 0, out
    single, mpi = np.load(tmp_path / "single.npz"), np.load(tmp_path / "mpi.npz")
    assert set(single) == set(mpi)
    for name in single:
        assert_close(mpi[name], single[name], 1e-10)


def epoch_lines(out):
    """The per-epoch 'loss ... train acc ... test acc ...' parts of ``fastbp train`` output."""
    return re.findall(r"epoch .*test acc [0-9.]+", out)


@needs_mpi
def test_train_distributed_prints_what_one_process_prints(tmp_path, capsys):
    # A batch of 75 splits 37 + 38 over two ranks, and each epoch ends on a batch of 50.
    options = ["--epochs", "2", "--batch", "75", "--seed", "3", "--no-progress"]
    assert cli.main(["train", *options, "--plot", str(tmp_path / "one.png")]) == 0
    single = epoch_lines(capsys.readouterr().out)
    assert len(single) == 2
    plot = tmp_path / "mpi.png"
    code, out = run_job(2, ["-m", "fastbp", "train", "--distributed", *options, "--plot", plot])
    assert code == 0, out
    assert epoch_lines(out) == single, out  # rank 0 alone prints, the same numbers
    assert out.count("final test accuracy") == 1 and "2 MPI ranks" in out
    assert plot.exists()


# Seconds a rank waits for the others; only the hanging rank should ever reach it, but
# rank start-up under load may take a while, so not too short.
HANG_TIMEOUT = "5"
# What the job prints when rank 1 fails at step 2 in each way.
FAILURE_MESSAGES = {
    "raise": r"rank 1 of 2 failed: RuntimeError: rank 1 fails at step 2 .*aborting all ranks",
    "exit": r"rank 1 dies at step 2",
    "kill": r"rank 1 dies at step 2(.|\n)*BAD TERMINATION(.|\n)*Killed",
    "hang": r"rank 0 of 2 failed: TimeoutError: gradient Allreduce did not complete within 5 s",
}


@needs_mpi
@pytest.mark.parametrize(
    "mode, program",
    [("raise", "train"), ("kill", "train"), ("exit", "worker"), ("hang", "worker")],
)
def test_a_failing_rank_ends_the_whole_job(tmp_path, mode, program, warm_cache):
    """Rank 1 fails at step 2 of ``fastbp train --distributed`` (whose rank 1 is otherwise
    silent) or of the test worker: the job must end, non-zero, saying what happened."""
    out_file = tmp_path / ("mpi.png" if program == "train" else "mpi.npz")
    if program == "train":
        args = [HERE / "distributed_worker.py", "train", "--distributed", "--no-progress"]
        args += ["--plot", out_file]
    else:
        args = [HERE / "distributed_worker.py", out_file, "two", "--distributed"]
    env = {"FASTBP_TEST_FAIL_AT": f"1:2:{mode}", "FASTBP_MPI_TIMEOUT": HANG_TIMEOUT}
    code, out = run_job(2, args, env=env)
    assert code != 0, out
    assert re.search(FAILURE_MESSAGES[mode], out), out
    assert not out_file.exists()


@needs_mpi
def test_bench_runs_every_configuration(warm_cache):
    try:
        mpiexec = find_mpiexec()
    except FileNotFoundError as e:
        pytest.skip(f"mpi4py is installed but {e}")
    rows = benchdist.bench(8, 10, 2, mpiexec)
    configs = [(row["ranks"], row["threads"], row["blas"]) for row in rows]
    assert configs == list(benchdist.CONFIGS)
    for row in rows:
        assert row["step_s"] > 0 and row["bare_allreduce_s"] > 0
        assert row["buffer_bytes"] == 50_968 and row["batch_size"] == 10
