"""A bare aiohttp server doing one LMDB get per request: the baseline for worker requests.

Every request, whatever its path, is answered with the value of one key read from an
LMDB environment in a read transaction: HTTP/1.1 parsing, one LMDB lookup and a
response, with aiohttp's access log off as at the PoP's ingress — the floor for "an
HTTP request that reads one KV value" in Python on this machine, with no routing,
worker runtime, limits or metrics. Run as `python -m bench.bare_http --lmdb DIR`; it
stores the key first, prints `PORT <n>` once it serves, and stops on SIGTERM.

Every bare server here (and `bench.echo`) runs on the event loop the nodes run on
(`edgepop.lifecycle.run_on_node_loop`: uvloop, or asyncio's with
`EDGEPOP_EVENT_LOOP=asyncio`), so a ratio compares edgepop's own work with a bare server
of the same runtime, not two event loops.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import lmdb
from aiohttp import web

from edgepop.lifecycle import run_on_node_loop

KEY = b"bench-key"
MAP_BYTES = 64 * 1024 * 1024


def build_app(env: lmdb.Environment) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        with env.begin() as txn:
            value = txn.get(KEY)
        if value is None:
            return web.Response(status=404)
        return web.Response(body=value)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


async def serve_until_stopped(app: web.Application, host: str, port: int) -> None:
    """Serve `app` as every bare server does (access log off, as at the PoP's ingress):
    print `PORT <n>` once it serves, return after SIGTERM or SIGINT."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"PORT {bound}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await runner.cleanup()


class BareHandlers(Protocol):
    """A bare server's request handling over an LMDB file and its gRPC channels."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def handle(self, request: web.Request) -> web.Response: ...


async def serve_handlers(
    directory: Path, host: str, port: int, make: Callable[[Any], BareHandlers]
) -> None:
    """Open the LMDB file in `directory`, serve every path with `make(env).handle` until
    stopped (`serve_until_stopped`), then close both."""
    env = lmdb.open(str(directory), map_size=MAP_BYTES, max_dbs=1)
    handlers = make(env)
    await handlers.open()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handlers.handle)
    try:
        await serve_until_stopped(app, host, port)
    finally:
        await handlers.close()
        env.close()


async def serve(host: str, port: int, directory: Path, value: bytes) -> None:
    env = lmdb.open(str(directory), map_size=MAP_BYTES, max_dbs=1)
    with env.begin(write=True) as txn:
        txn.put(KEY, value)
    await serve_until_stopped(build_app(env), host, port)
    env.close()


class ChildServer:
    """A bench server as a child process (started and stopped by the bench): `argv` runs
    it, it prints `PORT <n>` once it serves and stops on SIGTERM."""

    def __init__(self, argv: list[str], host: str = "127.0.0.1") -> None:
        self.argv = argv
        self.host = host
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self.process.stdout is not None
        # The child prints its port within a second or exits (readline then returns "").
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"{self.argv[2]} did not start (said {line!r})")
        self.address = f"{self.host}:{int(line.split()[1])}"

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None


class BareHttpServer(ChildServer):
    """The bare LMDB server as a child process."""

    def __init__(self, directory: Path, value: bytes, host: str = "127.0.0.1") -> None:
        super().__init__(
            [
                sys.executable, "-m", "bench.bare_http", "--host", host,
                "--lmdb", str(directory), "--value-hex", value.hex(),
            ],
            host,
        )  # fmt: skip
        self.directory = directory
        self.value = value


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.bare_http", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lmdb", type=Path, required=True, help="LMDB directory (created)")
    parser.add_argument("--value-hex", default=(b"v" * 100).hex(), help="the value, in hex")
    args = parser.parse_args()
    args.lmdb.mkdir(parents=True, exist_ok=True)
    run_on_node_loop(serve(args.host, args.port, args.lmdb, bytes.fromhex(args.value_hex)))


if __name__ == "__main__":
    main()
