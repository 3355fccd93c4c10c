"""Shared shape of the kernel and layer suites: one (forward, backward) pair per case."""

from fastbp import benchcases


class _ForwardBackward:
    """Times ``forward`` and ``backward`` of one family; ``define`` makes the subclasses.

    ``setup`` builds seeded data and calls both once, so Numba compilation (or loading
    the on-disk cache) stays out of the timings.
    """

    build = None  # benchcases.kernel_pair or benchcases.layer_pair
    family = None
    param_names = ["shape", "dtype", "impl"]

    def setup(self, shape, dtype, impl):
        self.forward, self.backward = self.build(self.family, impl, shape, dtype)
        self.forward()
        self.backward()

    def time_forward(self, shape, dtype, impl):
        self.forward()

    def time_backward(self, shape, dtype, impl):
        self.backward()


def define(namespace, build, families):
    """Add one _ForwardBackward subclass per {class name: family} to ``namespace``."""
    for class_name, family in families.items():
        shapes = benchcases.family_shapes(family)
        namespace[class_name] = type(
            class_name,
            (_ForwardBackward,),
            {
                "__module__": namespace["__name__"],
                "__doc__": f"forward/backward of {family}, fastbp vs the NumPy reference.",
                "build": staticmethod(build),
                "family": family,
                "params": [list(shapes), list(benchcases.DTYPES), list(benchcases.IMPLS)],
            },
        )
