"""Redis async replication on loopback: the baseline for edgepop's propagation delay.

A primary and N `replicaof` replicas (Debian's redis-server, installed on first use
when missing and apt can), each on a free port with its own dir under the bench's temp
dir, no persistence. Writes are paced SETs whose key carries the send time; a
subscriber on every replica hears the keyspace event of every 50th SET (a pattern
subscription: replicas fire events for the writes they apply from the stream, and Redis
itself leaves out the others) and records receive - send time: client send -> visible
at each replica, the interval edgepop's visibility reader measures. Both run in bench
load-generator processes, apart from each other and from Redis.

Redis keeps no durability work on the path (no fsync, no AOF), while an edgepop commit
is fsynced at the origin before it streams: Redis is the floor for async replication
of small writes on this machine, not a like-for-like durable store.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

from bench.loadgen import redis_info
from edgectl.launcher import free_port

APT_TIMEOUT_S = 600
PORT_ATTEMPTS_MAX = 3


def _apt(*args: str) -> str:
    """Run apt-get; "" on success, else why it failed."""
    command = ["apt-get", *args]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=APT_TIMEOUT_S,
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"`{' '.join(command)}` failed: {error}"
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines()
    return f"`{' '.join(command)}` exited {done.returncode}: {lines[-1] if lines else ''}"


def find_or_install_redis() -> tuple[str | None, str]:
    """(path to redis-server, "") or (None, why it is unavailable)."""
    found = shutil.which("redis-server")
    if found:
        return found, ""
    if shutil.which("apt-get") is None:
        return None, "redis-server is not installed and there is no apt-get"
    # A stale package list is the usual reason for a failed install: update once, retry.
    failure = _apt("install", "-y", "-q", "redis-server")
    if failure:
        failure = _apt("update", "-q") or _apt("install", "-y", "-q", "redis-server")
    found = shutil.which("redis-server")
    if found:
        return found, ""
    return None, failure or "redis-server still missing after apt-get install"


class RedisReplicaSet:
    """A primary and `replicas` replicas, as child processes of the bench."""

    def __init__(self, binary: str, root: Path, replicas: int) -> None:
        self.binary = binary
        self.root = root
        self.replica_count = replicas
        self.primary_port = 0
        self.replica_ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    def _spawn(self, name: str, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        argv = [
            self.binary,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(directory / "redis.log"),
            *extra,
        ]  # fmt: skip
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self._processes.append(process)
        return process

    async def _start_one(self, name: str, extra: list[str], deadline: float) -> int:
        """Start one server and wait until it answers; returns its port.

        A port from `free_port` was free a moment ago, but other programs on a shared
        machine pick ports too: a server that exits at once is retried on another port.
        """
        for _ in range(PORT_ATTEMPTS_MAX):
            port = free_port()
            process = self._spawn(name, port, extra)
            while process.poll() is None:
                try:
                    await redis_info(port)
                    return port
                except (OSError, TimeoutError, ConnectionError, ValueError):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"redis {name} does not answer on port {port}") from None
                    await asyncio.sleep(0.05)
            self._processes.remove(process)
        log = _tail(self.root / name / "redis.log")
        raise RuntimeError(f"redis {name} exited at start {PORT_ATTEMPTS_MAX} times: {log}")

    async def start(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        # No 5 s wait for more replicas before a (diskless) full sync.
        self.primary_port = await self._start_one(
            "primary", ["--repl-diskless-sync-delay", "0"], deadline
        )
        for index in range(self.replica_count):
            port = await self._start_one(
                f"replica-{index + 1}",
                [
                    "--replicaof", "127.0.0.1", str(self.primary_port),
                    # Keyspace events (one channel per key) for string commands: the
                    # subscriber samples them by key pattern.
                    "--notify-keyspace-events", "K$",
                ],
                deadline,
            )  # fmt: skip
            self.replica_ports.append(port)
        for port in self.replica_ports:
            while (await redis_info(port)).get("master_link_status") != "up":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis replica on port {port} did not link up")
                await asyncio.sleep(0.05)
        while int((await redis_info(self.primary_port)).get("connected_slaves", 0)) < (
            self.replica_count
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the redis primary does not see every replica")
            await asyncio.sleep(0.05)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def stop(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        self._processes.clear()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"
