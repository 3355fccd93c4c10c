"""asv: each ``fastbp.kernels`` family beside the NumPy reference functions."""

from fastbp import benchcases

from ._pairs import define as _define

_define(
    globals(),
    benchcases.kernel_case,
    {"Affine": "affine", "Relu": "relu", "Sigmoid": "sigmoid", "SoftmaxCE": "softmax_ce"},
)
