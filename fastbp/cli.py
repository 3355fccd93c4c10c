"""The fastbp command: fastbp train (the main job) and fastbp bench.

``fastbp train`` trains the book's TwoLayerNet (or a MultiLayerNet with ``--layers``) on
MNIST: the embedded 8,000/2,000 split by default, the full data set with ``--data DIR``.
It prints accuracy and throughput per epoch and writes a learning-curve PNG.
"""

import argparse
import math
import os
import sys
import time
from pathlib import Path

# Optimizers by command-line name: (class name in fastbp.optimizers, default learning rate).
# The rates train TwoLayerNet on the embedded split to >= 93% test accuracy in 17 epochs.
OPTIMIZERS = {
    "sgd": ("SGD", 0.5),
    "momentum": ("Momentum", 0.05),
    "adagrad": ("AdaGrad", 0.05),
    "adam": ("Adam", 0.002),
}


# Exit statuses besides 0: a user error, Ctrl-C (128 + SIGINT), a closed stdout (128 + SIGPIPE,
# what the shell reports for a writer killed by the signal; here nothing dies by a signal).
USAGE_ERROR, INTERRUPTED, BROKEN_PIPE = 2, 130, 141


class UsageError(Exception):
    """A user error found after parsing: ``main`` prints ``fastbp: error: MESSAGE``, exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse with fastbp's one-line error format (no usage block)."""

    def error(self, message):
        self.exit(USAGE_ERROR, f"fastbp: error: {message}\n")


# -- argparse types: each option is checked while parsing, before anything runs ------------


def hidden_sizes(text):
    """'100,50' -> [100, 50] (argparse type of --layers)."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 100,50, got {text!r}")
    return sizes


def number(kind, minimum, strict):
    """argparse type: a finite number of ``kind`` (int or float) that is > ``minimum``
    (``strict``) or >= it."""

    def parse(text):
        value = kind(text)
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(
                f"must be a finite number {'>' if strict else '>='} {minimum}, got {text}"
            )
        return value

    parse.__name__ = kind.__name__  # argparse names the kind in "invalid int value"
    return parse


def positive(kind):
    """argparse type: a finite number of ``kind`` that is > 0."""
    return number(kind, 0, strict=True)


def non_negative(kind):
    """argparse type: a finite number of ``kind`` that is >= 0."""
    return number(kind, 0, strict=False)


def directory(text):
    """argparse type: an existing directory."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {text}")
    return text


def image_path(text):
    """argparse type: the path of an image to write (as given), checked to be writable now;
    no extension means PNG, and '.png' is added (as matplotlib would, so the path printed
    is the path written)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(text).expanduser()
    if not path.suffix:
        path = path.with_name(path.name + ".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix[1:].lower() not in formats:
        raise argparse.ArgumentTypeError(
            f"{text}: unknown image format {path.suffix!r} (use one of "
            + ", ".join(f".{f}" for f in sorted(formats))
            + ")"
        )
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory: {path.parent}")
    existed = path.exists()
    try:  # the only reliable test: open it (root may write where the mode bits say no)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"{text}: cannot write: {e.strerror}") from e
    if not existed:
        path.unlink(missing_ok=True)  # missing_ok: MPI ranks check the same path at once
    return path


# Options of ``fastbp train`` in --help order: (flag, add_argument keywords).
TRAIN_OPTIONS = (
    (
        "--data",
        {
            "type": directory,
            "metavar": "DIR",
            "help": "directory with the four MNIST IDX files "
            "(train-images-idx3-ubyte[.gz], ...); default: the embedded data",
        },
    ),
    (
        "--model",
        {
            "choices": ["mlp", "convnet"],
            "default": "mlp",
            "help": "mlp (default): TwoLayerNet, or MultiLayerNet with --layers; convnet: the "
            "book's ch07 SimpleConvNet (conv 30x5x5 - relu - pool - affine 100 - relu - affine)",
        },
    ),
    (
        "--hidden",
        {"type": positive(int), "default": 50, "help": "hidden units of TwoLayerNet (default 50)"},
    ),
    (
        "--layers",
        {
            "type": hidden_sizes,
            "metavar": "N,N,...",
            "help": "hidden sizes of a MultiLayerNet instead, e.g. 100,50",
        },
    ),
    (
        "--activation",
        {
            "choices": ["relu", "sigmoid"],
            "default": "relu",
            "help": "activation of --layers (default relu, He init; sigmoid: Xavier)",
        },
    ),
    (
        "--weight-decay",
        {
            "type": non_negative(float),
            "default": 0.0,
            "metavar": "LAMBDA",
            "help": "L2 weight decay of --layers (default 0)",
        },
    ),
    ("--batch", {"type": positive(int), "default": 100, "help": "batch size (100)"}),
    (
        "--optimizer",
        {
            "choices": list(OPTIMIZERS),
            "help": "default sgd (momentum for --model convnet: 97%% test accuracy in 17 epochs)",
        },
    ),
    (
        "--lr",
        {
            "type": positive(float),
            "help": "learning rate (default per optimizer: "
            + ", ".join(f"{k} {v[1]}" for k, v in OPTIMIZERS.items())
            + ")",
        },
    ),
    ("--epochs", {"type": positive(int), "default": 17, "help": "epochs (17)"}),
    (
        "--dtype",
        {
            "choices": ["float32", "float64"],
            "default": "float64",
            "help": "parameter and data dtype (default float64, as the book)",
        },
    ),
    (
        "--seed",
        {
            "type": non_negative(int),
            "default": 0,
            "help": "seed of the weight init and batch order (default 0)",
        },
    ),
    (
        "--plot",
        {
            "type": image_path,
            "default": "learning_curve.png",
            "metavar": "PATH",
            "help": "learning-curve PNG to write (default ./learning_curve.png)",
        },
    ),
    (
        "--blas-threads",
        {
            "type": positive(int),
            "default": 1,
            "metavar": "N",
            "help": "BLAS threads while training (default 1: the per-step matrix "
            "products are small, and extra BLAS threads stall on a busy machine)",
        },
    ),
    ("--no-progress", {"action": "store_true", "help": "no progress bar"}),
    (
        "--distributed",
        {
            "action": "store_true",
            "help": "data-parallel over MPI ranks, run as: mpiexec -n N fastbp train "
            "--distributed (needs fastbp[mpi]); same result as one process, rank 0 prints "
            "and plots",
        },
    ),
)
# Options of which at most one may be given.
EXCLUSIVE = ("--hidden", "--layers")


def configure_train(parser):
    """Options of ``fastbp train``."""
    net = parser.add_mutually_exclusive_group()
    for flag, keywords in TRAIN_OPTIONS:
        (net if flag in EXCLUSIVE else parser).add_argument(flag, **keywords)
    parser.set_defaults(handler=run_train)


def build_net(args, rng):
    """The network the arguments describe (784 inputs, 10 classes)."""
    from fastbp.nets import MultiLayerNet, SimpleConvNet, TwoLayerNet

    if args.model == "convnet":
        return SimpleConvNet(dtype=args.dtype, rng=rng)
    if args.layers:
        return MultiLayerNet(
            784,
            args.layers,
            10,
            args.activation,
            args.activation,
            args.weight_decay,
            dtype=args.dtype,
            rng=rng,
        )
    return TwoLayerNet(784, args.hidden, 10, dtype=args.dtype, rng=rng)


def describe(args, lr):
    if args.model == "convnet":
        net = "SimpleConvNet((1, 28, 28), 30 filters 5x5, hidden 100, 10)"
    elif args.layers:
        net = f"MultiLayerNet(784, {args.layers}, 10, {args.activation!r}"
        net += f", weight_decay_lambda={args.weight_decay})" if args.weight_decay else ")"
    else:
        net = f"TwoLayerNet(784, {args.hidden}, 10)"
    name = OPTIMIZERS[args.optimizer][0]
    return (
        f"{net} {args.dtype}, {name}(lr={lr}), batch {args.batch}, "
        f"{args.epochs} epochs, seed {args.seed}"
    )


def load_data(args):
    """((x, t), (x_test, t_test)) with images in ``args.dtype``; UsageError if unreadable."""
    from fastbp.data import load_mnist

    try:
        (x, t), (x_test, t_test) = load_mnist(data_dir=args.data, flatten=args.model != "convnet")
    except (OSError, ValueError) as e:  # missing files, not IDX files, truncated files
        raise UsageError(f"--data {args.data}: {e}") from e
    return (x.astype(args.dtype), t), (x_test.astype(args.dtype), t_test)


def mpi_rank():
    """This process as an MPI rank of ``--distributed`` (UsageError without the extra)."""
    from fastbp.distributed import get_mpi, init_rank

    try:
        get_mpi()
    except ImportError as e:
        raise UsageError(str(e)) from e
    return init_rank()


def run_train(args):
    """Train, print per-epoch accuracy and throughput, write the learning-curve PNG.

    Ctrl-C stops training: what was measured is printed and plotted, and the status is 130.
    """
    import numpy as np
    from tqdm import tqdm

    from fastbp import optimizers
    from fastbp.train import History, blas_threads, plot_history, train

    args.optimizer = args.optimizer or ("momentum" if args.model == "convnet" else "sgd")
    data = load_data(args)
    comm = mpi_rank() if args.distributed else None  # abort all on error, rank 0 prints
    seeds = np.random.SeedSequence(args.seed).spawn(2)
    init_rng, order_rng = (np.random.default_rng(s) for s in seeds)
    (x, t), (x_test, _) = data
    source = args.data or "embedded MNIST t10k split"
    print(f"data: {source}: {len(x):,} training, {len(x_test):,} test images")
    lr = args.lr or OPTIMIZERS[args.optimizer][1]
    title = describe(args, lr)
    print(f"train: {title}")
    net = build_net(args, init_rng)
    if comm is not None:
        from fastbp.distributed import DataParallel

        net = DataParallel(net, comm)
        print(f"data-parallel: {comm.size} MPI ranks share each batch of {args.batch}")
    optimizer = getattr(optimizers, OPTIMIZERS[args.optimizer][0])(lr=lr)

    bar = tqdm(
        total=args.epochs * len(x),
        unit="img",
        unit_scale=True,
        disable=args.no_progress,
        leave=False,
        dynamic_ncols=True,
        smoothing=0,  # the average rate of the steps: what the epoch lines print
    )

    def on_step(step, loss, samples):
        bar.update(samples)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def on_epoch(epoch, history):
        steps = history.epoch_steps[-1]
        loss = float(np.mean(history.loss[-steps:]))
        rate = history.epoch_samples[-1] / history.epoch_seconds[-1]
        if not bar.disable:  # the bar's rate leaves the evaluation out too
            bar.start_t += history.eval_seconds[-1]
        bar.write(
            f"epoch {epoch:{len(str(args.epochs))}d}/{args.epochs}  loss {loss:.4f}  "
            f"train acc {history.train_acc[-1]:.4f}  test acc {history.test_acc[-1]:.4f}"
            f"  ({rate:,.0f} samples/s)",
            file=sys.stdout,
        )

    history, interrupted = History(), False
    start = time.perf_counter()
    try:
        with blas_threads(args.blas_threads), bar:
            # Load (or compile) the layers' kernels first, so that epoch 1's rate is a fair
            # one; a gradient leaves the parameters as they are.
            net.gradient(x[: args.batch].astype(args.dtype), t[: args.batch])
            bar.write(f"kernels ready in {time.perf_counter() - start:.1f} s", file=sys.stdout)
            bar.reset()  # the bar's clock starts with the steps
            train(
                net,
                optimizer,
                data,
                args.batch,
                args.epochs,
                order_rng,
                on_step,
                on_epoch,
                history=history,
            )
    except KeyboardInterrupt:
        interrupted = True
        print(
            f"interrupted after {len(history.test_acc)} of {args.epochs} epochs "
            f"({len(history.loss)} steps)"
        )
    elapsed = time.perf_counter() - start
    if history.test_acc:
        print(
            f"final test accuracy {history.test_acc[-1]:.4f}, train accuracy "
            f"{history.train_acc[-1]:.4f}"
        )
    if history.epoch_seconds:
        print(
            f"time {elapsed:.1f} s ({history.samples_per_second:,.0f} samples/s in training "
            "steps, evaluation excluded)"
        )
    if history.loss:
        if comm is None or comm.rank == 0:
            plot_history(history, args.plot, title)
        print(f"learning curve: {args.plot}")
    return INTERRUPTED if interrupted else 0


def configure_bench(parser, load):
    """Set up ``fastbp bench`` from fastbp.bench, imported only when bench is the command."""
    if load:
        from fastbp import bench

        bench.configure_parser(parser)
        parser.set_defaults(handler=bench.main)


def parser_for(argv):
    """The ``fastbp`` parser; fastbp.bench is imported only when argv starts with bench."""
    from fastbp import __version__

    parser = Parser(prog="fastbp", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"fastbp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    configure_train(
        commands.add_parser(
            "train",
            help="train on MNIST (the main job)",
            description="Train the book's TwoLayerNet (or a MultiLayerNet) on MNIST.",
        )
    )
    configure_bench(
        commands.add_parser(
            "bench",
            help="benchmarks against the book's NumPy code",
            description="Time fastbp against the book's NumPy code in one process, by "
            "section: kernels, layers, train steps, the book's ch05 training loop "
            "(userloop), other frameworks (peers), serial/parallel crossovers, "
            "data-parallel training (distributed) and the README's set-up commands in a new "
            "venv (setup). Prints tables; --json writes the rows "
            "that python -m fastbp.report turns into the docs' tables.",
        ),
        load=argv[:1] == ["bench"],
    )
    return parser


def main(argv=None):
    """Entry point of the ``fastbp`` console script; returns the exit status.

    A user error prints one line ``fastbp: error: ...`` and returns 2; Ctrl-C returns 130
    (``fastbp train`` first reports and plots what it has done); a closed stdout (``fastbp
    train | head -1``) stops the command quietly with 141.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parser_for(argv).parse_args(argv)
        return args.handler(args)
    except UsageError as e:
        print(f"fastbp: error: {e}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("fastbp: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        # Python's advice: point stdout at devnull, or the flush at exit fails again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
