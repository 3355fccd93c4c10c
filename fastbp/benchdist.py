"""``fastbp bench --section distributed``: data-parallel training over MPI ranks, timed.

Launches ``mpiexec`` once per configuration of ``CONFIGS`` (ranks, Numba threads per
rank, BLAS threads per rank; these runs set the thread variables of their ranks, which
is what they compare) with this module as the program; rank 0 prints one JSON line.
Needs the ``[mpi]`` extra.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from fastbp import benchcases, distributed

# (ranks, Numba threads per rank, BLAS threads per rank) of the runs.
CONFIGS = ((1, 2, 2), (1, 2, 1), (1, 1, 1), (2, 1, 1))
BLAS_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
BARE_ALLREDUCES = 30


def worker(hidden, batch_size, steps):
    """Time ``steps`` SGD steps of TwoLayerNet(784, hidden, 10) on MNIST global batches.

    Runs on every rank; rank 0 prints one JSON line with medians over the steps: seconds
    per step, seconds of it spent in the gradient Allreduce (waiting for slower ranks
    included), and the median time of a bare Allreduce of the buffer after a Barrier.
    """
    from fastbp.nets import TwoLayerNet
    from fastbp.optimizers import SGD

    comm = distributed.get_mpi().COMM_WORLD
    (x, t), _ = benchcases.book_mnist()
    net = distributed.DataParallel(TwoLayerNet(784, hidden, 10, rng=0), comm)
    optimizer = SGD(lr=benchcases.BOOK_LR)
    rng = np.random.default_rng(0)
    step_s, allreduce_s = [], []
    warmup = max(3, steps // 10)
    for i in range(warmup + steps):
        batch = rng.choice(len(x), batch_size)
        start, before = time.perf_counter(), net.allreduce_seconds
        optimizer.update(net.params, net.gradient(x[batch], t[batch]))
        if i >= warmup:
            step_s.append(time.perf_counter() - start)
            allreduce_s.append(net.allreduce_seconds - before)
    bare = []
    for _ in range(BARE_ALLREDUCES):
        comm.Barrier()
        start = time.perf_counter()
        distributed.allreduce_sum(comm, net.grads.flat, net.timeout, "benchmark Allreduce")
        bare.append(time.perf_counter() - start)
    if comm.rank == 0:
        result = {
            "ranks": comm.size,
            "hidden": hidden,
            "batch_size": batch_size,
            "step_s": float(np.median(step_s)),
            "allreduce_in_step_s": float(np.median(allreduce_s)),
            "bare_allreduce_s": float(np.median(bare)),
            "buffer_bytes": net.grads.flat.nbytes,
        }
        print(json.dumps(result), flush=True)


def bench(hidden, batch_size, steps, mpiexec=None):
    """Run ``worker`` under mpiexec for every configuration in CONFIGS; the JSON rows."""
    mpiexec = mpiexec or distributed.find_mpiexec()
    rows = []
    for ranks, threads, blas in CONFIGS:
        env = {
            **os.environ,
            **dict.fromkeys(BLAS_VARS, str(blas)),
            "NUMBA_NUM_THREADS": str(threads),
        }
        command = [mpiexec, "-n", str(ranks), sys.executable, "-m", "fastbp.benchdist"]
        command += [str(hidden), str(batch_size), str(steps)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"threads": threads, "blas": blas, **row})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastbp.benchdist",
        description="One rank of the distributed benchmark (run by fastbp bench under mpiexec).",
    )
    for name in ("hidden", "batch_size", "steps"):
        parser.add_argument(name, type=int)
    args = parser.parse_args(argv)
    with distributed.abort_on_error(distributed.get_mpi().COMM_WORLD):
        worker(args.hidden, args.batch_size, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
