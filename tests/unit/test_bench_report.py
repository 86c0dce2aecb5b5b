"""The benchmark suite's pure helpers: percentiles, histogram deltas, RESP, goals, table."""

from __future__ import annotations

import math

import pytest

from bench.resp import Incomplete, RespError, encode, parse, parse_all
from bench.stats import (
    Goal,
    Row,
    bucket_delta,
    ecdf,
    histogram_buckets,
    histogram_cdf,
    histogram_quantile,
    markdown_table,
    merge_buckets,
    metric_value,
    parse_prometheus,
    percentile,
    summarize,
)

METRICS_PAGE = """\
# HELP edge_kv_propagation_seconds Time from an entry's commit at the origin to its apply.
# TYPE edge_kv_propagation_seconds histogram
edge_kv_propagation_seconds_bucket{le="0.001",node="tokyo-1",region="tokyo"} 10.0
edge_kv_propagation_seconds_bucket{le="0.002",node="tokyo-1",region="tokyo"} 30.0
edge_kv_propagation_seconds_bucket{le="0.005",node="tokyo-1",region="tokyo"} 40.0
edge_kv_propagation_seconds_bucket{le="+Inf",node="tokyo-1",region="tokyo"} 40.0
edge_kv_propagation_seconds_count{node="tokyo-1",region="tokyo"} 40.0
edge_kv_replica_applied_seq{node="tokyo-1",region="tokyo"} 1234.0
edge_kv_replication_lag_seconds{node="tokyo-1",region="tokyo"} 0.25
"""


def test_percentile_interpolates_between_samples_like_numpy() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([5.0], 0.99) == 5.0
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert math.isnan(percentile([], 0.5))
    summary = summarize([3.0, 1.0, 2.0])
    assert summary["count"] == 3 and summary["p50"] == 2.0 and summary["max"] == 3.0


def test_ecdf_is_thinned_but_keeps_the_maximum() -> None:
    xs, fractions = ecdf([float(value) for value in range(10_000)], points_max=100)
    assert len(xs) <= 102
    assert xs[-1] == 9999.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)


def test_prometheus_page_parses_gauges_and_histogram_buckets() -> None:
    samples = parse_prometheus(METRICS_PAGE)
    assert metric_value(samples, "edge_kv_replica_applied_seq") == 1234.0
    assert metric_value(samples, "edge_kv_replication_lag_seconds") == 0.25
    buckets = histogram_buckets(samples, "edge_kv_propagation_seconds")
    assert buckets == [(0.001, 10.0), (0.002, 30.0), (0.005, 40.0), (math.inf, 40.0)]
    only_lag = parse_prometheus(METRICS_PAGE, ("edge_kv_replication_lag",))
    assert [sample.name for sample in only_lag] == ["edge_kv_replication_lag_seconds"]


def test_histogram_quantile_interpolates_inside_the_bucket_like_prometheus() -> None:
    buckets = [(0.001, 10.0), (0.002, 30.0), (0.005, 40.0), (math.inf, 40.0)]
    # Rank 20 of 40 lies halfway through the (1 ms, 2 ms] bucket.
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.0015)
    # The first bucket starts at 0.
    assert histogram_quantile(0.125, buckets) == pytest.approx(0.0005)
    assert histogram_quantile(1.0, buckets) == pytest.approx(0.005)
    # A quantile in +Inf answers the highest finite bound.
    assert histogram_quantile(0.99, [(0.001, 1.0), (math.inf, 10.0)]) == 0.001
    assert math.isnan(histogram_quantile(0.5, [(0.001, 0.0), (math.inf, 0.0)]))


def test_bucket_deltas_of_several_nodes_merge_into_one_window() -> None:
    before = [(0.001, 5.0), (0.002, 5.0), (math.inf, 6.0)]
    after = [(0.001, 15.0), (0.002, 25.0), (math.inf, 26.0)]
    delta = bucket_delta(after, before)
    assert delta == [(0.001, 10.0), (0.002, 20.0), (math.inf, 20.0)]
    merged = merge_buckets([delta, delta])
    assert merged == [(0.001, 20.0), (0.002, 40.0), (math.inf, 40.0)]
    assert histogram_cdf(merged) == ([0.001, 0.002], [0.5, 1.0])


def test_goals_judge_on_value_or_ratio() -> None:
    faster = Row("kvget", "rate", "calls/s", value=950.0, baseline=1000.0,
                 goal=Goal(">=", 0.9, on="ratio")).judge()  # fmt: skip
    assert faster.status == "pass" and faster.ratio == pytest.approx(0.95)
    slower = Row("kvget", "rate", "calls/s", value=800.0, baseline=1000.0,
                 goal=Goal(">=", 0.9, on="ratio")).judge()  # fmt: skip
    assert slower.status == "fail"
    latency = Row("propagation", "p99", "ms", value=12.0, goal=Goal("<=", 10.0)).judge()
    assert latency.status == "fail" and latency.goal_text == "<= 10 ms"
    assert Row("x", "y", "s", value=None).judge().status == "error"
    assert Row("x", "y", "s", value=1.0).judge().status == "info"
    assert Row("x", "y", "ms", value=math.nan, goal=Goal("<=", 1)).to_json()["value"] is None


def test_markdown_table_has_one_line_per_row_with_ratio_and_verdict() -> None:
    rows = [
        Row("kvget", "KvGet calls/s", "calls/s", value=900.0, baseline=1000.0,
            baseline_name="echo", goal=Goal(">=", 0.9, on="ratio")).judge(),
        Row("startup", "up", "s", value=3.0, goal=Goal("<=", 2.0)).judge(),
    ]  # fmt: skip
    table = markdown_table(rows).splitlines()
    assert len(table) == 4
    assert "| 900 calls/s | 1,000 calls/s (echo) | 0.90x | ratio >= 0.9x | PASS |" in table[2]
    assert table[3].endswith("| <= 2 s | FAIL |")


def test_resp_parses_pipelined_and_partial_replies() -> None:
    assert encode("SET", "k", b"v") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"
    push = b"*3\r\n$7\r\nmessage\r\n$18\r\n__keyevent@0__:set\r\n$5\r\nb:1:2\r\n"
    buffer = bytearray(b"+OK\r\n:12\r\n$-1\r\n-ERR nope\r\n" + push + push[:10])
    values = parse_all(buffer)
    assert values[:3] == [b"OK", 12, None]
    assert isinstance(values[3], RespError)
    assert values[4] == [b"message", b"__keyevent@0__:set", b"b:1:2"]
    assert bytes(buffer) == push[:10]  # the incomplete tail waits for more bytes
    with pytest.raises(Incomplete):
        parse(buffer)
    buffer += push[10:]
    assert parse_all(buffer) == [[b"message", b"__keyevent@0__:set", b"b:1:2"]]
    assert buffer == bytearray()
