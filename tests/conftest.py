"""Fixtures shared by the test modules; data builders live in ``helpers.py``."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    """A freshly seeded generator, so every test sees the same data on every run."""
    return np.random.default_rng(20261123)
