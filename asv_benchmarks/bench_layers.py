"""asv: each drop-in layer of ``fastbp.layers`` beside the book's NumPy class."""

from fastbp import benchcases

from ._pairs import define as _define

_define(
    globals(),
    benchcases.layer_case,
    {family: family for family in benchcases.LAYER_FAMILIES},
)
