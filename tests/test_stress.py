"""Stress suite (issue 10): everything that could crash the interpreter runs in a subprocess
under a timeout, and a process that dies from a signal fails the test.

The normal run holds the short forms; ``-m stress`` adds the long variants. Scenarios:
threads sharing one layer object with varying shapes while another thread swaps its state,
state mutated between calls, an IDX gzip bomb and an endless IDX stream, a damaged Numba
cache in a fresh NUMBA_CACHE_DIR, a read-only install, and every error of the command line.
"""

import gzip
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbp

WORKER = Path(__file__).with_name("stress_worker.py")
PACKAGE = Path(fastbp.__file__).parent
KERNELS = PACKAGE.parent / "kernels" if (PACKAGE.parent / "kernels").is_dir() else None
TIMEOUT = 300


def run(argv, env=None, timeout=TIMEOUT, **kwargs):
    """Run argv; fails on death by a signal. Returns the CompletedProcess."""
    done = subprocess.run(
        argv,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    assert done.returncode >= 0, f"killed by signal {-done.returncode}\n{done.stderr[-3000:]}"
    return done


def worker(*args, env=None):
    done = run([sys.executable, str(WORKER), *map(str, args)], env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    assert done.stdout.startswith("OK"), done.stdout
    return done


# -- threads and state ------------------------------------------------------------------


def test_threads_share_layer_objects_with_varying_shapes():
    worker("threads", 15)


@pytest.mark.stress
def test_threads_share_layer_objects_long():
    worker("threads", 600)


def test_state_mutated_between_calls_gives_clear_errors():
    worker("mutate")


# -- IDX readers ------------------------------------------------------------------------


def gzip_bomb(path, declared_images, bomb_bytes):
    """A valid IDX image header declaring n 28x28 images, then bomb_bytes of zeros."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(b"".join(v.to_bytes(4, "big") for v in (0x803, declared_images, 28, 28)))
        chunk = bytes(1 << 22)
        for _ in range(bomb_bytes // len(chunk)):
            f.write(chunk)


@pytest.mark.parametrize(
    "bomb_bytes", [64 << 20, pytest.param(2 << 30, marks=pytest.mark.stress)], ids=["64M", "2G"]
)
def test_idx_gzip_bomb_is_rejected_within_twice_the_declared_size(tmp_path, bomb_bytes):
    path = tmp_path / "bomb-idx3-ubyte.gz"
    gzip_bomb(path, 1000, bomb_bytes)
    worker("idx-bomb", path, 1000 * 28 * 28)


def test_idx_endless_stream_is_rejected():
    worker("idx-stream")


# -- the Numba cache --------------------------------------------------------------------


def test_cache_determinism_and_recovery_from_damaged_files(tmp_path):
    """Compiled and loaded parallel softmax give the same bits; truncated or garbage cache
    files are rebuilt once (a CacheWarning) and the cache works again afterwards."""
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    outs = [tmp_path / f"run{i}.npz" for i in range(4)]
    first = worker("softmax", outs[0], env=env)
    second = worker("softmax", outs[1], env=env)
    assert "hits=0" in first.stdout and "hits=0" not in second.stdout
    files = sorted((tmp_path / "cache").rglob("*.nb[ic]"))
    assert files
    for i, path in enumerate(files):
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if i % 2 else b"garbage")
    damaged = worker("softmax", outs[2], env=env)
    assert "CacheWarning" in damaged.stderr and "Traceback" not in damaged.stderr
    recovered = worker("softmax", outs[3], env=env)
    assert "hits=0" not in recovered.stdout and "CacheWarning" not in recovered.stderr
    results = [dict(np.load(out)) for out in outs]
    for other in results[1:]:
        for key, value in results[0].items():
            np.testing.assert_array_equal(other[key], value, err_msg=key, strict=True)


def read_only_install(root):
    """A copy of the installed package under root whose every cache place is unusable,
    even for root: ``__pycache__`` is a file, HOME lies under a file."""
    target = root / "site" / "fastbp"
    shutil.copytree(PACKAGE, target, ignore=shutil.ignore_patterns("__pycache__"))
    if KERNELS is not None:  # an editable install: kernels/ is mapped to fastbp.kernels
        shutil.rmtree(target / "kernels", ignore_errors=True)
        shutil.copytree(KERNELS, target / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    for package in (target, target / "kernels"):
        (package / "__pycache__").write_text("")
    (root / "file").write_text("")
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    return {"PYTHONPATH": str(root / "site"), "HOME": str(root / "file" / "home")}


READ_ONLY_RUN = """
import sys, tempfile
if sys.argv[1] == "no-temp":
    tempfile.tempdir = sys.argv[2]  # no temp dir either: no cache at all
import numpy as np
import fastbp.layers
from fastbp import kernels
assert fastbp.layers.__file__.startswith(sys.argv[3]), fastbp.layers.__file__
relu = fastbp.layers.Relu()
assert relu.forward(np.array([-1.0, 2.0])).tolist() == [0.0, 2.0]
print("OK", type(kernels.relu_forward.serial._cache).__name__)
"""


@pytest.mark.parametrize("temp", ["temp", "no-temp"])
def test_read_only_install_imports_and_runs(tmp_path, temp):
    env = read_only_install(tmp_path)
    env = {k: v for k, v in {**os.environ, **env}.items() if not k.startswith("NUMBA_")}
    env.pop("XDG_CACHE_HOME", None)
    argv = [sys.executable, "-c", READ_ONLY_RUN, temp, str(tmp_path / "file" / "t"), str(tmp_path)]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    expected = "KernelCache" if temp == "temp" else "NullCache"
    assert done.stdout.split() == ["OK", expected]
    for path in [tmp_path / "site", *(tmp_path / "site").rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # let tmp_path be cleaned up


# -- the command line -------------------------------------------------------------------


def fastbp_train(*args, env=None, prelude=""):
    code = f"{prelude}import sys; from fastbp.cli import main; sys.exit(main(sys.argv[1:]))"
    return run([sys.executable, "-c", code, "train", "--no-progress", *args], env=env)


def garbage_dir(root):
    root.mkdir()
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        kind = "idx3" if name.endswith("images") else "idx1"
        (root / f"{name}-{kind}-ubyte").write_bytes(b"not an IDX file")
    return root


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "/nonexistent"], "no such directory"),
        (["--data", "{tmp}"], "not found"),
        (["--data", "{garbage}"], "not an IDX file"),
        (["--seed", "-1"], "--seed"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--lr", "nan"], "--lr"),
        (["--lr", "inf"], "--lr"),
        (["--epochs", "0"], "--epochs"),
        (["--plot", "/nonexistent/curve.png"], "no such directory"),
        (["--plot", "{tmp}/dir.png"], "cannot write"),  # a directory
        (["--plot", "{tmp}/curve.txt"], "unknown image format"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, args, message):
    names = {"tmp": tmp_path / "d", "garbage": tmp_path / "g"}
    (names["tmp"] / "dir.png").mkdir(parents=True)
    garbage_dir(names["garbage"])
    done = fastbp_train(*(a.format(**names) for a in args))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastbp: error: "), done.stderr
    assert message in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_plot_in_a_read_only_directory_is_an_error_before_training(tmp_path):
    tmp_path.chmod(0o555)
    try:
        done = fastbp_train("--plot", str(tmp_path / "curve.png"))
    finally:
        tmp_path.chmod(0o755)
    assert done.returncode == 2 and done.stderr.startswith("fastbp: error: ")
    assert "cannot write" in done.stderr and "epoch" not in done.stdout


def test_distributed_without_the_extra_is_a_user_error():
    done = fastbp_train("--distributed", prelude="import sys; sys.modules['mpi4py'] = None; ")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("fastbp: error: distributed training needs mpi4py")
    assert len(done.stderr.splitlines()) == 1


def test_plot_without_an_extension_prints_the_path_it_writes(tmp_path):
    done = fastbp_train("--epochs", "1", "--plot", str(tmp_path / "curve"))
    assert done.returncode == 0, done.stderr
    written = re.search(r"learning curve: (\S+)", done.stdout)[1]
    assert written == str(tmp_path / "curve.png") and Path(written).is_file()


def test_ctrl_c_keeps_what_was_done_and_exits_130(tmp_path):
    plot = tmp_path / "curve.png"
    process = subprocess.Popen(
        [sys.executable, "-m", "fastbp", "train", "--no-progress", "--epochs", "500"]
        + ["--plot", str(plot)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell's background job ignores SIGINT, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        head = []
        while not re.match(r"epoch +2/", head[-1] if head else ""):
            line = process.stdout.readline()
            assert line, "".join(head)
            head.append(line)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert re.search(r"interrupted after \d+ of 500 epochs", out), out
    assert f"learning curve: {plot}" in out and plot.is_file()
    assert "Traceback" not in err


def test_broken_pipe_is_quiet(tmp_path):
    plot = tmp_path / "curve.png"
    code = f"{sys.executable} -m fastbp train --no-progress --epochs 2 --plot {plot} | head -n 1"
    done = run(["bash", "-o", "pipefail", "-c", code])
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("data: "), done.stdout
    assert done.stderr == "", done.stderr
    assert done.returncode == 141  # 128 + SIGPIPE, as for a writer the signal killed
