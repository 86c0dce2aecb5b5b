"""The wall-clock grid periodic tasks sleep to (edgepop.ticks)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepop.ticks import EARLY_WAKE_FRACTION, until_next_tick


def test_a_tick_is_the_next_multiple_of_the_interval() -> None:
    assert until_next_tick(0.5, now=100.1) == pytest.approx(0.4)
    assert until_next_tick(5.0, now=1_000_003.0) == pytest.approx(2.0)


def test_two_processes_at_different_moments_wake_at_the_same_tick() -> None:
    # What makes their wake-ups coincide: the same grid, whoever asks when.
    first, second = 1_700_000_000.13, 1_700_000_000.41
    assert first + until_next_tick(0.5, now=first) == pytest.approx(
        second + until_next_tick(0.5, now=second)
    )


def test_waking_just_before_a_tick_counts_as_that_tick() -> None:
    # A timer that fired 1 ms early must not run the task again 1 ms later.
    assert until_next_tick(0.5, now=100.499) == pytest.approx(0.501)
    assert until_next_tick(0.5, now=100.0) == pytest.approx(0.5)


@given(
    interval=st.floats(min_value=0.01, max_value=10.0),
    now=st.floats(min_value=0.0, max_value=2e9),
)
def test_the_wait_lies_between_the_early_margin_and_one_interval_and_the_margin(
    interval: float, now: float
) -> None:
    wait = until_next_tick(interval, now=now)
    assert (
        interval * EARLY_WAKE_FRACTION * 0.999
        <= wait
        <= interval * (1 + EARLY_WAKE_FRACTION) + 1e-6
    )


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError):
        until_next_tick(0.0)
