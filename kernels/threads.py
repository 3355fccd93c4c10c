"""One thread pool at a time: after fastbp's parallel regions, the cores are free again.

After a parallel region GNU OpenMP's workers spin (by default ~300,000 pause loops,
milliseconds on current CPUs) and take the cores that the user's next NumPy call needs
(measured: the book's ch06 scripts 2-2.5x slower). Unless the user chose a wait policy or
a spin count, ``quiet_openmp()`` sets a short spin (``SPIN_COUNT``) before the OpenMP
runtime starts: long enough to bridge the parallel loops of one fastbp call, short enough
to be gone before the user's next GEMM. Inside fastbp's parallel loops the BLAS calls are
single-threaded (``fastbp.kernels.blas``), so no BLAS pool competes with Numba's threads.
"""

import os

# GOMP_SPINCOUNT: pause loops a worker spins before it sleeps (tens of microseconds).
SPIN_COUNT = 10_000
SPIN_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def _libgomp_loaded():
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:
        return False


def quiet_openmp():
    """Set ``GOMP_SPINCOUNT=SPIN_COUNT`` unless the user set a wait policy or spin count,
    or GNU OpenMP already started (it reads them once). Returns whether it was set."""
    if any(name in os.environ for name in SPIN_VARIABLES) or _libgomp_loaded():
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    return True


QUIETED = quiet_openmp()
