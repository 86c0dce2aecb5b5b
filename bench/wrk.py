"""HTTP load with wrk (Debian's package), or an aiohttp fallback when wrk is unavailable.

wrk is a C load generator: at 64 connections it costs far less CPU than any Python
client, which matters on a 2-core machine where the client competes with the server
it measures. It is found on PATH or installed with apt-get on first use (as the Redis
baseline installs redis-server). A small Lua script prints wrk's own summary as one
JSON line (`WRK_JSON {...}`: requests, errors by kind, latency percentiles in µs), so
nothing is scraped from its human-readable output.

When wrk cannot be had, `bench.loadgen.http_closed_loop` (aiohttp, in a load-generator
process of its own) stands in, and the report says so.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import HttpLoad, HttpResult
from bench.probe import cpu_seconds
from bench.redis_baseline import _apt

REPORT_SCRIPT = Path(__file__).resolve().parent / "wrk_report.lua"
JSON_PREFIX = "WRK_JSON "
THREADS = 2
# wrk counts a request slower than this as a timeout error (and leaves it out of latency).
TIMEOUT_S = 5


def find_or_install_wrk() -> tuple[str | None, str]:
    """(path to wrk, "") or (None, why it is unavailable)."""
    found = shutil.which("wrk")
    if found:
        return found, ""
    if shutil.which("apt-get") is None:
        return None, "wrk is not installed and there is no apt-get"
    failure = _apt("install", "-y", "-q", "wrk")
    if failure:
        failure = _apt("update", "-q") or _apt("install", "-y", "-q", "wrk")
    found = shutil.which("wrk")
    if found:
        return found, ""
    return None, failure or "wrk still missing after apt-get install"


def wrk_argv(binary: str, spec: HttpLoad, duration_s: int) -> list[str]:
    """The command line for one run of `spec` (wrk takes whole seconds)."""
    return [
        binary,
        f"-t{min(THREADS, spec.connections)}",
        f"-c{spec.connections}",
        f"-d{duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        "-s", str(REPORT_SCRIPT),
        "-H", f"Host: {spec.host}",
        spec.url,
    ]  # fmt: skip


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON summary line the Lua script printed (ValueError when there is none)."""
    for line in stdout.splitlines():
        if line.startswith(JSON_PREFIX):
            data: dict[str, Any] = json.loads(line[len(JSON_PREFIX) :])
            return data
    raise ValueError(f"no {JSON_PREFIX.strip()} line in wrk's output: {stdout[-300:]!r}")


def wrk_result(summary: dict[str, Any], server_cpu_s: float) -> HttpResult:
    """wrk's summary as the bench's HttpResult (latencies in seconds)."""
    elapsed = summary["duration_us"] / 1e6
    requests = int(summary["requests"])
    errors = sum(int(summary[f"errors_{kind}"]) for kind in ("connect", "read", "write", "timeout"))
    non_2xx = int(summary["errors_status"])
    ok = max(0, requests - non_2xx)
    return HttpResult(
        requests=ok,
        errors=errors,
        non_2xx=non_2xx,
        elapsed_s=elapsed,
        rate_per_s=ok / elapsed if elapsed > 0 else math.nan,
        latency_s={
            "count": requests,
            "mean": summary["mean_us"] / 1e6,
            "p50": summary["p50_us"] / 1e6,
            "p90": summary["p90_us"] / 1e6,
            "p99": summary["p99_us"] / 1e6,
            "max": summary["max_us"] / 1e6,
        },
        server_cpu_s=server_cpu_s,
        extra_cpu_s=0.0,
        tool="wrk",
    )


@dataclass(frozen=True)
class Wrk:
    binary: str

    async def run(self, spec: HttpLoad) -> HttpResult:
        """Warm up (not counted), then one measured run; server CPU over the measured run."""
        if spec.warmup_s > 0:
            await self._once(spec, max(1, round(spec.warmup_s)))
        return await self._once(spec, max(1, round(spec.duration_s)))

    async def _once(self, spec: HttpLoad, duration_s: int) -> HttpResult:
        pids = (spec.server_pid, *spec.extra_pids)
        before = [cpu_seconds(pid) for pid in pids if pid]
        process = await asyncio.create_subprocess_exec(
            *wrk_argv(self.binary, spec, duration_s),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), duration_s + 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        after = [cpu_seconds(pid) for pid in pids if pid]
        if process.returncode != 0:
            raise RuntimeError(f"wrk exited {process.returncode}: {stderr.decode()[-300:]}")
        summary = parse_wrk_output(stdout.decode())
        server = after[0] - before[0] if spec.server_pid else 0.0
        result = wrk_result(summary, server)
        result.extra_cpu_s = sum(after) - sum(before) - server
        return result
