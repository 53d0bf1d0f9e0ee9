"""The one place attack parameters are checked (attacks/params.py)."""

from __future__ import annotations

import numpy as np
import pytest

from backdoor_audit.options import float_param, int_param
from backdoor_audit.errors import SpecError


def test_numbers_pass_and_integral_floats_become_ints():
    assert int_param("a", "n", 3) == 3 and int_param("a", "n", 4.0) == 4 and int_param("a", "n", np.int64(5)) == 5
    assert float_param("a", "x", 1) == 1.0 and float_param("a", "x", np.float32(0.5)) == 0.5


@pytest.mark.parametrize("value", ["3", True, None, 2.5, float("nan"), [1]])
def test_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(SpecError, match=r"^a n must be an integer, got "):
        int_param("a", "n", value)


@pytest.mark.parametrize("value", ["0.5", False, None, float("inf"), float("nan")])
def test_float_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(SpecError, match=r"^a x must be a number, got "):
        float_param("a", "x", value)


def test_ranges_are_named_in_the_message():
    with pytest.raises(SpecError, match=r"^a n must be >= 1, got 0$"):
        int_param("a", "n", 0, minimum=1)
    with pytest.raises(SpecError, match=r"^a n must be an integer in \[1, 6\], got 7$"):
        int_param("a", "n", 7, minimum=1, maximum=6)
    with pytest.raises(SpecError, match=r"^a n must be an integer in \[1, 6\], got 0$"):
        int_param("a", "n", 0, minimum=1, maximum=6)
    with pytest.raises(SpecError, match=r"^a n must be <= 6, got 7$"):
        int_param("a", "n", 7, maximum=6)
    with pytest.raises(SpecError, match=r"^a x must be in \[0, 1\], got 1.5$"):
        float_param("a", "x", 1.5, minimum=0, maximum=1)
    with pytest.raises(SpecError, match=r"^a x must be in \(-inf, 2\], got 3$"):
        float_param("a", "x", 3, maximum=2)
    with pytest.raises(SpecError, match=r"^a x must be in \(0, 1\], got 0$"):
        float_param("a", "x", 0, minimum=0, maximum=1, open_min=True)
    with pytest.raises(SpecError, match=r"^a x must be in \[0, 1\), got 1$"):
        float_param("a", "x", 1, minimum=0, maximum=1, open_max=True)
    with pytest.raises(SpecError, match=r"^a x must be in \(0, inf\), got -1$"):
        float_param("a", "x", -1, minimum=0, open_min=True)
    assert float_param("a", "x", 1, minimum=0, maximum=1, open_min=True) == 1.0
