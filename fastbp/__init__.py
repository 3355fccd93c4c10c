"""fastbp: Numba-compiled drop-in layers for backpropagation."""

import importlib.metadata

try:
    __version__ = importlib.metadata.version("fastbp")  # the one source: pyproject.toml
except importlib.metadata.PackageNotFoundError:  # run from a checkout without installing
    __version__ = "unknown"
