"""HTTP load with wrk (Debian's package), or an aiohttp fallback when wrk is unavailable.

wrk is a C load generator: at 64 connections it costs far less CPU than any Python
client, which matters on a 2-core machine where the client competes with the server
it measures. It is found on PATH or installed with apt-get on first use (as the Redis
baseline installs redis-server). A small Lua script prints wrk's own summary as one
JSON line (`WRK_JSON {...}`: requests, errors by kind, latency percentiles in µs), so
nothing is scraped from its human-readable output.

A `HeaderLoad` adds request headers besides `Host` (`-H`), and may rotate one header's
value request by request (many client keys): the Lua script is then generated for the
run, the summary script with a `request()` that cycles through requests formatted once.

When wrk cannot be had, `bench.loadgen.http_closed_loop` (aiohttp, in a load-generator
process of its own) stands in, and the report says so.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import tempfile
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


@dataclass(frozen=True)
class HeaderLoad(HttpLoad):
    """An `HttpLoad` whose requests carry more than `Host` (wrk only: the aiohttp fallback
    sends `Host` alone): `headers` on every request; `rotate` = (name, values), one header
    whose value changes request by request, round-robin, each wrk thread from its own
    offset (e.g. a client key per request out of many)."""

    headers: tuple[tuple[str, str], ...] = ()
    rotate: tuple[str, tuple[str, ...]] = ("", ())


def _headers(spec: HttpLoad) -> tuple[tuple[str, str], ...]:
    return spec.headers if isinstance(spec, HeaderLoad) else ()


def wrk_argv(
    binary: str, spec: HttpLoad, duration_s: int, script: Path = REPORT_SCRIPT
) -> list[str]:
    """The command line for one run of `spec` (wrk takes whole seconds)."""
    extra = [part for name, value in _headers(spec) for part in ("-H", f"{name}: {value}")]
    return [
        binary,
        f"-t{min(THREADS, spec.connections)}",
        f"-c{spec.connections}",
        f"-d{duration_s}s",
        f"--timeout={TIMEOUT_S}s",
        "-s", str(script),
        "-H", f"Host: {spec.host}",
        *extra,
        spec.url,
    ]  # fmt: skip


def lua_string(text: str) -> str:
    """`text` as a double-quoted Lua string literal (printable ASCII only: header values)."""
    if any(not 0x20 <= ord(char) < 0x7F for char in text):
        raise ValueError(f"not a printable ASCII header value: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


ROTATE_LUA = """
-- Appended by bench/wrk.py: header {name} rotates over {count} values, request by request.
local rotate_name = {name}
local rotate_values = {{{values}}}
local requests = {{}}
local next_request = 1
local threads_seen = 0

setup = function(thread)
  thread:set("rotate_offset", threads_seen * {stride})
  threads_seen = threads_seen + 1
end

init = function(args)
  for index, value in ipairs(rotate_values) do
    local headers = {{}}
    for header, given in pairs(wrk.headers) do headers[header] = given end
    headers[rotate_name] = value
    requests[index] = wrk.format(nil, nil, headers)
  end
  next_request = (rotate_offset or 0) % #requests + 1
end

request = function()
  local chosen = requests[next_request]
  next_request = next_request % #requests + 1
  return chosen
end
"""


def wrk_script(spec: HttpLoad) -> str | None:
    """The Lua source for a run of `spec` when it rotates a header, else None (the plain
    summary script serves)."""
    if not isinstance(spec, HeaderLoad) or not spec.rotate[0]:
        return None
    name, values = spec.rotate
    if not values:
        raise ValueError(f"header {name} rotates over no values")
    return REPORT_SCRIPT.read_text() + ROTATE_LUA.format(
        name=lua_string(name),
        count=len(values),
        values=", ".join(lua_string(value) for value in values),
        stride=max(1, len(values) // THREADS),
    )


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
        source = wrk_script(spec)
        script = REPORT_SCRIPT
        if source is not None:
            handle, name = tempfile.mkstemp(prefix="edgepop-wrk-", suffix=".lua")
            with os.fdopen(handle, "w") as file:
                file.write(source)
            script = Path(name)
        try:
            pids = (spec.server_pid, *spec.extra_pids)
            before = [cpu_seconds(pid) for pid in pids if pid]
            process = await asyncio.create_subprocess_exec(
                *wrk_argv(self.binary, spec, duration_s, script),
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
        finally:
            if script != REPORT_SCRIPT:
                script.unlink(missing_ok=True)
        if process.returncode != 0:
            raise RuntimeError(f"wrk exited {process.returncode}: {stderr.decode()[-300:]}")
        summary = parse_wrk_output(stdout.decode())
        server = after[0] - before[0] if spec.server_pid else 0.0
        result = wrk_result(summary, server)
        result.extra_cpu_s = sum(after) - sum(before) - server
        return result
