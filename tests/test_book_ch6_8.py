"""The book's chapter 6-8 scripts, unchanged but for their sizes, after the one-import swap.

Two copies of the book's tree run each script: the original, and one whose
``common/layers.py``, ``common/optimizer.py``, ``common/multi_layer_net.py``,
``common/multi_layer_net_extend.py``, ``common/trainer.py``, ``ch07/simple_convnet.py`` and
``ch08/deep_convnet.py`` are each a one-line fastbp import. Both get the same seed and the
embedded MNIST (``dataset/mnist.py`` is a shim, no download); the iteration counts and data
sizes are cut by exact text replacements so each run takes seconds. The printed numbers
(losses, accuracies) must agree. Skipped when ../shared/book is absent.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BOOK = Path(__file__).resolve().parents[1].parent / "shared" / "book"
pytestmark = pytest.mark.skipif(not BOOK.is_dir(), reason="the book's code is not here")

SWAPS = {
    "common/layers.py": "from fastbp.layers import *",
    "common/optimizer.py": "from fastbp.optimizers import *",
    "common/multi_layer_net.py": "from fastbp.nets import MultiLayerNet",
    "common/multi_layer_net_extend.py": "from fastbp.nets import MultiLayerNetExtend",
    "common/trainer.py": "from fastbp.trainer import Trainer",
    "ch07/simple_convnet.py": "from fastbp.convnets import SimpleConvNet",
    "ch08/deep_convnet.py": "from fastbp.convnets import DeepConvNet",
}
PREAMBLE = "import numpy as np; np.random.seed(0)  # test preamble\n"
SMALL_DATA = (
    "(x_train, t_train), (x_test, t_test) = load_mnist(flatten=False)",
    "(x_train, t_train), (x_test, t_test) = load_mnist(flatten=False)\n"
    "x_train, t_train, x_test, t_test = x_train[:200], t_train[:200], x_test[:100], "
    "t_test[:100]",
)
# script: [(text in the book's script, replacement)], in run order (half_float_network
# reads the parameters train_deepnet saved).
SCRIPTS = {
    "ch07/gradient_check.py": [],
    "ch07/train_convnet.py": [
        SMALL_DATA,
        ("max_epochs = 20", "max_epochs = 2"),
        ("evaluate_sample_num_per_epoch=1000", "evaluate_sample_num_per_epoch=100"),
    ],
    "ch08/train_deepnet.py": [
        SMALL_DATA,
        ("epochs=20", "epochs=1"),
        ("evaluate_sample_num_per_epoch=1000", "evaluate_sample_num_per_epoch=100"),
    ],
    "ch08/half_float_network.py": [("sampled = 10000", "sampled = 100")],
    "ch06/overfit_dropout.py": [("epochs=301", "epochs=3")],
    "ch06/optimizer_compare_naive.py": [  # plain float params; print where each ends
        (
            "    x = np.arange(-10, 10, 0.01)",
            "    print(key, params['x'], params['y'])\n    continue",
        )
    ],
    "ch06/batch_norm_test.py": [
        ("x_train = x_train[:1000]", "x_train = x_train[:200]"),
        ("t_train = t_train[:1000]", "t_train = t_train[:200]"),
        ("max_epochs = 20", "max_epochs = 2"),
        ("num=16)", "num=3)"),
        ("/16", "/3"),
    ],
    "ch06/hyperparameter_optimization.py": [
        ("optimization_trial = 100", "optimization_trial = 2"),
        ("epochs=epocs", "epochs=2"),
    ],
    "ch06/batch_norm_gradient_check.py": [],
    "ch06/overfit_weight_decay.py": [("max_epochs = 201", "max_epochs = 3")],
    "ch06/weight_init_compare.py": [("max_iterations = 2000", "max_iterations = 101")],
    "ch06/optimizer_compare_mnist.py": [("max_iterations = 2000", "max_iterations = 101")],
    "ch08/misclassified_mnist.py": [SMALL_DATA],
    "ch07/apply_filter.py": [  # print what each filter's output would plot
        (
            "    out = out.reshape(out.shape[2], out.shape[3])",
            "    out = out.reshape(out.shape[2], out.shape[3])\n"
            "    print(out.dtype, out.shape, out.sum(), abs(out).max())",
        )
    ],
}
# Scripts that print gradient-check differences (numerical vs backprop): fastbp's may be
# as small as the book's or smaller, not equal.
GRADIENT_CHECKS = ("ch07/gradient_check.py", "ch06/batch_norm_gradient_check.py")
# Scripts that read the parameters ch08/train_deepnet.py saves.
READ_DEEPNET = ("ch08/half_float_network.py", "ch08/misclassified_mnist.py")
# Scripts that read the parameters ch07/train_convnet.py saves: both trees get the
# book's, so that only the script's own code differs.
READ_CONVNET = ("ch07/apply_filter.py",)
# ch07/apply_filter.py reads dataset/lena_gray.png, which the book's tree here does not
# ship: both trees get the same stand-in, an 8-bit grayscale PNG (imread: float32 [H, W]).
STAND_IN_IMAGE = "dataset/lena_gray.png"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def make_tree(root, swapped):
    """A copy of the book's tree under ``root`` with the SCRIPTS patched (and, if
    ``swapped``, the SWAPS applied); returns root."""
    shutil.copytree(BOOK, root, ignore=shutil.ignore_patterns("*.pkl", "__pycache__"))
    (root / "dataset" / "mnist.py").write_text("from fastbp.data import load_mnist\n")
    rows, cols = np.mgrid[0:48, 0:64]
    pixels = (127.5 + 127.5 * np.sin(rows / 5.0) * np.cos(cols / 7.0)).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(root / STAND_IN_IMAGE)
    if swapped:
        for path, line in SWAPS.items():
            (root / path).write_text(line + "\n")
    for path, replacements in SCRIPTS.items():
        text = (root / path).read_text(encoding="utf-8")
        for old, new in replacements:
            assert old in text, f"{path} no longer contains {old!r}"
            text = text.replace(old, new)
        (root / path).write_text(PREAMBLE + text, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("book")
    return make_tree(base / "book", False), make_tree(base / "fastbp", True)


def run(tree, script):
    """The script's stdout, run from its chapter directory as the book runs it."""
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, Path(script).name],
        cwd=tree / Path(script).parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def numbers(text):
    """(lines without their numbers, the numbers)."""
    lines = text.splitlines()
    return [NUMBER.sub("#", line) for line in lines], [
        float(m) for line in lines for m in NUMBER.findall(line)
    ]


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_book_script_runs_with_the_books_results(trees, script):
    book_tree, fast_tree = trees
    for tree in trees:  # half_float_network reads what train_deepnet saves
        saved = tree / "ch08" / "deep_convnet_params.pkl"
        if script in READ_DEEPNET and not saved.exists():
            run(tree, "ch08/train_deepnet.py")
    if script in READ_CONVNET:
        if not (book_tree / "ch07" / "params.pkl").exists():
            run(book_tree, "ch07/train_convnet.py")
        shutil.copy(book_tree / "ch07" / "params.pkl", fast_tree / "ch07" / "params.pkl")
    book_out, fast_out = run(book_tree, script), run(fast_tree, script)
    (book_lines, expected), (lines, got) = numbers(book_out), numbers(fast_out)
    assert lines == book_lines
    assert len(got) > 0
    if script in GRADIENT_CHECKS:  # mean |numerical - backprop| per parameter
        assert all(g <= 2 * e + 1e-12 for g, e in zip(got, expected, strict=True))
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)


# The book's scripts that print nothing to compare: each must run unchanged on fastbp,
# after the script that writes what it loads (if any). weight_init_activation_histogram
# uses no class of fastbp's, and awesome_net is a comment: both run, as in the book.
PLOT_ONLY = {
    "ch07/visualize_filter.py": ("ch07/train_convnet.py", "ch07/params.pkl"),
    "ch06/weight_init_activation_histogram.py": None,
    "ch08/awesome_net.py": None,
}


@pytest.mark.parametrize("script", list(PLOT_ONLY))
def test_plot_only_book_script_runs(trees, script):
    fast_tree = trees[1]
    if PLOT_ONLY[script] is not None:
        writer, saved = PLOT_ONLY[script]
        if not (fast_tree / saved).exists():
            run(fast_tree, writer)
    assert run(fast_tree, script) == ""
