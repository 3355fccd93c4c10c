"""``fastbp bench --section setup``: the README's set-up commands, timed as a newcomer runs them.

In a new temporary virtual environment and an empty Numba cache (``NUMBA_CACHE_DIR``), from
the source checkout this package is installed from: the install, the main job twice (the
first run compiles the kernels, the second loads them), the convnet job and the test
suite. Each step's wall time and printed output go into the JSON; ``fastbp.report`` makes
the README's set-up table and sample output from them. Needs the package registry (pip)
and takes several minutes; ``--section all`` leaves it out.
"""

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (key, what the README calls the step, the command as the README gives it)
STEPS = (
    ("install", "install into a new venv", 'pip install -e ".[test]"'),
    ("train_first", "the main job, first run (compiles the kernels)", "fastbp train"),
    ("train", "the main job again (kernels from the cache)", "fastbp train"),
    ("convnet", "the convnet job", "fastbp train --model convnet"),
    ("tests", "the tests", "python -m pytest -q"),
)
TIMEOUT = 3600


def _env(venv, cache):
    """The user's environment with ``venv`` activated and an empty kernel cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NUMBA_CACHE_DIR"] = str(cache)
    return env


def _timed(command, env, cwd):
    """(seconds, stdout) of the shell ``command``; raises with its output if it fails."""
    start = time.perf_counter()
    done = subprocess.run(
        command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command!r} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds, done.stdout


def _size_mb(path):
    """Disk use of the files under ``path`` in MB (10**6 bytes)."""
    files = (Path(folder) / name for folder, _, names in os.walk(path) for name in names)
    return sum(f.lstat().st_size for f in files) / 1e6


def measure(root=ROOT):
    """{step key: {"label", "command", "seconds", "output"}} plus "venv_mb", for ``STEPS``
    run in a new venv from the checkout at ``root``."""
    if not (root / "pyproject.toml").is_file():
        raise RuntimeError(f"the setup section needs the source checkout; {root} is not one")
    with tempfile.TemporaryDirectory(prefix="fastbp-setup-") as tmp:
        venv, cache, work = Path(tmp) / "venv", Path(tmp) / "cache", Path(tmp) / "work"
        work.mkdir()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = _env(venv, cache)
        _timed("python -m pip install -q --upgrade pip", env, work)
        result = {}
        for key, label, command in STEPS:
            cwd = root if key in ("install", "tests") else work  # the job writes its plot
            seconds, output = _timed(command, env, cwd)
            result[key] = {"label": label, "command": command, "seconds": seconds}
            result[key]["output"] = output
        result["venv_mb"] = _size_mb(venv)
    return result


def final_accuracy(output):
    """The test accuracy on the ``final test accuracy`` line of a train job's output."""
    found = re.search(r"final test accuracy ([0-9.]+)", output)
    return float(found.group(1)) if found else None


def test_summary(output):
    """pytest's last line ('806 passed, 3 skipped in 250.1s' without the time)."""
    lines = [line.strip("= ") for line in output.strip().splitlines()]
    summary = lines[-1] if lines else ""
    return re.sub(r" in [0-9.]+s.*$", "", summary)
