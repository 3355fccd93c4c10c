"""fastbp: Numba-compiled drop-in layers for backpropagation."""

__version__ = "0.1.0"
