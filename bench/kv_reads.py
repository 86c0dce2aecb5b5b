"""Edge reads: KvGet against a bare gRPC echo server, and KvGetMany throughput.

Both run on a small cluster (control plane, origin, one PoP) with delay emulation off:
its only PoP is what is measured, and the two idle processes beside it cost little CPU.
The client is a grpc.aio process of its own (a load-generator process). The echo server
answers a message of exactly the size of the PoP's KvGet reply, so the ratio says what the
PoP's work (routing through the rpc decorator, metrics, validation, the LMDB read,
protobuf) costs on top of a gRPC round trip in Python on this machine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench import plots
from bench.echo import ECHO_METHOD, EchoServer
from bench.loadgen import UnaryLoad, UnaryResult, closed_loop
from bench.runner import BenchResult, Context
from bench.stats import Goal, Row, ratio
from edge.v1 import kv_pb2, origin_pb2_grpc, pop_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster

SINGLE_POP_KEY = "single-pop"
SINGLE_POP_TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 1}],
}
ECHO_KEY = "echo"
NAMESPACE = "bench"
VALUE_BYTES = 100
GET_KEY = "kvget-100b"
MANY_KEYS = 1000
MANY_PER_CALL = 100
# Distinct KvGetMany requests the client cycles through (each 100 of the 1000 keys).
MANY_REQUESTS = MANY_KEYS // MANY_PER_CALL
CONCURRENCY_HIGH = 64
KVGET_RATIO_GOAL = 0.9
GETMANY_KEYS_PER_S_GOAL = 100_000.0
KVGET_METHOD = "/edge.v1.Pop/KvGet"
GETMANY_METHOD = "/edge.v1.Pop/KvGetMany"


def many_key(index: int) -> str:
    return f"many-{index:04d}"


async def single_pop(context: Context) -> Cluster:
    """The one-PoP cluster with the benchmark's keys loaded and replicated to the PoP."""
    cluster = await context.cluster(SINGLE_POP_KEY, SINGLE_POP_TOPOLOGY)
    if not context.state.get("single-pop-loaded"):
        await context.ui.step("loading keys", _load_keys(cluster))
        context.state["single-pop-loaded"] = True
    return cluster


async def _load_keys(cluster: Cluster) -> None:
    value = bytes(range(VALUE_BYTES))
    async with grpc.aio.insecure_channel(cluster.origin.grpc_address) as channel:
        origin = origin_pb2_grpc.OriginStub(channel)
        await origin.KvPut(
            kv_pb2.KvPutRequest(namespace=NAMESPACE, key=GET_KEY, value=value), timeout=10
        )
        response = await origin.KvPutMany(
            kv_pb2.KvPutManyRequest(
                namespace=NAMESPACE,
                entries=[
                    kv_pb2.KvPutEntry(key=many_key(index), value=value)
                    for index in range(MANY_KEYS)
                ],
            ),
            timeout=30,
        )
    async with grpc.aio.insecure_channel(cluster.pops[0].grpc_address) as channel:
        pop = pop_pb2_grpc.PopStub(channel)
        deadline = time.monotonic() + 30
        while (await pop.Status(pop_pb2.PopStatusRequest(), timeout=5)).applied_seq < response.seq:
            if time.monotonic() > deadline:
                raise TimeoutError("the PoP did not replicate the benchmark keys in 30 s")
            await asyncio.sleep(0.05)


async def echo_server(context: Context) -> EchoServer:
    async def start() -> tuple[EchoServer, Callable[[], None]]:
        server = EchoServer()
        await asyncio.to_thread(server.start)
        return server, server.stop

    return await context.resource(ECHO_KEY, start)


async def _raw_call(address: str, method: str, payload: bytes) -> bytes:
    async with grpc.aio.insecure_channel(address) as channel:
        response: bytes = await channel.unary_unary(method)(payload, timeout=10)
        return response


def _pooled(runs: list[UnaryResult]) -> dict[str, Any]:
    """Rounds of one (target, concurrency) pooled: total calls over total time."""
    calls = sum(run.calls for run in runs)
    elapsed = sum(run.elapsed_s for run in runs)
    cpu = sum(run.server_cpu_s for run in runs)
    extra_cpu = sum(run.extra_cpu_s for run in runs)
    p50s = sorted(run.latency_s["p50"] for run in runs)
    p99s = sorted(run.latency_s["p99"] for run in runs)
    return {
        "calls": calls,
        "errors": sum(run.errors for run in runs),
        "elapsed_s": elapsed,
        "rate_per_s": calls / elapsed if elapsed else math.nan,
        # The median round's percentile: a round hit by a noisy neighbour does not win.
        "latency_p50_s": p50s[len(p50s) // 2],
        "latency_p99_s": p99s[len(p99s) // 2],
        "server_cpu_per_call_us": 1e6 * cpu / calls if calls else math.nan,
        "server_cpu_share": cpu / elapsed if elapsed else math.nan,
        # The other processes the load kept busy (UnaryLoad.extra_pids), and the sum.
        "extra_cpu_per_call_us": 1e6 * extra_cpu / calls if calls else math.nan,
        "total_cpu_per_call_us": 1e6 * (cpu + extra_cpu) / calls if calls else math.nan,
        "client_cpu_share": sum(run.client_cpu_s for run in runs) / elapsed if elapsed else 0,
        "rounds": [run.rate_per_s for run in runs],
    }


async def _compare(
    context: Context,
    label: str,
    targets: dict[str, UnaryLoad],
) -> dict[str, dict[str, Any]]:
    """Measure each target in alternating rounds of equal length; pool per target.

    Alternating (and flipping the order every round) spreads slow drifts of a shared
    machine over both sides instead of charging them to whichever ran second.
    """
    rounds = context.pick(3, 1)
    names = list(targets)
    runs: dict[str, list[UnaryResult]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            spec = targets[name]
            result = await context.ui.timed(
                f"{label}: {name} (round {round_index + 1}/{rounds})",
                spec.warmup_s + spec.duration_s + 0.3,
                context.in_loadgen(closed_loop, spec),
            )
            if result.calls == 0:
                raise RuntimeError(f"{label}: {name} answered no call ({result.errors} errors)")
            runs[name].append(result)
    return {name: _pooled(results) for name, results in runs.items()}


def _rate_ratio(result: dict[str, dict[str, Any]], name: str) -> float:
    return ratio(result[name]["rate_per_s"], result["echo"]["rate_per_s"]) or math.nan


# -- KvGet vs echo -------------------------------------------------------------------------


async def run_kvget(context: Context) -> BenchResult:
    cluster = await single_pop(context)
    echo = await echo_server(context)
    pop = cluster.pops[0]
    request = kv_pb2.KvGetRequest(namespace=NAMESPACE, key=GET_KEY).SerializeToString()
    reply = await _raw_call(pop.grpc_address, KVGET_METHOD, request)
    parsed = kv_pb2.KvGetResponse.FromString(reply)
    if not (parsed.found and len(parsed.value) == VALUE_BYTES):
        raise RuntimeError(f"KvGet of the benchmark key answered {parsed}")
    # The echo request (and so its reply) is the PoP's real reply: same bytes both ways.
    echo_payload = reply
    duration = context.pick(3.0, 1.0)
    warmup = context.pick(0.5, 0.25)

    measured: dict[int, dict[str, dict[str, Any]]] = {}
    for concurrency in (1, CONCURRENCY_HIGH):
        targets = {
            "echo": UnaryLoad(
                echo.address, ECHO_METHOD, (echo_payload,), concurrency, duration, warmup, echo.pid
            ),
            "PoP KvGet": UnaryLoad(
                pop.grpc_address, KVGET_METHOD, (request,), concurrency, duration, warmup, pop.pid
            ),
        }
        measured[concurrency] = await _compare(context, f"{concurrency} in flight", targets)

    rows = []
    for concurrency, result in measured.items():
        pop_side, echo_side = result["PoP KvGet"], result["echo"]
        rows += [
            Row(
                "kvget",
                f"KvGet calls/s, {concurrency} in flight",
                "calls/s",
                value=pop_side["rate_per_s"],
                baseline=echo_side["rate_per_s"],
                baseline_name="echo",
                goal=Goal(">=", KVGET_RATIO_GOAL, on="ratio"),
            ),
            Row(
                "kvget",
                f"KvGet p50 latency, {concurrency} in flight",
                "ms",
                value=pop_side["latency_p50_s"] * 1e3,
                baseline=echo_side["latency_p50_s"] * 1e3,
                baseline_name="echo",
            ),
            Row(
                "kvget",
                f"server CPU/call, {concurrency} in flight",
                "µs",
                value=pop_side["server_cpu_per_call_us"],
                baseline=echo_side["server_cpu_per_call_us"],
                baseline_name="echo",
            ),
        ]

    plot = plots.grouped_bars(
        context.settings.out_dir / "kvget_vs_echo.png",
        "KvGet at a PoP vs a bare grpc.aio echo server",
        [f"{c} in flight" for c in measured],
        {
            "echo": [measured[c]["echo"]["rate_per_s"] for c in measured],
            "PoP KvGet": [measured[c]["PoP KvGet"]["rate_per_s"] for c in measured],
        },
        "calls/s",
        [f"ratio {_rate_ratio(measured[c], 'PoP KvGet'):.2f}x" for c in measured],
    )
    notes = [
        "| concurrency | target | calls/s | rounds (calls/s) | p50 µs | p99 µs | server CPU µs/call"
        " | server CPU share | client CPU share |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for concurrency, result in measured.items():
        for name, side in result.items():
            notes.append(
                f"| {concurrency} | {name} | {side['rate_per_s']:,.0f} | "
                + ", ".join(f"{rate:,.0f}" for rate in side["rounds"])
                + f" | {side['latency_p50_s'] * 1e6:.0f} | {side['latency_p99_s'] * 1e6:.0f} | "
                f"{side['server_cpu_per_call_us']:.0f} | {side['server_cpu_share']:.0%} | "
                f"{side['client_cpu_share']:.0%} |"
            )
    return BenchResult(
        rows=rows,
        details={
            "reply_bytes": len(reply),
            "duration_s": duration,
            "warmup_s": warmup,
            "results": {str(c): r for c, r in measured.items()},
        },
        plots=[plot],
        method=(
            f"Closed-loop unary calls from a grpc.aio client in its own process, 1 and "
            f"{CONCURRENCY_HIGH} calls in flight, against the PoP's `KvGet` (a {VALUE_BYTES}-byte"
            f" value, reply {len(reply)} bytes) and against `bench.echo`, a bare grpc.aio "
            f"server whose one method returns the request bytes (request = the PoP's reply), "
            f"on the nodes' event loop with the nodes' gRPC settings. "
            f"Cluster: control plane + origin + 1 PoP, `emulate_delay: false`. "
            f"{context.pick(3, 1)} alternating round(s) of {duration:g} s per side after "
            f"{warmup:g} s warm-up on the same channel; rates pool all rounds. The client "
            "sends pre-serialised bytes and does not parse replies, so it costs the same "
            "on both sides. Server CPU is utime+stime of the server process over the window."
        ),
        notes=notes,
    )


# -- KvGetMany throughput ------------------------------------------------------------------


async def run_getmany(context: Context) -> BenchResult:
    cluster = await single_pop(context)
    echo = await echo_server(context)
    pop = cluster.pops[0]
    requests = tuple(
        kv_pb2.KvGetManyRequest(
            namespace=NAMESPACE,
            keys=[many_key(start * MANY_PER_CALL + i) for i in range(MANY_PER_CALL)],
        ).SerializeToString()
        for start in range(MANY_REQUESTS)
    )
    reply = await _raw_call(pop.grpc_address, GETMANY_METHOD, requests[0])
    parsed = kv_pb2.KvGetManyResponse.FromString(reply)
    if sum(result.found for result in parsed.results) != MANY_PER_CALL:
        raise RuntimeError("KvGetMany did not find every benchmark key")
    duration = context.pick(4.0, 1.5)
    warmup = context.pick(1.0, 0.3)
    targets = {
        "echo": UnaryLoad(
            echo.address, ECHO_METHOD, (reply,), CONCURRENCY_HIGH, duration, warmup, echo.pid
        ),
        "PoP KvGetMany": UnaryLoad(
            pop.grpc_address,
            GETMANY_METHOD,
            requests,
            CONCURRENCY_HIGH,
            duration,
            warmup,
            pop.pid,
        ),
    }
    measured = await _compare(context, f"{CONCURRENCY_HIGH} in flight", targets)
    pop_side, echo_side = measured["PoP KvGetMany"], measured["echo"]
    keys_per_s = pop_side["rate_per_s"] * MANY_PER_CALL
    echo_keys_per_s = echo_side["rate_per_s"] * MANY_PER_CALL
    rows = [
        Row(
            "getmany",
            f"KvGetMany keys/s, {MANY_PER_CALL} keys x {CONCURRENCY_HIGH} in flight",
            "keys/s",
            value=keys_per_s,
            baseline=echo_keys_per_s,
            baseline_name="echo",
            goal=Goal(">=", GETMANY_KEYS_PER_S_GOAL),
        ),
        Row(
            "getmany",
            "KvGetMany p50 latency",
            "ms",
            value=pop_side["latency_p50_s"] * 1e3,
            baseline=echo_side["latency_p50_s"] * 1e3,
            baseline_name="echo",
        ),
        Row(
            "getmany",
            "server CPU/key",
            "µs",
            value=pop_side["server_cpu_per_call_us"] / MANY_PER_CALL,
            baseline=echo_side["server_cpu_per_call_us"] / MANY_PER_CALL,
            baseline_name="echo",
        ),
    ]
    plot = plots.bars_with_goal(
        context.settings.out_dir / "getmany.png",
        f"KvGetMany, {MANY_PER_CALL} keys per call, {CONCURRENCY_HIGH} in flight",
        ["echo (same reply size)", "PoP KvGetMany"],
        [echo_keys_per_s, keys_per_s],
        "keys/s",
        goal=GETMANY_KEYS_PER_S_GOAL,
        goal_label="goal: 100k keys/s",
    )
    return BenchResult(
        rows=rows,
        details={"reply_bytes": len(reply), "duration_s": duration, "results": measured},
        plots=[plot],
        method=(
            f"Closed-loop `KvGetMany` of {MANY_PER_CALL} keys ({VALUE_BYTES}-byte values, "
            f"{MANY_REQUESTS} distinct requests cycled over {MANY_KEYS} keys) with "
            f"{CONCURRENCY_HIGH} calls in flight from a grpc.aio client process, on the same "
            f"one-PoP cluster, {context.pick(3, 1)} alternating round(s) of {duration:g} s per "
            f"side after {warmup:g} s warm-up. keys/s = calls/s x "
            f"{MANY_PER_CALL}. For scale, the echo server answers a message of the same size "
            f"as the PoP's reply ({len(reply):,} bytes; its request is that size too)."
        ),
    )
