"""asv: one SGD step of the book's TwoLayerNet(784, H, 10), fastbp beside the NumPy original.

A step is ``grads = net.gradient(x, t)`` then ``params[key] -= lr * grads[key]`` per
parameter, on a seeded batch of B MNIST-sized rows with one-hot labels; the columns are
``benchcases.STEP_BUILDERS`` (fastbp.nets, the book's classes, the fused step, fastbp's
layers one by one).
"""

import subprocess
import sys
import textwrap

from fastbp import benchcases

STEPS = list(benchcases.STEP_BUILDERS)


class TrainStep:
    params = [list(benchcases.TRAIN_SIZES), list(benchcases.DTYPES), STEPS]
    param_names = ["(hidden, batch)", "dtype", "impl"]
    repeat = (5, 20, 10.0)
    min_run_count = 5

    def setup(self, sizes, dtype, impl):
        self.step = benchcases.train_step_case(impl, *sizes, dtype)
        self.step()
        self.calls = range(benchcases.calls_per_sample((sizes[1], benchcases.INPUT_SIZE, sizes[0])))

    def time_step(self, sizes, dtype, impl):
        for _ in self.calls:
            self.step()

    def peakmem_step(self, sizes, dtype, impl):
        self.step()


class ImportAndFirstStep:
    """A fresh interpreter: import, build the net, one train step (Numba cache warm)."""

    params = [STEPS]
    param_names = ["impl"]
    number = 1
    repeat = (3, 10, 20.0)

    def _code(self, impl):
        return textwrap.dedent(
            f"""
            from fastbp import benchcases
            benchcases.train_step_case({impl!r}, 100, 100, "float64")()
            """
        )

    def setup(self, impl):
        # Run it once so that the Numba cache on disk is populated before timing.
        subprocess.run([sys.executable, "-c", self._code(impl)], check=True)

    def timeraw_import_and_step(self, impl):
        return self._code(impl)
