"""The worker and Durable Object benchmarks' pure parts: wrk's summary, pooled rounds,
the bench worker bundles, and group-commit statistics from /metrics."""

from __future__ import annotations

import math

import pytest

from bench.edge_workers import WORKERS_DIR, bench_bundle
from bench.loadgen import HttpLoad, HttpResult, pooled_http
from bench.objects import commit_stats, increment_request
from bench.stats import parse_prometheus
from bench.wrk import REPORT_SCRIPT, parse_wrk_output, wrk_argv, wrk_result
from edge.v1 import objects_pb2
from edgepop.bundle import bundle_version, check_bundle

WRK_STDOUT = """\
Running 2s test @ http://127.0.0.1:8080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     9.41ms    4.02ms  58.70ms   80.00%
  10070 requests in 2.00s, 2.43MB read
Requests/sec:   5035.00
WRK_JSON {"requests": 10070, "duration_us": 2000000, "bytes": 2548000, "errors_connect": 0, \
"errors_read": 1, "errors_write": 0, "errors_status": 70, "errors_timeout": 2, \
"mean_us": 9410.5, "p50_us": 9000, "p90_us": 14000, "p99_us": 58700, "max_us": 70000}
"""


def test_wrk_summary_line_becomes_a_result_without_the_failed_requests() -> None:
    summary = parse_wrk_output(WRK_STDOUT)
    result = wrk_result(summary, server_cpu_s=1.5)
    assert result.tool == "wrk"
    assert result.requests == 10_000 and result.non_2xx == 70 and result.errors == 3
    assert result.rate_per_s == pytest.approx(5000.0)
    assert result.latency_s["p50"] == pytest.approx(0.009)
    assert result.latency_s["p99"] == pytest.approx(0.0587)
    with pytest.raises(ValueError, match="WRK_JSON"):
        parse_wrk_output("Running 2s test\nsegfault\n")


def test_wrk_command_line_sets_the_host_header_the_script_and_whole_seconds() -> None:
    spec = HttpLoad("http://127.0.0.1:9/", "kv.bench.example.com", 64, 2.0)
    argv = wrk_argv("/usr/bin/wrk", spec, 2)
    assert argv[:4] == ["/usr/bin/wrk", "-t2", "-c64", "-d2s"]
    assert argv[argv.index("-H") : argv.index("-H") + 2] == ["-H", "Host: kv.bench.example.com"]
    assert str(REPORT_SCRIPT) in argv and argv[-1] == spec.url
    assert REPORT_SCRIPT.is_file()


def _result(requests: int, elapsed: float, p50: float, cpu: float) -> HttpResult:
    return HttpResult(
        requests=requests,
        errors=0,
        non_2xx=0,
        elapsed_s=elapsed,
        rate_per_s=requests / elapsed,
        latency_s={"p50": p50, "p99": 10 * p50},
        server_cpu_s=cpu,
        extra_cpu_s=cpu / 2,
        tool="wrk",
    )


def test_pooled_http_rounds_add_up_requests_and_take_the_median_round_tail() -> None:
    rounds = [
        _result(4000, 2.0, 0.010, 0.4),
        _result(2000, 2.0, 0.030, 0.3),
        _result(6000, 2.0, 0.005, 0.5),
    ]
    pooled = pooled_http(rounds)
    assert pooled["rate_per_s"] == pytest.approx(2000.0)
    assert pooled["latency_p50_s"] == 0.010 and pooled["latency_p99_s"] == 0.10
    assert pooled["server_cpu_per_request_us"] == pytest.approx(100.0)
    assert pooled["total_cpu_per_request_us"] == pytest.approx(150.0)
    assert pooled["rounds"] == [2000.0, 1000.0, 3000.0]


def test_bench_worker_bundles_are_valid_and_a_marker_makes_a_new_version() -> None:
    folders = sorted(path.name for path in WORKERS_DIR.iterdir() if path.is_dir())
    assert folders == ["counter", "hello", "kv-read"]
    for folder in folders:
        config = check_bundle(bench_bundle(folder))
        assert config.name == f"bench-{folder}"
        assert all(route.host.endswith(".bench.example.com") for route in config.routes)
    plain = bundle_version(bench_bundle("hello"))
    assert bundle_version(bench_bundle("hello")) == plain
    first = bundle_version(bench_bundle("hello", "deploy 1"))
    second = bundle_version(bench_bundle("hello", "deploy 2"))
    assert len({plain, first, second}) == 3


def test_increment_requests_carry_no_request_id_so_each_call_runs() -> None:
    request = objects_pb2.ObjectCallRequest.FromString(increment_request("bench-hot"))
    assert request.namespace == "Counter" and request.name == "bench-hot"
    assert request.method == "increment"
    assert request.args_json == "[1]" and request.request_id == ""


METRICS_BEFORE = """\
edge_do_calls_total{node="london-1",region="london",namespace="Counter",code="OK"} 100.0
edge_do_calls_total{node="london-1",region="london",namespace="Lock",code="OK"} 5.0
edge_do_commit_duration_seconds_bucket{le="0.001",node="london-1",region="london"} 0.0
edge_do_commit_duration_seconds_bucket{le="0.005",node="london-1",region="london"} 10.0
edge_do_commit_duration_seconds_bucket{le="+Inf",node="london-1",region="london"} 10.0
"""
METRICS_AFTER = """\
edge_do_calls_total{node="london-1",region="london",namespace="Counter",code="OK"} 1100.0
edge_do_calls_total{node="london-1",region="london",namespace="Lock",code="OK"} 5.0
edge_do_commit_duration_seconds_bucket{le="0.001",node="london-1",region="london"} 0.0
edge_do_commit_duration_seconds_bucket{le="0.005",node="london-1",region="london"} 60.0
edge_do_commit_duration_seconds_bucket{le="+Inf",node="london-1",region="london"} 110.0
"""


def test_commit_stats_count_calls_per_group_commit_between_two_scrapes() -> None:
    stats = commit_stats(parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_AFTER))
    assert stats["calls"] == 1000 and stats["commits"] == 100
    assert stats["calls_per_commit"] == 10.0
    assert 0.001 < stats["commit_p50_s"] <= 0.005
    empty = commit_stats(parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_BEFORE))
    assert math.isnan(empty["calls_per_commit"])
