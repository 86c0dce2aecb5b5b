"""Bare aiohttp doing the hot path of Cloudflare's binding examples: the `cf-workers` baseline.

One aiohttp server dispatching on `Host` to one handler per example in
`../shared/cf-examples/` (read there, never copied), each doing what the example's
`fetch` does with the platform's services replaced by their nearest bare equivalent,
so that the ratio to the example at a PoP isolates what the PoP's ingress, worker
runtime and bindings cost:

- 02-binding (`env.FOO.put` then `env.FOO.get`): the put as one gRPC `Origin.KvPut` (the
  PoP's put goes to the origin too, and is answered once durable there), the get as one
  LMDB read of the value this server stored;
- 04-query-d1 (`env.DB.prepare(...).all()` outside a session, which D1 serves at the
  primary): the same statement as one gRPC `Origin.SqlQuery`, the first row as JSON;
- 07-durable-objects (`/<list>/show`: `stub.get_messages()`): one gRPC `Pop.ObjectCall`
  of the same method of the same object at the same PoP, the messages joined by lines.

Access log off, the default asyncio loop, one process: as at the PoP. Run as
`python -m bench.bare_cf --lmdb DIR --origin-grpc HOST:PORT --pop-grpc HOST:PORT`; it
prints `PORT <n>` once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import lmdb
from aiohttp import web

from bench.bare_http import ChildServer, serve_handlers
from edge.v1 import kv_pb2, objects_pb2, origin_pb2_grpc, pop_pb2_grpc, sql_pb2
from edgepop.lifecycle import run_on_node_loop

MAP_BYTES = 64 * 1024 * 1024
CALL_TIMEOUT_S = 10.0
# The examples' names (their wrangler `name`) as Host headers on workers.dev.
KV_HOST = "hello-python-bindings.workers.dev"
D1_HOST = "python-d1.workers.dev"
LIST_HOST = "python-durable-object.workers.dev"
# What the examples bind: 02's KV namespace (its placeholder id names it), 04's database
# and the namespace of 07's class (`<worker>.<class>`).
KV_NAMESPACE = "YOUR_KV_NAMESPACE_ID"
KV_KEY = "bar"
KV_VALUE = b"baz"
D1_DATABASE = "quotes"
QUOTE_SQL = "SELECT quote, author FROM qtable ORDER BY RANDOM() LIMIT 1"
LIST_NAMESPACE = "python-durable-object.List"

Handler = Callable[[web.Request], Awaitable[web.Response]]


def sql_value(value: sql_pb2.SqlValue) -> Any:
    """One SQLite value as the JSON a D1 row carries."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null"):
        return None
    if kind == "blob":
        return list(value.blob)
    return getattr(value, kind)


class CfHandlers:
    """The three hot paths, by the `Host` each example answers at."""

    def __init__(self, env: lmdb.Environment, origin_grpc: str, pop_grpc: str) -> None:
        self.env = env
        self.origin_grpc = origin_grpc
        self.pop_grpc = pop_grpc
        self.channels: list[grpc.aio.Channel] = []
        self.origin: origin_pb2_grpc.OriginStub | None = None
        self.pop: pop_pb2_grpc.PopStub | None = None
        self.hosts: dict[str, Handler] = {
            KV_HOST: self.kv_binding,
            D1_HOST: self.query_d1,
            LIST_HOST: self.durable_list,
        }

    async def open(self) -> None:
        origin = grpc.aio.insecure_channel(self.origin_grpc)
        pop = grpc.aio.insecure_channel(self.pop_grpc)
        self.channels = [origin, pop]
        self.origin = origin_pb2_grpc.OriginStub(origin)
        self.pop = pop_pb2_grpc.PopStub(pop)
        with self.env.begin(write=True) as txn:
            txn.put(KV_KEY.encode(), KV_VALUE)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    async def handle(self, request: web.Request) -> web.Response:
        handler = self.hosts.get(request.host.split(":")[0])
        if handler is None:
            return web.Response(status=404, text=f"no bare handler for {request.host}")
        return await handler(request)

    async def kv_binding(self, request: web.Request) -> web.Response:
        assert self.origin is not None
        await self.origin.KvPut(
            kv_pb2.KvPutRequest(namespace=KV_NAMESPACE, key=KV_KEY, value=KV_VALUE),
            timeout=CALL_TIMEOUT_S,
        )
        with self.env.begin() as txn:
            value = txn.get(KV_KEY.encode())
        return web.Response(body=value, content_type="text/plain")

    async def query_d1(self, request: web.Request) -> web.Response:
        assert self.origin is not None
        response = await self.origin.SqlQuery(
            sql_pb2.SqlQueryRequest(
                database=D1_DATABASE, statements=[sql_pb2.SqlStatement(sql=QUOTE_SQL)]
            ),
            timeout=CALL_TIMEOUT_S,
        )
        result = response.results[0]
        row = {
            column: sql_value(value)
            for column, value in zip(result.columns, result.rows[0].values, strict=True)
        }
        return web.json_response(row)

    async def durable_list(self, request: web.Request) -> web.Response:
        assert self.pop is not None
        list_name = request.path.split("/")[1]
        response = await self.pop.ObjectCall(
            objects_pb2.ObjectCallRequest(
                namespace=LIST_NAMESPACE, name=list_name, method="get_messages", args_json="[]"
            ),
            timeout=CALL_TIMEOUT_S,
        )
        messages = json.loads(response.result_json) or []
        if not messages:
            return web.Response(text="No messages")
        return web.Response(text="\n".join(messages))


async def serve(args: argparse.Namespace) -> None:
    await serve_handlers(
        args.lmdb,
        args.host,
        args.port,
        lambda env: CfHandlers(env, args.origin_grpc, args.pop_grpc),
    )


class BareCfServer(ChildServer):
    """The bare server of Cloudflare's binding examples as a child process."""

    def __init__(
        self, directory: Path, origin_grpc: str, pop_grpc: str, host: str = "127.0.0.1"
    ) -> None:
        super().__init__(
            [
                sys.executable, "-m", "bench.bare_cf", "--host", host, "--lmdb", str(directory),
                "--origin-grpc", origin_grpc, "--pop-grpc", pop_grpc,
            ],
            host,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.bare_cf", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lmdb", type=Path, required=True, help="LMDB directory (created)")
    parser.add_argument("--origin-grpc", required=True, help="the origin's gRPC address")
    parser.add_argument("--pop-grpc", required=True, help="the PoP's gRPC address (objects)")
    run_on_node_loop(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
