"""The seed-workers benchmark's pure parts: the requests each worker gets (headers, client
keys, wrk's generated script), the rows and their verdicts, and the bare server's helpers."""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

import pytest

from bench.__main__ import BENCHMARKS
from bench.bare_seed import bucket_cookie, max_age_s, origin_path, seed_vars
from bench.edge_workers import KV_RATIO_GOAL
from bench.seed_workers import (
    BENCHMARK,
    CLIENT_KEY_HEADER,
    SEED_DIR,
    SEED_TARGETS,
    client_keys,
    cpu_limit_s,
    failed_rows,
    keys_needed,
    pop_cf,
    ratio_of,
    request_headers,
    seed_load,
    seed_rows,
    skipped_rows,
    status_counts,
    worker_cpu,
)
from bench.stats import parse_prometheus
from bench.wrk import REPORT_SCRIPT, HeaderLoad, lua_string, wrk_argv, wrk_script
from edgepop.bundle import check_bundle, read_bundle
from edgepop.topology import default_topology

TARGETS = {target.name: target for target in SEED_TARGETS}
TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2ln"


def _side(rate: float, non_2xx: int = 0, errors: int = 0) -> dict[str, Any]:
    return {
        "rate_per_s": rate,
        "latency_p50_s": 0.020,
        "latency_p99_s": 0.080,
        "server_cpu_per_request_us": 400.0,
        "non_2xx": non_2xx,
        "errors": errors,
        "tool": "wrk",
    }


def test_the_targets_are_the_six_seed_workers_each_requested_on_its_own_route() -> None:
    folders = sorted(path.name for path in SEED_DIR.iterdir() if path.is_dir())
    assert sorted(TARGETS) == folders == [
        "ab-test", "api-router", "jwt-auth", "middleware", "personalize", "rate-limit",
    ]  # fmt: skip
    for target in SEED_TARGETS:
        config = check_bundle(read_bundle(SEED_DIR / target.name))
        assert config.name == target.name
        path = urlsplit(target.path).path
        assert any(route.matches(target.host, path) for route in config.routes), target.name
        assert target.choice.startswith("baseline: ") and target.baseline_name.startswith("bare")


def test_only_the_token_checking_workers_get_the_jwt_and_every_request_looks_like_a_browser() -> (
    None
):
    for target in SEED_TARGETS:
        headers = dict(request_headers(target, TOKEN))
        assert "Mozilla" in headers["User-Agent"]
        assert "bot" not in headers["User-Agent"].lower()  # middleware would answer 403
        expected = f"Bearer {TOKEN}" if target.name in ("api-router", "jwt-auth") else None
        assert headers.get("Authorization") == expected, target.name


def test_both_sides_get_the_same_load_but_the_address_and_only_rate_limit_rotates_keys() -> None:
    keys = client_keys(3)
    assert keys == ("bench-client-00000", "bench-client-00001", "bench-client-00002")
    for target in SEED_TARGETS:
        worker = seed_load(target, "127.0.0.1:8001", TOKEN, 64, 4.0, 1.0, 11, (12,), keys)
        bare = seed_load(target, "127.0.0.1:9001", TOKEN, 64, 4.0, 1.0, 21, (12,), keys)
        assert isinstance(worker, HeaderLoad)
        assert worker.url == f"http://127.0.0.1:8001{target.path}"
        assert (worker.host, worker.headers, worker.rotate) == (
            bare.host,
            bare.headers,
            bare.rotate,
        )
        assert (worker.connections, worker.duration_s, worker.warmup_s) == (64, 4.0, 1.0)
        assert (worker.server_pid, worker.extra_pids) == (11, (12,))
        rotating = target.name == "rate-limit"
        assert worker.rotate == ((CLIENT_KEY_HEADER, keys) if rotating else ("", ()))
    with pytest.raises(ValueError, match="client keys"):
        seed_load(TARGETS["rate-limit"], "127.0.0.1:1", TOKEN, 64, 1.0, 0.0, 1)


def test_wrk_sends_the_extra_headers_and_a_rotating_header_gets_a_generated_script() -> None:
    spec = seed_load(TARGETS["jwt-auth"], "127.0.0.1:8001", TOKEN, 64, 4.0, 1.0, 11)
    argv = wrk_argv("/usr/bin/wrk", spec, 4)
    pairs = [argv[index + 1] for index, part in enumerate(argv) if part == "-H"]
    assert pairs[0] == "Host: auth.example.com"
    assert f"Authorization: Bearer {TOKEN}" in pairs and argv[-1] == spec.url
    assert wrk_script(spec) is None  # the plain summary script serves
    assert str(REPORT_SCRIPT) in argv

    keys = client_keys(4)
    limited = seed_load(TARGETS["rate-limit"], "127.0.0.1:8001", TOKEN, 64, 4.0, 1.0, 11, (), keys)
    source = wrk_script(limited)
    assert source is not None
    assert source.startswith(REPORT_SCRIPT.read_text())  # the summary line still comes out
    assert 'local rotate_name = "X-Client-Id"' in source
    assert '{"bench-client-00000", "bench-client-00001", "bench-client-00002", ' in source
    assert "request = function()" in source and "init = function(args)" in source


def test_lua_strings_are_escaped_and_control_characters_refused() -> None:
    assert lua_string('a"b\\c') == '"a\\"b\\\\c"'
    with pytest.raises(ValueError):
        lua_string("a\nb")
    with pytest.raises(ValueError):
        wrk_script(HeaderLoad("http://x/", "h", 1, 1.0, rotate=("X-Client-Id", ())))


def test_client_keys_cover_both_sides_at_the_ceiling_rate_within_the_limit() -> None:
    # full run: 1 s warm-up + 3 rounds of 4 s per side, two sides, 3,000/s each, 80 per key
    assert keys_needed(13.0) == math.ceil(13 * 2 * 6000 / 80) == 1950
    assert keys_needed(3.0) == 450
    assert keys_needed(13.0, rate_ceiling_per_s=1000.0, limit=100, share=0.5) == 520


def test_a_worker_at_half_the_bare_rate_passes_and_below_fails() -> None:
    target = TARGETS["ab-test"]
    rate, latency = seed_rows(target, _side(1200.0), _side(2000.0))
    assert rate.benchmark == latency.benchmark == BENCHMARK
    assert rate.metric == "ab-test: requests/s, 64 connections (wrk)"
    assert rate.goal is not None and rate.goal.threshold == KV_RATIO_GOAL == 0.5
    assert rate.judge().status == "pass" and rate.ratio == pytest.approx(0.6)
    assert rate.note == target.choice and rate.baseline_name == "bare proxy"
    assert latency.judge().status == "info" and latency.value == pytest.approx(20.0)
    assert "p99 80.0 ms" in latency.note
    slow, _ = seed_rows(target, _side(900.0), _side(2000.0))
    assert slow.judge().status == "fail"
    assert ratio_of({"worker": _side(900.0), "bare": _side(2000.0)}) == pytest.approx(0.45)


def test_error_answers_fail_the_row_and_say_so_however_fast() -> None:
    target = TARGETS["rate-limit"]
    worker_429s, _ = seed_rows(target, _side(5000.0, non_2xx=312), _side(2000.0))
    assert worker_429s.judge().status == "fail"
    assert worker_429s.note.startswith("worker ERRORS: 312 non-2xx, 0 socket errors; ")
    bare_errors, _ = seed_rows(target, _side(1500.0), _side(2000.0, errors=3))
    assert bare_errors.judge().status == "fail" and "bare ERRORS" in bare_errors.note
    [unanswered] = failed_rows(target, "worker answered 500 b'error'")
    assert unanswered.judge().status == "fail" and unanswered.value is None
    assert unanswered.note == "worker answered 500 b'error'"
    skipped = skipped_rows("wrk missing")
    assert [row.judge().status for row in skipped] == ["skipped"] * 6


def test_each_target_accepts_its_correct_answer_and_refuses_an_error_page() -> None:
    good = {
        "ab-test": b"<h1>Checkout v2 (variant)</h1>",
        "api-router": b'{"orders": [{"id": 1}]}',
        "jwt-auth": b'{"authenticated": true, "sub": "bench-user", "colo": "LHR"}',
        "middleware": b'{"origin": true, "method": "GET", "path": "/catalog/shoes"}',
        "personalize": b"<h1>Welcome to the edgepop shop</h1> GBP",
        "rate-limit": b"OK",
    }
    for name, body in good.items():
        assert TARGETS[name].expect(body), name
        assert not TARGETS[name].expect(b'{"error": "invalid token"}'), name
    assert not TARGETS["personalize"].expect(b"Welcome to the edgepop shop {{CURRENCY}}")


def test_the_bare_server_reads_the_workers_vars_and_the_pops_cf() -> None:
    assert seed_vars("rate-limit") == {"LIMIT": "100", "WINDOW_S": "60"}
    assert origin_path(seed_vars("ab-test")["VARIANT_URL"]) == "/checkout-v2/checkout"
    assert origin_path("http://origin/api/deals?country=GB") == "/api/deals?country=GB"
    assert origin_path("http://origin") == "/"
    cf = pop_cf(default_topology(), "london")
    assert (cf["country"], cf["colo"], cf["timezone"]) == ("GB", "LHR", "Europe/London")
    assert cf["is_eu_country"] is False


def test_the_bare_cache_keeps_what_a_shared_cache_keeps_and_reads_the_ab_cookie() -> None:
    assert max_age_s("public, max-age=60") == 60.0
    assert max_age_s("s-maxage=30") == 30.0
    assert max_age_s("private, max-age=60") == 0.0
    assert max_age_s("") == 0.0
    assert bucket_cookie('prefs={"a":1}; experiment-checkout-v2=variant') == "variant"
    assert bucket_cookie("other=1") is None


def test_the_benchmark_is_wired_after_the_other_worker_rows_on_their_cluster() -> None:
    names = [benchmark.name for benchmark in BENCHMARKS]
    assert names.index("seed-workers") == names.index("worker-counter") + 1
    seed = BENCHMARKS[names.index("seed-workers")]
    assert "objects" in seed.resources and "bare-seed" in seed.resources


METRICS_BEFORE = """\
edge_worker_requests_total{node="london-1",region="london",worker="ab-test",status="200"} 10.0
edge_worker_requests_total{node="london-1",region="london",worker="middleware",status="200"} 5.0
edge_worker_cpu_seconds_bucket{le="0.001",node="london-1",region="london",worker="ab-test"} 8.0
edge_worker_cpu_seconds_bucket{le="0.02",node="london-1",region="london",worker="ab-test"} 10.0
edge_worker_cpu_seconds_bucket{le="+Inf",node="london-1",region="london",worker="ab-test"} 10.0
"""
METRICS_AFTER = """\
edge_worker_requests_total{node="london-1",region="london",worker="ab-test",status="200"} 1010.0
edge_worker_requests_total{node="london-1",region="london",worker="ab-test",status="503"} 3.0
edge_worker_requests_total{node="london-1",region="london",worker="middleware",status="200"} 9.0
edge_worker_cpu_seconds_bucket{le="0.001",node="london-1",region="london",worker="ab-test"} 1000.0
edge_worker_cpu_seconds_bucket{le="0.02",node="london-1",region="london",worker="ab-test"} 1010.0
edge_worker_cpu_seconds_bucket{le="+Inf",node="london-1",region="london",worker="ab-test"} 1013.0
edge_worker_cpu_seconds_bucket{le="0.001",node="london-1",region="london",worker="jwt-auth"} 9.0
edge_worker_cpu_seconds_bucket{le="+Inf",node="london-1",region="london",worker="jwt-auth"} 9.0
"""


def test_the_pops_own_counts_say_which_statuses_and_how_much_cpu_a_worker_was_charged() -> None:
    before, after = parse_prometheus(METRICS_BEFORE), parse_prometheus(METRICS_AFTER)
    assert status_counts(before, after, "ab-test") == {"200": 1000, "503": 3}
    assert status_counts(before, after, "middleware") == {"200": 4}
    assert status_counts(before, after, "personalize") == {}
    cpu = worker_cpu(before, after, "ab-test", 0.02)
    assert cpu["requests"] == 1003 and cpu["over_limit"] == 3 and cpu["limit_ms"] == 20.0
    assert 0.0 < cpu["p50_ms"] <= 1.0
    assert worker_cpu(before, after, "ab-test", 0.03)["over_limit"] == 0  # not a bound
    assert worker_cpu(before, after, "rate-limit", 0.02)["requests"] == 0
    assert {name: cpu_limit_s(name) * 1e3 for name in ("ab-test", "jwt-auth")} == {
        "ab-test": 20.0,
        "jwt-auth": 50.0,
    }


def test_a_row_failing_on_503s_names_them_and_the_requests_over_the_cpu_limit() -> None:
    worker = {
        **_side(1500.0, non_2xx=3),
        "statuses": {"200": 1000, "503": 3},
        "cpu": {"requests": 1003, "p50_ms": 0.5, "p99_ms": 0.9, "over_limit": 3, "limit_ms": 20},
    }
    rate, latency = seed_rows(TARGETS["middleware"], worker, _side(2000.0))
    assert rate.judge().status == "fail"
    assert rate.note.startswith("worker ERRORS: 3 non-2xx (3x 503), 0 socket errors; ")
    assert "3 request(s) metered over the worker's 20 ms CPU limit (503 = error 1102)" in rate.note
    assert "worker CPU as metered p50 0.50 ms, p99 0.90 ms" in latency.note
