"""The cf-workers benchmark's pure parts: which examples it loads and how, what a correct
answer is on either side, its rows' verdicts, and the bare server's view of D1 values."""

from __future__ import annotations

from typing import Any

import pytest

from bench.__main__ import BENCHMARKS
from bench.bare_cf import D1_HOST, KV_HOST, LIST_HOST, sql_value
from bench.cf_workers import BENCHMARK, EXAMPLES, LIST_MESSAGES, cf_targets, skipped_rows
from bench.seed_workers import seed_load, seed_rows
from edge.v1 import sql_pb2
from edgepop.bundle import check_bundle, read_bundle
from tests.cf_examples import cf_example

TARGETS = {target.name: target for target in cf_targets("bench-list-3")}


def _side(rate: float, non_2xx: int = 0) -> dict[str, Any]:
    return {
        "rate_per_s": rate,
        "latency_p50_s": 0.010,
        "latency_p99_s": 0.040,
        "server_cpu_per_request_us": 300.0,
        "non_2xx": non_2xx,
        "errors": 0,
        "tool": "wrk",
    }


def test_the_three_binding_examples_are_requested_at_their_workers_dev_hosts() -> None:
    assert list(TARGETS) == list(EXAMPLES) == [
        "02-binding", "04-query-d1", "07-durable-objects",
    ]  # fmt: skip
    assert [target.host for target in TARGETS.values()] == [KV_HOST, D1_HOST, LIST_HOST]
    assert [target.worker_name for target in TARGETS.values()] == [
        "hello-python-bindings", "python-d1", "python-durable-object",
    ]  # fmt: skip
    assert TARGETS["07-durable-objects"].path == "/bench-list-3/show"
    assert {TARGETS[name].path for name in ("02-binding", "04-query-d1")} == {"/"}
    # No token, no rotating header: the examples read neither.
    for target in TARGETS.values():
        load = seed_load(target, "127.0.0.1:1", "", 64, 4.0, 1.0, 42)
        assert load.rotate == ("", ()) and all(name != "Authorization" for name, _ in load.headers)


def test_the_examples_wrangler_names_are_the_hosts_the_bench_asks_for() -> None:
    for target in TARGETS.values():
        assert check_bundle(read_bundle(cf_example(target.name))).name == target.worker_name


def test_each_target_accepts_its_correct_answer_and_refuses_others() -> None:
    kv, d1, durable_list = TARGETS.values()
    assert kv.expect(b"baz") and not kv.expect(b"bar")
    assert d1.expect(b'{"quote": "Some words of wisdom", "author": "Dominik Picheta"}')
    assert not d1.expect(b'{"quote": "x"}') and not d1.expect(b"Internal Server Error")
    assert durable_list.expect("\n".join(LIST_MESSAGES).encode())
    assert not durable_list.expect(b"No messages")


def test_rows_hold_the_worker_path_goal_and_fail_on_errors() -> None:
    target = TARGETS["04-query-d1"]
    rate, latency = seed_rows(target, _side(1100.0), _side(2000.0), BENCHMARK)
    assert rate.benchmark == latency.benchmark == "cf-workers"
    assert rate.metric == "04-query-d1: requests/s, 64 connections (wrk)"
    assert rate.judge().status == "pass" and rate.ratio == pytest.approx(0.55)
    slow, _ = seed_rows(target, _side(900.0), _side(2000.0), BENCHMARK)
    assert slow.judge().status == "fail"
    failing, _ = seed_rows(target, _side(5000.0, non_2xx=3), _side(2000.0), BENCHMARK)
    assert failing.judge().status == "fail" and failing.note.startswith("worker ERRORS")
    assert [row.judge().status for row in skipped_rows("no examples")] == ["skipped"] * 3


def test_the_bare_server_gives_d1_values_as_json_does() -> None:
    assert sql_value(sql_pb2.SqlValue(text="quote")) == "quote"
    assert sql_value(sql_pb2.SqlValue(integer=-3)) == -3
    assert sql_value(sql_pb2.SqlValue(real=0.5)) == 0.5
    assert sql_value(sql_pb2.SqlValue(null=True)) is None
    assert sql_value(sql_pb2.SqlValue()) is None
    assert sql_value(sql_pb2.SqlValue(blob=b"\x01\x02")) == [1, 2]


def test_the_benchmark_runs_on_the_worker_cluster_with_its_own_baseline() -> None:
    names = [benchmark.name for benchmark in BENCHMARKS]
    assert names.index("cf-workers") == names.index("seed-workers") + 1
    benchmark = BENCHMARKS[names.index("cf-workers")]
    assert "objects" in benchmark.resources and "bare-cf" in benchmark.resources
