"""Cloudflare's binding examples under load, each beside bare aiohttp doing its hot path.

The performance issue's worker-path goals, held for code written for Cloudflare: the
examples in `../shared/cf-examples/` that use a binding (01-hello, which uses none, is a
`worker-kv` row) are deployed from their own folders, unmodified, on the worker
benchmarks' cluster (`objects_cluster`: delay emulation off), and loaded at one PoP (the
hot Counter's owner, in london) through their `NAME.workers.dev` Host, in alternating
rounds with `bench.bare_cf` doing the same work with the platform's services replaced
by their bare equivalent:

- 02-binding: a KV put (to the origin, answered once durable there) and a get of it;
- 04-query-d1: `SELECT ... ORDER BY RANDOM() LIMIT 1` outside a session, which D1
  serves at the primary (the origin), on `quotes` made by the example's own
  `db_init.sql` through `edgectl d1 execute --file`, as its README says;
- 07-durable-objects: `GET /<list>/show` of a list of three messages whose object the
  PoP owns (a Durable Object RPC, `stub.get_messages()`, and its storage read).

Goal per example: at least `KV_RATIO_GOAL` (0.5x) of the bare handler's requests/s, and
every answer a 2xx on both sides (the seed workers' rule, `bench.seed_workers`).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from bench import plots
from bench.bare_cf import (
    D1_DATABASE,
    D1_HOST,
    KV_HOST,
    KV_VALUE,
    LIST_HOST,
    LIST_NAMESPACE,
    BareCfServer,
)
from bench.cf_examples import CF_EXAMPLES_DEFAULT, cf_examples_dir
from bench.edge_workers import (
    CONNECTIONS,
    _http_notes,
    _tool_note,
    deploy,
    http_get,
    http_tool,
    wait_loaded,
)
from bench.objects import hot_roles, objects_cluster
from bench.runner import BenchResult, Context
from bench.seed_workers import (
    BARE_SIDE,
    WORKER_SIDE,
    SeedTarget,
    measure_target,
    object_owners,
    ratio_of,
    seed_load,
)
from bench.stats import Row
from edge.v1 import objects_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster, NodeState
from edgepop.bundle import check_bundle, read_bundle

BENCHMARK = "cf-workers"
BARE_CF_KEY = "bare-cf"
KV_EXAMPLE = "02-binding"
D1_EXAMPLE = "04-query-d1"
LIST_EXAMPLE = "07-durable-objects"
EXAMPLES = (KV_EXAMPLE, D1_EXAMPLE, LIST_EXAMPLE)
D1_INIT_FILE = "db_init.sql"
# The list the bench shows: placed by adding these at the PoP, kept if the PoP owns it.
LIST_NAME_PREFIX = "bench-list-"
LIST_MESSAGES = ("one", "two", "three")
LIST_NAMES_TRIED_MAX = 16
EDGECTL_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0


def _quote(body: bytes) -> bool:
    try:
        row = json.loads(body)
    except ValueError:
        return False
    return isinstance(row, dict) and set(row) == {"quote", "author"}


def cf_targets(list_name: str) -> tuple[SeedTarget, ...]:
    return (
        SeedTarget(
            KV_EXAMPLE, KV_HOST, "/", "bare KvPut + LMDB",
            "baseline: 1 gRPC Origin.KvPut of the same key and value (the PoP's put goes to "
            "the origin too), then 1 LMDB get",
            lambda body: body == KV_VALUE, worker="hello-python-bindings",
        ),
        SeedTarget(
            D1_EXAMPLE, D1_HOST, "/", "bare SqlQuery",
            "baseline: the same statement as 1 gRPC Origin.SqlQuery (outside a session D1 "
            "answers at the primary), the first row as JSON",
            _quote, worker="python-d1",
        ),
        SeedTarget(
            LIST_EXAMPLE, LIST_HOST, f"/{list_name}/show", "bare ObjectCall",
            "baseline: 1 gRPC Pop.ObjectCall of get_messages on the same object at the same "
            "PoP (a loopback gRPC hop the worker's RPC does not pay)",
            lambda body: body == "\n".join(LIST_MESSAGES).encode(),
            worker="python-durable-object",
        ),
    )  # fmt: skip


def skipped_rows(reason: str) -> list[Row]:
    return [
        Row(BENCHMARK, f"{name}: requests/s, {CONNECTIONS} connections", "req/s",
            status="skipped", note=reason)
        for name in EXAMPLES
    ]  # fmt: skip


# -- the cluster side --------------------------------------------------------------------------


async def _edgectl(cluster: Cluster, *args: str) -> str:
    """The real CLI, as the example's README has a user run it; its stdout."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgectl", "--data-dir", str(cluster.data_dir), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), EDGECTL_TIMEOUT_S)
    if process.returncode != 0:
        raise RuntimeError(f"edgectl {' '.join(args)}: {stderr.decode().strip()[-200:]}")
    return stdout.decode()


async def deploy_examples(context: Context, cluster: Cluster, examples: Path) -> dict[str, str]:
    """Deploy the three examples from their folders and make 04's database, once per run."""
    if "cf-workers-deployed" not in context.state:
        await _edgectl(cluster, "d1", "create", D1_DATABASE)
        init_file = examples / D1_EXAMPLE / D1_INIT_FILE
        await _edgectl(cluster, "d1", "execute", D1_DATABASE, "--file", str(init_file))
        versions = {}
        for example in EXAMPLES:
            response = await deploy(cluster, read_bundle(examples / example))
            versions[response.name] = response.version
        for name, version in versions.items():
            await wait_loaded(cluster, name, version)
        context.state["cf-workers-deployed"] = versions
    deployed: dict[str, str] = context.state["cf-workers-deployed"]
    return deployed


async def owned_list(cluster: Cluster, pop: NodeState) -> str:
    """A list of `LIST_MESSAGES`, made through the example at `pop`, whose object `pop`
    owns (london has two PoPs; the id's hash picks one)."""
    async with grpc.aio.insecure_channel(pop.grpc_address) as channel:
        stub = pop_pb2_grpc.PopStub(channel)
        for index in range(LIST_NAMES_TRIED_MAX):
            name = f"{LIST_NAME_PREFIX}{index}"
            for message in LIST_MESSAGES:
                status, body = await http_get(pop.http_address, LIST_HOST, f"/{name}/add/{message}")
                if status != 200:
                    raise RuntimeError(f"{LIST_EXAMPLE} add answered {status} {body[:60]!r}")
            placed = await stub.ObjectCall(
                objects_pb2.ObjectCallRequest(
                    namespace=LIST_NAMESPACE, name=name, method="get_messages", args_json="[]"
                ),
                timeout=CALL_TIMEOUT_S,
            )
            if (await object_owners(cluster)).get(placed.id) == pop.name:
                return name
    raise RuntimeError(f"{pop.name} owns none of {LIST_NAMES_TRIED_MAX} lists")


async def bare_cf_server(context: Context, cluster: Cluster, pop: NodeState) -> BareCfServer:
    async def start() -> tuple[BareCfServer, Callable[[], None]]:
        server = BareCfServer(
            context.new_dir("bare-cf") / "lmdb", cluster.origin.grpc_address, pop.grpc_address
        )
        await asyncio.to_thread(server.start)
        return server, server.stop

    return await context.resource(BARE_CF_KEY, start)


# -- the benchmark -----------------------------------------------------------------------------


async def run_cf_workers(context: Context) -> BenchResult:
    examples = cf_examples_dir()
    if examples is None:
        reason = f"Cloudflare's examples are not at {CF_EXAMPLES_DEFAULT}"
        return BenchResult(rows=skipped_rows(reason), method=reason)
    cluster = await objects_cluster(context)
    pop = (await hot_roles(context, cluster)).owner
    await http_tool(context)
    versions = await context.ui.step(
        "deploying Cloudflare's binding examples", deploy_examples(context, cluster, examples)
    )
    list_name = await context.ui.step(f"placing a list at {pop.name}", owned_list(cluster, pop))
    duration = context.pick(4.0, 2.0)
    warmup = 1.0
    rounds = context.pick(3, 1)
    bare = await bare_cf_server(context, cluster, pop)
    others = tuple(node.pid for node in (cluster.origin, *cluster.pops))
    rows: list[Row] = []
    measured: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    targets = cf_targets(list_name)
    for target in targets:
        limit_s = check_bundle(read_bundle(examples / target.name)).cpu_ms / 1000.0
        sides = {
            BARE_SIDE: seed_load(
                target, bare.address, "", CONNECTIONS, duration, warmup, bare.pid, others
            ),
            WORKER_SIDE: seed_load(
                target, pop.http_address, "", CONNECTIONS, duration, warmup, pop.pid,
                tuple(pid for pid in others if pid != pop.pid),
            ),
        }  # fmt: skip
        target_rows, result, pooled = await measure_target(
            context, target, sides, pop, limit_s, rounds, BENCHMARK
        )
        rows += target_rows
        results[target.name] = result
        measured.update(pooled)
    done = [t.name for t in targets if WORKER_SIDE in results.get(t.name, {})]
    plot = None
    if done:
        plot = plots.grouped_bars(
            context.settings.out_dir / "cf_workers.png",
            f"Cloudflare's binding examples vs bare aiohttp, {CONNECTIONS} connections",
            done,
            {
                "bare aiohttp, same hot path": [results[n][BARE_SIDE]["rate_per_s"] for n in done],
                "PoP worker (unmodified example)": [
                    results[n][WORKER_SIDE]["rate_per_s"] for n in done
                ],
            },
            "requests/s",
            [f"{ratio_of(results[n]):.2f}x" for n in done],
        )
    return BenchResult(
        rows=rows,
        details={"pop": pop.name, "versions": versions, "list": list_name, "results": results},
        plots=[plot],
        method=(
            f"Cloudflare's examples {', '.join(EXAMPLES)} from {examples} (read there, never "
            f"copied; deployed unmodified) at {pop.name}'s HTTP ingress, on the worker "
            f"benchmarks' cluster (delay emulation off), each loaded by {CONNECTIONS} "
            f"keep-alive connections for {duration:g} s per side ({rounds} alternating "
            f"round(s), {warmup:g} s warm-up before each side's first) with its "
            "`NAME.workers.dev` Host. Requests: 02-binding `GET /` (a KV put of one key, "
            "answered once durable at the origin, then a get of it: 64 writers of one key, "
            "group-committed); 04-query-d1 `GET /` (one random quote of three from the "
            f"primary; `{D1_DATABASE}` made by `edgectl d1 create` and the example's "
            f"`{D1_INIT_FILE}` through `edgectl d1 execute --file`); 07-durable-objects "
            f"`GET /{list_name}/show` (a list of {len(LIST_MESSAGES)} messages added through "
            f"the example at {pop.name}, whose object it owns). Baseline in the same rounds: "
            "`bench.bare_cf`, one aiohttp process (access log off, default asyncio loop, as "
            "at the PoP) doing each example's work with the platform's services replaced "
            "by the bare equivalent; each row's note says which. Goal per example: "
            "requests/s at least 0.5x the baseline's, and no non-2xx answer or socket "
            f"error on either side. {_tool_note(context)}"
        ),
        notes=_http_notes(measured),
    )
