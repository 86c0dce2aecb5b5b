"""The failover bench fails (not notes) a Counter whose count goes back."""

from __future__ import annotations

from typing import Any

from bench.objects import counts_went_back


def _run(before: int, after: int) -> dict[str, Any]:
    return {"value_before": before, "value_after": after}


def test_counts_that_only_grow_are_no_finding() -> None:
    # Failed attempts without a request id may have run: gaps are allowed, not going back.
    assert counts_went_back([_run(1, 2), _run(3, 7), _run(8, 9)]) == []


def test_a_count_lower_after_a_kill_than_before_it_is_found() -> None:
    assert counts_went_back([_run(1, 2), _run(5, 4)]) == ["kill 2: 5 before the kill, 4 after"]


def test_a_count_that_repeats_its_value_after_a_kill_is_found() -> None:
    # The answer after the failover is a new increment: the same value means one was lost.
    assert counts_went_back([_run(5, 5)]) == ["kill 1: 5 before the kill, 5 after"]


def test_a_count_lower_at_the_next_kill_than_after_the_previous_one_is_found() -> None:
    assert counts_went_back([_run(1, 9), _run(7, 8)]) == ["kill 2: 7 after 9 at the previous kill"]
