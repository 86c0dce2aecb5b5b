"""Miniflare as a peer: Cloudflare's local simulator, measured in the same run as edgepop.

A user comparing edgepop with Miniflare should need one command, and the comparison
should be as fair as the bench's others: same machine, same run, same load generator.
So when `node` (and `npm`) are on the machine, the bench:

1. installs the Miniflare version pinned in `bench/miniflare/package.json` (exact, with
   its package-lock.json) into `bench/miniflare/node_modules`, git-ignored, with
   `npm ci --ignore-scripts` — only when it is missing or the lock changed (a stamp in
   node_modules records what was installed). No install script runs: workerd comes
   as a platform package and runs as it is; the one other script (sharp, images only)
   is not needed;
2. starts `bench/miniflare/serve.mjs`, our launcher: Miniflare on a free port with our
   worker (`worker.mjs`: a KV GET of one key, and a Durable Object `Counter` doing the
   get/put increment of edgepop's built-in one), KV and DO storage persisted on disk
   under the run's temp dir as `wrangler dev` does; it writes `ready.json` once the
   worker serves and the key holds its value;
3. lets the benchmarks load it with wrk beside edgepop's own rows: `worker-kv` (KV GET,
   64 connections, in the same alternating rounds), `do-hot` (the Counter, 1 and 64
   connections) and `worker-counter` (the Counter through a worker, 64 connections).

Anything missing or failing (no node, node too old, no npm, the install, the start,
wrk) skips the peer with a printed reason, and the rows fall back to the figures
measured by hand in earlier weeks, marked as not measured in this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import HttpLoad, HttpResult, pooled_http
from bench.runner import Context
from bench.stats import Goal, Row
from bench.wrk import Wrk, find_or_install_wrk

PACKAGE_DIR = Path(__file__).resolve().parent / "miniflare"
SERVE_SCRIPT = PACKAGE_DIR / "serve.mjs"
MODULES_DIR = PACKAGE_DIR / "node_modules"
STAMP_FILE = MODULES_DIR / ".edgepop-install-stamp"
# What decides the installed tree: a change to either reinstalls.
INSTALL_INPUTS = ("package.json", "package-lock.json")
# undici 7, a dependency of the pinned Miniflare, needs node 20.18.1 or newer.
NODE_VERSION_MIN = (20, 18, 1)
# The first install downloads ~60 MB (workerd is most of it).
INSTALL_TIMEOUT_S = 600.0
# Miniflare starts workerd and loads the worker: about 2 s here.
READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.05
STOP_TIMEOUT_S = 10.0
CHECK_TIMEOUT_S = 10.0
VERSION_TIMEOUT_S = 10.0
# Characters of a failing command's output kept in the skip reason.
REASON_CHARS_MAX = 300

# The resource key (bench.runner): benchmarks that use the peer list it.
MINIFLARE_KEY = "miniflare"
STATE_KEY = "miniflare-peer"
KV_PATH = "/kv"
COUNTER_PATH = "/counter"
# The same key, value and object name as edgepop's side of each comparison.
KV_KEY = "bench-key"
KV_VALUE = bytes(range(100))
OBJECT_NAME = "bench-hot"

# Figures measured by hand on this machine class in earlier weeks (Miniflare 4 on
# workerd): quoted only when the peer is skipped, never as a measured baseline.
REFERENCE_KV_PER_S = 976  # KV GET through a worker, 64 connections (issue 4)
REFERENCE_COUNTER_1_PER_S = 891  # DO Counter via a worker, sequential (issue 11)
REFERENCE_COUNTER_1_P50_MS = 0.99
REFERENCE_COUNTER_64_PER_S = 1149  # DO Counter via a worker, 64 connections (issue 11)
REFERENCE_NOTE = "reference measured by hand in an earlier week, not in this run"


# -- pure parts --------------------------------------------------------------------------


def parse_node_version(text: str) -> tuple[int, int, int] | None:
    """`node --version` output ("v20.20.2") as numbers; None when it is not one."""
    match = re.fullmatch(r"\s*v?(\d+)\.(\d+)\.(\d+)\S*\s*", text)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def node_problem(version_text: str) -> str:
    """Why this node cannot run the pinned Miniflare ("" when it can)."""
    version = parse_node_version(version_text)
    if version is None:
        return f"`node --version` said {version_text.strip()[:60]!r}"
    if version < NODE_VERSION_MIN:
        wanted = ".".join(str(part) for part in NODE_VERSION_MIN)
        return f"node {version_text.strip()} is older than {wanted}, which Miniflare needs"
    return ""


def install_digest(inputs: Sequence[bytes | None], machine: str) -> str:
    """What an installed tree was made from: the package files and the machine type
    (node_modules holds workerd for one platform only). A missing file counts too."""
    digest = hashlib.sha256(machine.encode())
    for content in inputs:
        digest.update(b"\x00missing" if content is None else hashlib.sha256(content).digest())
    return digest.hexdigest()


def needs_install(stamp: str | None, digest: str, miniflare_present: bool) -> bool:
    return not miniflare_present or stamp is None or stamp.strip() != digest


def npm_argv(npm: str, has_lock: bool) -> list[str]:
    """`npm ci` from the lock when there is one (exact tree), else `npm install`."""
    verb = ["ci"] if has_lock else ["install", "--save-exact"]
    return [npm, *verb, "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]


def last_lines(text: str, chars_max: int = REASON_CHARS_MAX) -> str:
    """The tail of a command's output on one line, for a skip reason."""
    joined = " | ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return joined if len(joined) <= chars_max else "..." + joined[-chars_max:]


def parse_ready(text: str) -> tuple[str, int]:
    """serve.mjs's ready.json: (base URL ending in "/", node's pid); ValueError if bad."""
    data = json.loads(text)
    url, pid = data.get("url"), data.get("pid")
    if not isinstance(url, str) or not url.startswith("http://") or not isinstance(pid, int):
        raise ValueError(f"ready.json is not {{url, pid}}: {text[:200]!r}")
    return (url if url.endswith("/") else url + "/"), pid


def versus_row(
    benchmark: str,
    metric: str,
    unit: str,
    value: float,
    miniflare: float,
    note: str = "",
    goal: Goal | None = None,
) -> Row:
    """An edgepop figure with Miniflare's, measured in this run, as its baseline."""
    return Row(
        benchmark,
        metric,
        unit,
        value=value,
        baseline=miniflare,
        baseline_name="Miniflare",
        goal=goal,
        note=note,
    )


def skipped_row(benchmark: str, what: str, reason: str, reference: str) -> Row:
    """The row standing for a comparison the run could not make: why, and the hand
    figure (clearly not a measurement of this run)."""
    return Row(
        benchmark,
        f"vs Miniflare: {what}",
        "",
        status="skipped",
        note=f"{reason}; Miniflare {reference} ({REFERENCE_NOTE})",
    )


# -- installing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    miniflare_version: str
    workerd_version: str
    node_version: str
    # Seconds the install took in this run; None when it was already installed.
    install_s: float | None


def _package_version(name: str) -> str:
    try:
        data = json.loads((MODULES_DIR / name / "package.json").read_text())
    except (OSError, ValueError):
        return ""
    return str(data.get("version", ""))


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def install() -> Installed | str:
    """The pinned Miniflare, installed if need be; a reason string when it cannot be."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "node is not installed (not on PATH)"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S,
            check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`node --version` failed: {error}"
    problem = node_problem(version)
    if problem:
        return problem
    if npm is None:
        return "npm is not installed (not on PATH), so Miniflare cannot be installed"
    inputs = [_read(PACKAGE_DIR / name) for name in INSTALL_INPUTS]
    digest = install_digest(inputs, platform.machine())
    stamp = _read(STAMP_FILE)
    present = (MODULES_DIR / "miniflare" / "package.json").is_file()
    took: float | None = None
    if needs_install(None if stamp is None else stamp.decode(errors="replace"), digest, present):
        started = time.monotonic()
        env = {**os.environ, "npm_config_update_notifier": "false"}
        try:
            done = subprocess.run(
                npm_argv(npm, inputs[1] is not None), cwd=PACKAGE_DIR, capture_output=True,
                text=True, timeout=INSTALL_TIMEOUT_S, env=env, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return f"npm did not finish installing Miniflare within {INSTALL_TIMEOUT_S:g} s"
        except OSError as error:
            return f"npm could not run: {error}"
        if done.returncode != 0:
            return f"npm exited {done.returncode}: {last_lines(done.stderr or done.stdout)}"
        took = time.monotonic() - started
        STAMP_FILE.write_text(digest + "\n")
    miniflare_version = _package_version("miniflare")
    if not miniflare_version:
        return "Miniflare is missing from bench/miniflare/node_modules after the install"
    return Installed(miniflare_version, _package_version("workerd"), version, took)


# -- running -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    """Live child processes of `pid` (from every thread's children list)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        pass
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


class MiniflareServer:
    """serve.mjs as a child process in a process group of its own (node and workerd)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.node_pid = 0
        self.workerd_pid = 0
        self.start_s = 0.0

    def start(self) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ready = self.data_dir / "ready.json"
        log = (self.data_dir / "miniflare.log").open("wb")
        started = time.monotonic()
        argv = [
            node, str(SERVE_SCRIPT), "--data-dir", str(self.data_dir), "--key", KV_KEY,
            "--value-hex", KV_VALUE.hex(), "--object", OBJECT_NAME,
        ]  # fmt: skip
        with log:
            # A group of its own: stop() can end workerd too should node die first.
            self.process = subprocess.Popen(
                argv, cwd=PACKAGE_DIR, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = started + READY_TIMEOUT_S
        while not ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                said = last_lines(self._log_text())
                self.stop()
                raise RuntimeError(f"Miniflare did not start: {said or 'no output'}")
            time.sleep(READY_POLL_S)
        self.start_s = time.monotonic() - started
        self.url, self.node_pid = parse_ready(ready.read_text())
        workerd = [pid for pid in _children(self.node_pid) if _comm(pid) == "workerd"]
        self.workerd_pid = workerd[0] if workerd else 0

    def _log_text(self) -> str:
        try:
            return (self.data_dir / "miniflare.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        # workerd, should node have died without stopping it: still in node's group.
        if self.workerd_pid:
            with contextlib.suppress(OSError):
                if os.getpgid(self.workerd_pid) == process.pid:
                    os.kill(self.workerd_pid, signal.SIGKILL)


@dataclass(frozen=True)
class Peer:
    """A running Miniflare and what it is: the benchmarks' handle on the peer."""

    installed: Installed
    server: MiniflareServer
    wrk: Wrk

    @property
    def address(self) -> str:
        return self.server.url.removeprefix("http://").rstrip("/")

    def load(self, path: str, connections: int, duration_s: float, warmup_s: float) -> HttpLoad:
        """A wrk load on `path`; server CPU is workerd's, node's is counted beside it."""
        return HttpLoad(
            f"{self.server.url.rstrip('/')}{path}",
            self.address,
            connections,
            duration_s,
            warmup_s,
            server_pid=self.server.workerd_pid or self.server.node_pid,
            extra_pids=(self.server.node_pid,) if self.server.workerd_pid else (),
        )

    def describe(self) -> str:
        """Versions and install time, for a benchmark's method paragraph."""
        installed = self.installed
        took = (
            f"installed by this run in {installed.install_s:.1f} s"
            if installed.install_s is not None
            else "already installed"
        )
        return (
            f"Miniflare {installed.miniflare_version} (workerd {installed.workerd_version}) "
            f"on node {installed.node_version}, {took}, started in "
            f"{self.server.start_s:.1f} s"
        )

    def details(self) -> dict[str, Any]:
        return {
            "miniflare": self.installed.miniflare_version,
            "workerd": self.installed.workerd_version,
            "node": self.installed.node_version,
            "install_s": self.installed.install_s,
            "start_s": self.server.start_s,
            "url": self.server.url,
        }


async def running_peer(context: Context) -> Peer | None:
    """The running peer, installed and started on first use; None (and the reason in
    `skip_reason`, printed once) when it cannot be had."""
    state = context.state.get(STATE_KEY)
    if state is None:
        state = await _start(context)
        context.state[STATE_KEY] = state
        if isinstance(state, str):
            context.ui.log(f"[yellow]Miniflare peer skipped:[/yellow] {state}")
    return state if isinstance(state, Peer) else None


def skip_reason(context: Context) -> str:
    state = context.state.get(STATE_KEY)
    return state if isinstance(state, str) else "not started"


def drop(context: Context, reason: str) -> None:
    """Count the peer as skipped from now on (it failed under load): the benchmarks
    after this one report the reason instead of measuring it again."""
    context.state[STATE_KEY] = reason
    context.ui.log(f"[yellow]Miniflare peer dropped:[/yellow] {reason}")


async def _start(context: Context) -> Peer | str:
    installed = await context.ui.step(
        "Miniflare peer: checking node, installing the pinned Miniflare if need be",
        asyncio.to_thread(install),
    )
    if isinstance(installed, str):
        return installed
    if installed.install_s is not None:
        context.ui.log(
            f"Miniflare {installed.miniflare_version} installed into {MODULES_DIR} in "
            f"{installed.install_s:.1f} s"
        )
    binary, reason = await asyncio.to_thread(find_or_install_wrk)
    if binary is None:
        return f"wrk is unavailable ({reason})"

    async def start() -> tuple[MiniflareServer, Callable[[], None]]:
        server = MiniflareServer(context.new_dir("miniflare"))
        await context.ui.step("starting Miniflare", asyncio.to_thread(server.start))
        return server, server.stop

    try:
        server = await context.resource(MINIFLARE_KEY, start)
    except RuntimeError as error:
        return str(error)
    return Peer(installed, server, Wrk(binary))


async def checked_peer(
    context: Context, path: str, expected: Callable[[bytes], bool], what: str
) -> Peer | None:
    """The running peer if one GET of `path` answers 200 with a body `expected` accepts
    (`what` names it); else None, the peer dropped with the reason."""
    found = await running_peer(context)
    if found is None:
        return None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as session,
            session.get(f"{found.server.url.rstrip('/')}{path}") as response,
        ):
            status, body = response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as error:
        drop(context, f"GET {path} at Miniflare failed: {error!r}")
        return None
    if status != 200 or not expected(body):
        drop(context, f"Miniflare answered GET {path} with {status} {body[:60]!r}, not {what}")
        return None
    return found


async def measure(
    context: Context, label: str, spec: HttpLoad, runs: int = 1
) -> dict[str, Any] | None:
    """`runs` wrk runs of `spec` against the peer, pooled; None (the peer then counts as
    skipped, with the reason) when the peer fails under load."""
    found = await running_peer(context)
    if found is None:
        return None
    results: list[HttpResult] = []
    try:
        for index in range(runs):
            current = spec if index == 0 else dataclasses.replace(spec, warmup_s=0.0)
            results.append(
                await context.ui.timed(
                    f"{label} (run {index + 1}/{runs})",
                    current.warmup_s + current.duration_s + 0.5,
                    found.wrk.run(current),
                )
            )
    except (RuntimeError, ValueError, OSError, TimeoutError) as error:
        drop(context, f"Miniflare failed under load ({label}): {error}")
        return None
    summary = pooled_http(results)
    if summary["requests"] == 0:
        drop(
            context,
            f"Miniflare answered no request ({label}: {summary['errors']} errors, "
            f"{summary['non_2xx']} non-2xx)",
        )
        return None
    return summary
