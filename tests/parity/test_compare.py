"""compare_tensors: torch.testing's rule, and which element a report points at."""

import numpy as np
import pytest

from parity.compare import Tolerance, compare_tensors

TOL = Tolerance(rtol=1e-6, atol=1e-9, reason="test")


def test_points_at_the_element_furthest_outside_its_tolerance():
    # element 0 has the larger absolute error but is within rtol of its large value;
    # element 1 has a smaller absolute error and is far outside tolerance
    error = compare_tensors("w", np.array([1000.0, 1e-3]), np.array([1000.0005, 1.1e-3]), TOL)
    assert not error.ok and error.mismatched == 1
    assert error.index == (1,)
    assert (error.torch_value, error.jax_value) == (1e-3, 1.1e-3)
    assert error.max_abs == pytest.approx(5e-4, rel=1e-6)  # the maxima are still the maxima


def test_nan_and_inf_agree_only_with_themselves():
    assert compare_tensors("x", np.array([np.nan, np.inf]), np.array([np.nan, np.inf]), TOL).ok
    assert not compare_tensors("x", np.array([np.nan]), np.array([0.0]), TOL).ok
    assert not compare_tensors("x", np.array([np.inf]), np.array([-np.inf]), TOL).ok


def test_shape_difference_is_named():
    error = compare_tensors("fc1.weight", np.zeros((2, 3)), np.zeros((3, 2)), TOL)
    assert not error.ok and "shape differs: torch (2, 3) vs jax (3, 2)" in error.describe()
