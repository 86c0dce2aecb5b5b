"""The network benchmarks' pure parts: tolerance goals, slopes, replication windows,
delay-accuracy points."""

from __future__ import annotations

import math

import pytest

from bench.network import accuracy_points, replication_window
from bench.stats import Goal, Row, least_squares_slope


def test_a_plus_minus_goal_judges_the_distance_to_the_baseline() -> None:
    goal = Goal("±", 1.0, on="baseline")
    assert goal.met(2.9, None, 2.0) is True
    assert goal.met(1.0, None, 2.0) is True
    assert goal.met(3.01, None, 2.0) is False
    assert goal.met(2.0, None, None) is None
    assert goal.describe("ms") == "± 1 ms of baseline"
    passed = Row("probe", "tokyo edge", "ms", value=8.4, baseline=8.0, goal=goal).judge()
    failed = Row("probe", "tokyo edge", "ms", value=9.5, baseline=8.0, goal=goal).judge()
    assert (passed.status, failed.status) == ("pass", "fail")


def test_least_squares_slope_fits_a_line_and_refuses_too_few_points() -> None:
    points = [(t, 100.0 + 250.0 * t) for t in (0.0, 0.5, 1.0, 3.0)]
    assert least_squares_slope(points) == pytest.approx(250.0)
    # One late sample moves a two-point slope a lot, a fit over the window much less.
    noisy = [(0.0, 0.0), (1.0, 1000.0), (2.0, 2000.0), (3.0, 3000.0), (3.3, 4000.0)]
    assert least_squares_slope(noisy) == pytest.approx(1133.5, rel=0.01)
    assert math.isnan(least_squares_slope([(1.0, 5.0)]))
    assert math.isnan(least_squares_slope([(1.0, 5.0), (1.0, 6.0)]))


def test_replication_window_compares_what_the_pop_applied_with_what_the_origin_acked() -> None:
    # The origin acks 200 entries every 10 ms from t=100; the PoP holds each batch 100 ms
    # later (a 100 ms link carrying everything).
    acked = [(100.0 + 0.01 * i, 200 * (i + 1)) for i in range(300)]

    def held(t: float) -> int:
        """Entries the PoP holds at time t: every batch acked by t - 100 ms."""
        return sum(200 for at, _ in acked if at + 0.1 <= t + 1e-9)

    applied = [(100.0 + 0.005 * i, held(100.0 + 0.005 * i)) for i in range(800)]
    window = replication_window(acked, applied, started_at=100.0, warmup_s=1.0)
    assert window["offered_per_s"] == pytest.approx(20_000, rel=0.001)
    assert window["carried_per_s"] == pytest.approx(20_000, rel=0.02)
    assert window["pipeline_p50_s"] == pytest.approx(0.1, abs=0.006)
    assert window["entries"] == 200 * 299 - 200 * 100
    with pytest.raises(ValueError):
        replication_window(acked[:5], applied, started_at=100.0, warmup_s=1.0)


def test_accuracy_points_read_p50_and_p99_per_target_sorted_by_requested_rtt() -> None:
    rows = [
        {
            "region": "tokyo",
            "edge_target_ms": 8.0,
            "edge_samples_ms": [8.0 + 0.1 * i for i in range(11)],
            "origin_target_ms": 170.0,
            "origin_samples_ms": [170.0] * 10 + [200.0],
        },
        {
            "region": "new-york",
            "edge_target_ms": 2.0,
            "edge_samples_ms": [4.0] * 5,
            "origin_target_ms": 5.0,
            "origin_samples_ms": [5.2] * 5,
        },
    ]
    points = accuracy_points(rows)
    assert [p["requested_ms"] for p in points] == [2.0, 5.0, 8.0, 170.0]
    tokyo_edge = next(p for p in points if p["label"] == "tokyo edge")
    assert tokyo_edge["p50_ms"] == pytest.approx(8.5)
    assert tokyo_edge["p99_ms"] == pytest.approx(8.99)
    tokyo_origin = next(p for p in points if p["label"] == "tokyo origin")
    assert tokyo_origin["p50_ms"] == 170.0 and tokyo_origin["max_ms"] == 200.0
    # New York's edge is 2 ms off a 2 ms target: twice its 1 ms tolerance.
    assert points[0]["p50_error_of_tolerance"] == pytest.approx(2.0)
    assert tokyo_origin["p50_error_of_tolerance"] == 0.0
