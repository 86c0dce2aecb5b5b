"""A bare grpc.aio echo server: the baseline KvGet is compared with.

One unary method, `/bench.Echo/Echo`, that answers the request bytes as they came (no
protobuf, no interceptors, no metrics): the cost of a gRPC round trip in Python on this
machine, and nothing else. It runs on the nodes' event loop (`run_on_node_loop`) with
the nodes' gRPC settings (`edgepop.grpc_env`: the classic endpoints, which make its
calls ~10-20% cheaper than grpcio's defaults do here) and their server options
(`edgepop.rpc.SERVER_OPTIONS`: flow control without BDP pings), so the comparison is of
the same runtime. Run as `python -m bench.echo`; it prints `PORT <n>` once it
serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc

from edgepop.grpc_env import use_node_defaults
from edgepop.lifecycle import run_on_node_loop
from edgepop.rpc import SERVER_OPTIONS

ECHO_METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    await stopped.wait()
    await server.stop(0.5)


class EchoServer:
    """The echo server as a child process (started and stopped by the bench)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.process: subprocess.Popen[str] | None = None
        self.address = ""

    @property
    def pid(self) -> int:
        return self.process.pid if self.process else 0

    def start(self, timeout: float = 30.0) -> None:
        # grpcio reads its settings when imported: they go in the child's environment.
        env = dict(os.environ)
        use_node_defaults(env)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.echo", "--host", self.host],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        # The first line is the bound port; readline blocks, but the child prints it
        # within a second or exits (and then readline returns "").
        line = self.process.stdout.readline()
        if not line.startswith("PORT ") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"echo server did not start (said {line!r})")
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


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.echo", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    run_on_node_loop(serve(args.host, args.port))


if __name__ == "__main__":
    main()
