"""Run by ``test_thread_pools.py`` in a fresh interpreter: the CPU time NumPy's BLAS worker
threads spend while fastbp's nets, layers and optimizers run (they must stay asleep),
against a positive control of NumPy's own GEMMs. Prints one JSON line."""

import json
import os
import sys
import time

import numpy as np  # NumPy's OpenBLAS starts its worker threads here, before any other

TICKS = os.sysconf("SC_CLK_TCK")
WORKERS = sorted(set(os.listdir("/proc/self/task")) - {str(os.getpid())})


def worker_seconds():
    """CPU seconds (user + system) of the threads started with NumPy's BLAS."""
    total = 0
    for tid in WORKERS:
        with open(f"/proc/self/task/{tid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15
    return total / TICKS


def busy(step, seconds=0.5):
    """(worker CPU seconds, wall seconds) while ``step`` runs over and over."""
    cpu, start = worker_seconds(), time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
    return worker_seconds() - cpu, time.perf_counter() - start


def main():
    from fastbp import convnets, nets, optimizers  # noqa: PLC0415 (after the threads are listed)
    from fastbp.bookloop import book_mnist, over_fastbp_layers, user_loop_net

    (x, t), _ = book_mnist()
    x, t = x[:1000], t[:1000]
    two = nets.TwoLayerNet(784, 50, 10)
    book_layers = over_fastbp_layers(user_loop_net("book"))
    decay = nets.MultiLayerNet(784, [100] * 3, 10, weight_decay_lambda=0.1)
    extend = nets.MultiLayerNetExtend(
        784, [100] * 3, 10, weight_decay_lambda=0.1, use_batchnorm=True
    )
    conv = convnets.SimpleConvNet()
    images = x[:20].reshape(20, 1, 28, 28)
    adam = optimizers.Adam()

    def fastbp_step():
        batch = np.random.choice(x.shape[0], 100)  # noqa: NPY002 (the book's loop)
        xb, tb = x[batch], t[batch]
        for net in (two, book_layers, decay, extend):
            grads = net.gradient(xb, tb)
            net.loss(xb, tb)
        adam.update(extend.params, grads)  # extend's gradient: the last net above
        conv.gradient(images, t[:20])
        two.accuracy(x, t)

    a = np.random.default_rng(0).standard_normal((400, 400))
    busy(fastbp_step, 1.0)  # compiles or loads the kernels, times the sparse choices
    time.sleep(0.3)  # NumPy's workers fall asleep again (OpenBLAS spins ~0.1 s)
    fastbp_cpu, fastbp_wall = busy(fastbp_step)
    numpy_cpu, numpy_wall = busy(lambda: a @ a)
    print(json.dumps({
        "workers": len(WORKERS),
        "fastbp": fastbp_cpu / fastbp_wall,
        "numpy": numpy_cpu / numpy_wall,
        "numba_threads": sys.modules["numba"].get_num_threads(),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
