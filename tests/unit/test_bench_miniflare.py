"""The Miniflare peer's pure parts: node's version, when to install, the commands, the
launcher's ready file, pooled wrk runs, and the rows beside edgepop's (measured, or
skipped with the reason and a hand figure that cannot pass for a measurement)."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest

from bench import miniflare
from bench.edge_workers import MINIFLARE_KV_SIDE, WORKER_KV_SIDE, _kv_peer_rows
from bench.loadgen import HttpResult, pooled_http
from bench.objects import _hot_peer_rows

REPO = Path(__file__).resolve().parents[2]


def _run(requests: int, elapsed: float, p50: float, workerd: float, node: float) -> HttpResult:
    return HttpResult(
        requests=requests,
        errors=1,
        non_2xx=2,
        elapsed_s=elapsed,
        rate_per_s=requests / elapsed,
        latency_s={"p50": p50, "p99": 4 * p50},
        server_cpu_s=workerd,
        extra_cpu_s=node,
        tool="wrk",
    )


def test_node_versions_older_than_the_pinned_miniflare_needs_are_refused_with_a_reason() -> None:
    assert miniflare.parse_node_version("v20.20.2\n") == (20, 20, 2)
    assert miniflare.parse_node_version("v22.1.0-nightly") == (22, 1, 0)
    assert miniflare.parse_node_version("command not found") is None
    assert miniflare.node_problem("v20.20.2") == ""
    assert miniflare.node_problem("v22.0.0") == ""
    assert "older than 20.18.1" in miniflare.node_problem("v20.18.0")
    assert "older than" in miniflare.node_problem("v18.19.1")
    assert "said" in miniflare.node_problem("garbage")


def test_install_runs_when_the_tree_is_missing_or_made_from_other_package_files() -> None:
    package, lock = b'{"dependencies": {"miniflare": "4.1.0"}}', b'{"lockfileVersion": 3}'
    digest = miniflare.install_digest([package, lock], "x86_64")
    assert digest == miniflare.install_digest([package, lock], "x86_64")
    assert digest != miniflare.install_digest([package, b"{}"], "x86_64")
    assert digest != miniflare.install_digest([package, None], "x86_64")
    assert digest != miniflare.install_digest([package, lock], "aarch64")
    assert not miniflare.needs_install(digest + "\n", digest, miniflare_present=True)
    assert miniflare.needs_install(None, digest, miniflare_present=True)
    assert miniflare.needs_install("stale", digest, miniflare_present=True)
    assert miniflare.needs_install(digest, digest, miniflare_present=False)


def test_npm_installs_the_exact_locked_tree_without_running_install_scripts() -> None:
    argv = miniflare.npm_argv("/usr/bin/npm", has_lock=True)
    assert argv[:2] == ["/usr/bin/npm", "ci"]
    assert {"--ignore-scripts", "--no-audit", "--no-fund"} <= set(argv)
    assert miniflare.npm_argv("npm", has_lock=False)[1:3] == ["install", "--save-exact"]


def test_a_failing_commands_output_becomes_one_short_line() -> None:
    assert miniflare.last_lines("npm error code E404\n\nnpm error 404 Not Found\n") == (
        "npm error code E404 | npm error 404 Not Found"
    )
    long = miniflare.last_lines("x" * 1000, chars_max=50)
    assert long.startswith("...") and len(long) == 53


def test_the_ready_file_gives_a_base_url_and_nodes_pid() -> None:
    ready = json.dumps({"url": "http://127.0.0.1:40123", "pid": 321})
    assert miniflare.parse_ready(ready) == ("http://127.0.0.1:40123/", 321)
    with pytest.raises(ValueError, match=r"ready\.json"):
        miniflare.parse_ready(json.dumps({"url": "ws://x", "pid": 1}))
    with pytest.raises(ValueError):
        miniflare.parse_ready("{not json")


def test_runs_pool_to_total_requests_over_total_time_with_cpu_per_request() -> None:
    pooled = pooled_http([_run(3000, 3.0, 0.002, 1.5, 0.3), _run(1000, 1.0, 0.004, 0.5, 0.1)])
    assert pooled["rate_per_s"] == pytest.approx(1000.0)
    assert pooled["latency_p50_s"] == pytest.approx(0.004)  # the upper median of two runs
    assert pooled["server_cpu_per_request_us"] == pytest.approx(500.0)
    assert pooled["total_cpu_per_request_us"] == pytest.approx(600.0)
    assert pooled["errors"] == 2 and pooled["non_2xx"] == 4 and pooled["tool"] == "wrk"
    assert math.isnan(pooled_http([])["rate_per_s"])


def test_a_skipped_peer_is_a_skipped_row_quoting_the_hand_figure_as_such() -> None:
    row = miniflare.skipped_row("worker-kv", "KV GET", "node is not installed", "976/s").judge()
    assert row.status == "skipped" and row.value is None and row.baseline is None
    assert "node is not installed" in row.note and "976/s" in row.note
    assert "not in this run" in row.note


def test_the_kv_rows_compare_the_worker_with_miniflare_measured_in_the_run() -> None:
    worker = {"rate_per_s": 6000.0, "latency_p50_s": 0.010, "latency_p99_s": 0.03}
    peer = {**worker, "rate_per_s": 2000.0, "latency_p50_s": 0.030,
            "total_cpu_per_request_us": 400.0}  # fmt: skip
    rate, p50 = _kv_peer_rows({WORKER_KV_SIDE: worker, MINIFLARE_KV_SIDE: peer}, "")
    assert rate.baseline_name == "Miniflare" and rate.ratio == pytest.approx(3.0)
    assert p50.value == pytest.approx(10.0) and p50.baseline == pytest.approx(30.0)
    (skipped,) = _kv_peer_rows({WORKER_KV_SIDE: worker}, "npm exited 1: E404")
    assert skipped.status == "skipped" and "E404" in skipped.note


def test_the_sequential_counter_row_carries_the_issues_goal_and_the_64_row_none() -> None:
    counter = {"rate_per_s": 900.0, "latency_p50_s": 0.001}
    peer = {"rate_per_s": 1000.0, "latency_p50_s": 0.0009, "latency_p99_s": 0.002}
    rate, p50 = _hot_peer_rows(1, counter, peer, "")
    assert rate.judge().status == "fail" and rate.ratio == pytest.approx(0.9)
    assert p50.unit == "ms" and p50.baseline == pytest.approx(0.9)
    (high,) = _hot_peer_rows(64, counter, peer, "")
    assert high.goal is None and high.judge().status == "info"
    (skipped,) = _hot_peer_rows(1, counter, None, "node is not installed")
    assert skipped.status == "skipped"
    assert f"{miniflare.REFERENCE_COUNTER_1_PER_S}/s" in skipped.note


def test_miniflare_is_pinned_exactly_with_its_lock_and_its_tree_is_not_committed() -> None:
    package = json.loads((miniflare.PACKAGE_DIR / "package.json").read_text())
    pinned = package["dependencies"]["miniflare"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), f"not an exact version: {pinned}"
    lock = json.loads((miniflare.PACKAGE_DIR / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/miniflare"]["version"] == pinned
    assert miniflare.SERVE_SCRIPT.is_file()
    assert (miniflare.PACKAGE_DIR / "worker.mjs").is_file()
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "bench/miniflare/node_modules/miniflare/package.json"],
        cwd=REPO,
        check=False,
    )
    assert ignored.returncode == 0
