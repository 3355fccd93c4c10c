"""Shared shape of the kernel and layer suites: one (forward, backward) pair per case."""

from fastbp import benchcases


class _ForwardBackward:
    """Times ``forward`` and ``backward`` of one family; ``define`` makes the subclasses.

    ``setup`` builds seeded data and calls both once, so Numba compilation (or loading
    the on-disk cache) stays out of the timings. Each timed call runs the case
    ``benchcases.calls_per_sample(shape)`` times (the same count for fastbp and the
    reference): asv's ``--quick`` times one call per sample, and asv_runner times one call
    per sample whenever a suite has a ``setup`` (``number`` resolves to 1), which at
    microsecond sizes would measure the timer and the call overhead instead of the case.
    """

    build = None  # benchcases.kernel_case or benchcases.layer_case
    family = None
    param_names = ["shape", "dtype", "impl"]
    repeat = (5, 20, 10.0)  # min samples, max samples, max seconds
    min_run_count = 5

    def setup(self, shape, dtype, impl):
        self.forward, self.backward = self.build(self.family, impl, shape, dtype)
        self.forward()
        self.backward()
        self.calls = range(benchcases.calls_per_sample(shape))

    def time_forward(self, shape, dtype, impl):
        for _ in self.calls:
            self.forward()

    def time_backward(self, shape, dtype, impl):
        for _ in self.calls:
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
                "__doc__": f"forward/backward of {family}, fastbp vs the NumPy reference "
                "(time of calls_per_sample(shape) calls).",
                "build": staticmethod(build),
                "family": family,
                "params": [list(shapes), list(benchcases.DTYPES), list(benchcases.IMPLS)],
            },
        )
