"""Numba kernels behind fastbp's layers; installed as ``fastbp.kernels``.

Each kernel writes into arrays the caller allocates and checks nothing: the layers in
``fastbp.layers`` validate shapes, dtypes and label ranges before calling one. Their Numba
cache is ``fastbp.kernels.cache``'s (recovers from damaged entries, works read-only).
"""

# First: sets the OpenMP spin policy before any parallel region starts the runtime,
# and hooks Numba's cache before any kernel is defined.
from fastbp.kernels import threads  # noqa: F401  isort: skip
import fastbp.kernels.cache  # noqa: F401  isort: skip
from fastbp.kernels.affine import affine_backward, affine_forward
from fastbp.kernels.batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_inference
from fastbp.kernels.conv import col2im, conv_backward, conv_forward, im2col
from fastbp.kernels.dispatch import CROSSOVER, force_path
from fastbp.kernels.dropout import dropout_backward, dropout_forward
from fastbp.kernels.pooling import maxpool2x2_forward, maxpool_backward, maxpool_forward
from fastbp.kernels.relu import relu_backward, relu_forward
from fastbp.kernels.sigmoid import sigmoid_backward, sigmoid_forward
from fastbp.kernels.softmax_ce import softmax_ce_backward, softmax_ce_forward

__all__ = [
    "CROSSOVER",
    "affine_backward",
    "affine_forward",
    "batchnorm_backward",
    "batchnorm_forward",
    "batchnorm_inference",
    "col2im",
    "conv_backward",
    "conv_forward",
    "dropout_backward",
    "dropout_forward",
    "force_path",
    "im2col",
    "maxpool2x2_forward",
    "maxpool_backward",
    "maxpool_forward",
    "relu_backward",
    "relu_forward",
    "sigmoid_backward",
    "sigmoid_forward",
    "softmax_ce_backward",
    "softmax_ce_forward",
]
