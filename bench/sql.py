"""SQL databases (D1-style): where a read is served, what a durable write costs, and how
fast rows reach every replica.

- Point reads from tokyo on the default cluster (the seed's delays): a client in tokyo asks
  tokyo-1 for one row, in a session (`first-unconstrained`: tokyo's replica) and outside
  one (the primary in us-east-1), alternately.
- Writes/s at the primary (Origin.SqlQuery, one single-row INSERT per call, 1 and 16 in
  flight) against bare SQLite on the same disk with the same settings (WAL,
  synchronous=FULL, one INSERT per transaction, one writer), side by side.
- Replication: INSERTs of 500 rows per call at the primary for a while, on the default
  topology without delays (12 PoPs); rows/s counted when the slowest replica holds them.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import apsw
import grpc

from bench import kv_reads, network, replication
from bench.echo import ECHO_METHOD
from bench.loadgen import UnaryLoad, UnaryResult, closed_loop
from bench.runner import BenchResult, Context
from bench.stats import Goal, Row, percentile
from edge.v1 import origin_pb2_grpc, pop_pb2_grpc, sql_pb2
from edgectl.launcher import Cluster
from edgepop import sqldb
from edgepop.netem import REGION_HEADER

READ_REGION = "tokyo"
READ_POP = "tokyo-1"
WRITE_RATIO_GOAL = 0.5
WRITE_CONCURRENCY = 16
ROWS_PER_CALL = 500
ROW_BYTES = 100
QUERY_METHOD = "/edge.v1.Origin/SqlQuery"


def _statement(sql: str) -> sql_pb2.SqlStatement:
    return sql_pb2.SqlStatement(sql=sql)


async def _create(cluster: Cluster, *setup: str) -> tuple[str, str]:
    """A new database with `setup` run at the primary: (its name, the setup's bookmark)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(cluster.origin.grpc_address) as channel:
        origin = origin_pb2_grpc.OriginStub(channel)
        await origin.SqlCreate(sql_pb2.SqlCreateRequest(name=name), timeout=10)
        done = await origin.SqlQuery(
            sql_pb2.SqlQueryRequest(database=name, statements=[_statement(s) for s in setup]),
            timeout=10,
        )
    return name, done.bookmark


async def _point_reads(cluster: Cluster, database: str, calls: int) -> dict[str, list[float]]:
    """Alternate session and session-less point reads from tokyo; seconds per call."""
    metadata = ((REGION_HEADER, READ_REGION),)
    request = {
        session: sql_pb2.SqlQueryRequest(
            database=database,
            statements=[_statement("SELECT v FROM t WHERE id = 1")],
            session=session,
        )
        for session in (sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED, sql_pb2.SQL_SESSION_UNSPECIFIED)
    }
    times: dict[str, list[float]] = {"replica": [], "primary": []}
    async with grpc.aio.insecure_channel(cluster.node(READ_POP).grpc_address) as channel:
        pop = pop_pb2_grpc.PopStub(channel)
        for _ in range(calls):
            for session, where in (
                (sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED, "replica"),
                (sql_pb2.SQL_SESSION_UNSPECIFIED, "primary"),
            ):
                started = time.perf_counter()
                got = await pop.SqlQuery(request[session], metadata=metadata, timeout=10)
                times[where].append(time.perf_counter() - started)
                if got.results[0].meta.served_by_primary != (where == "primary"):
                    raise RuntimeError(f"a {where} read was served elsewhere")
    return times


def bare_sqlite_writes(duration_s: float) -> dict[str, float]:
    """Single-row INSERTs, one per transaction, WAL + synchronous=FULL (in a load-generator
    process)."""
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-", dir=".") as directory:
        connection = apsw.Connection(str(Path(directory) / "bare.sqlite"))
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < duration_s:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("INSERT INTO t (v) VALUES (randomblob(100))")
            connection.execute("COMMIT")
            count += 1
        elapsed = time.perf_counter() - started
        connection.close()
    return {"writes": count, "elapsed_s": elapsed, "rate_per_s": count / elapsed}


async def _replicate_rows(cluster: Cluster, database: str, duration_s: float) -> dict[str, Any]:
    """Bulk INSERTs at the primary for `duration_s` (2 in flight); then the time until
    every PoP's replica holds all the rows."""
    insert = sql_pb2.SqlQueryRequest(
        database=database,
        statements=[
            _statement(
                "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n "
                f"WHERE x < {ROWS_PER_CALL}) INSERT INTO rows_in (v) "
                f"SELECT randomblob({ROW_BYTES}) FROM n"
            )
        ],
    )
    calls = 0
    started = time.perf_counter()
    async with grpc.aio.insecure_channel(cluster.origin.grpc_address) as channel:
        origin = origin_pb2_grpc.OriginStub(channel)

        async def writer() -> None:
            nonlocal calls
            while time.perf_counter() - started < duration_s:
                await origin.SqlQuery(insert, timeout=30)
                calls += 1

        await asyncio.gather(writer(), writer())
    written_s = time.perf_counter() - started
    total = calls * ROWS_PER_CALL
    count = sql_pb2.SqlQueryRequest(
        database=database,
        statements=[_statement("SELECT count(*) FROM rows_in")],
        session=sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED,
    )
    held_after: dict[str, float] = {}
    for pop in cluster.pops:
        async with grpc.aio.insecure_channel(pop.grpc_address) as channel:
            stub = pop_pb2_grpc.PopStub(channel)
            while True:
                got = await stub.SqlQuery(count, timeout=30)
                if got.results[0].rows and got.results[0].rows[0].values[0].integer >= total:
                    break
                if time.perf_counter() - started > duration_s + 120:
                    raise RuntimeError(f"{pop.name} did not catch up")
                await asyncio.sleep(0.02)
        held_after[pop.name] = time.perf_counter() - started
    slowest = max(held_after.values())
    return {
        "rows": total,
        "written_s": written_s,
        "acked_rows_per_s": total / written_s,
        "held_after_s": held_after,
        "rows_per_s_every_pop": total / slowest,
    }


async def run_sql(context: Context) -> BenchResult:
    calls = context.pick(40, 5)
    delayed = await context.cluster(network.DEFAULT_KEY, None)
    reads_db, reads_bookmark = await _create(
        delayed,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t (v) VALUES ('hello from us-east-1')",
    )
    # The replica must hold the table and its row before its reads count (a SQL commit is
    # in a PoP's replicas once its applied seq reaches it).
    await replication.wait_caught_up(delayed, sqldb.parse_bookmark(reads_bookmark))
    reads = await context.ui.step(
        f"point reads from {READ_REGION}", _point_reads(delayed, reads_db, calls)
    )
    await context.release(network.DEFAULT_KEY)

    # The primary's own cost: a cluster of one PoP (the replication row uses twelve).
    single = await context.cluster(kv_reads.SINGLE_POP_KEY, kv_reads.SINGLE_POP_TOPOLOGY)
    writes_db, _ = await _create(single, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    duration = context.pick(5.0, 1.5)
    payload = sql_pb2.SqlQueryRequest(
        database=writes_db,
        statements=[_statement("INSERT INTO t (v) VALUES (randomblob(100))")],
    ).SerializeToString()
    primary: dict[int, UnaryResult] = {}
    for in_flight in (1, WRITE_CONCURRENCY):
        primary[in_flight] = await context.ui.timed(
            f"primary writes, {in_flight} in flight",
            duration,
            context.in_loadgen(
                closed_loop,
                UnaryLoad(
                    single.origin.grpc_address,
                    QUERY_METHOD,
                    (payload,),
                    in_flight,
                    duration,
                    warmup_s=0.3,
                    server_pid=single.origin.pid,
                ),
            ),
        )
    bare = await context.ui.timed(
        "bare SQLite writes", duration, context.in_loadgen(bare_sqlite_writes, duration)
    )
    # The RPC alone: what any write through Python gRPC can reach on this machine.
    echo = await kv_reads.echo_server(context)
    echo_result = await context.ui.timed(
        f"gRPC echo, {WRITE_CONCURRENCY} in flight",
        duration,
        context.in_loadgen(
            closed_loop,
            UnaryLoad(
                echo.address, ECHO_METHOD, (payload,), WRITE_CONCURRENCY, duration, 0.3, echo.pid
            ),
        ),
    )
    await context.release(kv_reads.SINGLE_POP_KEY)
    nodelay = await replication.default_nodelay(context)
    rows_db, _ = await _create(nodelay, "CREATE TABLE rows_in (id INTEGER PRIMARY KEY, v BLOB)")
    replicated = await context.ui.timed(
        f"{ROWS_PER_CALL}-row INSERTs to {len(nodelay.pops)} PoPs",
        context.pick(8.0, 2.0),
        _replicate_rows(nodelay, rows_db, context.pick(8.0, 2.0)),
    )

    replica_ms = statistics.median(reads["replica"]) * 1e3
    primary_ms = statistics.median(reads["primary"]) * 1e3
    rows = [
        Row(
            "sql",
            f"point read from {READ_REGION}: {READ_POP}'s replica p50 (vs the primary, "
            "outside a session)",
            "ms",
            value=replica_ms,
            baseline=primary_ms,
            baseline_name="primary",
            note=f"p99 {percentile(reads['replica'], 0.99) * 1e3:.1f} vs "
            f"{percentile(reads['primary'], 0.99) * 1e3:.1f} ms; {calls} each",
        ),
        Row(
            "sql",
            "writes/s at the primary, 1 in flight (vs bare SQLite, WAL, synchronous=FULL)",
            "writes/s",
            value=primary[1].rate_per_s,
            baseline=bare["rate_per_s"],
            baseline_name="bare SQLite",
            note=f"p50 {primary[1].latency_s['p50'] * 1e3:.2f} ms; origin CPU "
            f"{primary[1].server_cpu_per_call_us:.0f} us/write",
        ),
        Row(
            "sql",
            f"writes/s at the primary, {WRITE_CONCURRENCY} in flight (vs bare SQLite)",
            "writes/s",
            value=primary[WRITE_CONCURRENCY].rate_per_s,
            baseline=bare["rate_per_s"],
            baseline_name="bare SQLite",
            goal=Goal(">=", WRITE_RATIO_GOAL, on="ratio"),
            note=f"p50 {primary[WRITE_CONCURRENCY].latency_s['p50'] * 1e3:.2f} ms",
        ),
        Row(
            "sql",
            f"writes/s at the primary, {WRITE_CONCURRENCY} in flight (vs a bare gRPC echo "
            "server: the RPC's own ceiling)",
            "writes/s",
            value=primary[WRITE_CONCURRENCY].rate_per_s,
            baseline=echo_result.rate_per_s,
            baseline_name="echo",
            note="same request bytes, same client",
        ),
        Row(
            "sql",
            f"rows/s held by every one of {len(nodelay.pops)} replicas ({ROWS_PER_CALL}-row "
            "INSERTs)",
            "rows/s",
            value=replicated["rows_per_s_every_pop"],
            note=f"{replicated['rows']:,} rows; acked by the primary at "
            f"{replicated['acked_rows_per_s']:,.0f}/s",
        ),
    ]
    return BenchResult(
        rows=rows,
        details={
            "reads_s": {where: sorted(values) for where, values in reads.items()},
            "primary_writes": {str(k): v.__dict__ for k, v in primary.items()},
            "bare_sqlite": bare,
            "echo": echo_result.__dict__,
            "replication": replicated,
        },
        method=(
            f"**Point reads**: a gRPC client in {READ_REGION} (`x-edge-region`) asks "
            f"{READ_POP} for one row of a one-row table, {calls} times in a session "
            "(`first-unconstrained`, served by the PoP's replica) and as often outside one "
            "(forwarded to the primary at the origin), alternately, on the default cluster "
            "with the seed's delays. **Writes**: `Origin.SqlQuery` with one "
            "`INSERT ... randomblob(100)` per call, closed loop from a client process with 1 "
            f"and {WRITE_CONCURRENCY} calls in flight, {duration:g} s each, on a cluster of one "
            "PoP without delays (the primary's own cost; fan-out is the replication row's); "
            "baseline in the same run: a "
            "process doing the same INSERT in its own transaction on a SQLite file in WAL "
            "mode with synchronous=FULL on the same disk, one writer, as fast as it can; "
            "and a bare grpc.aio echo server sent the same request bytes (the RPC's "
            "ceiling). "
            f"**Replication**: `INSERT ... SELECT` of {ROWS_PER_CALL} rows of {ROW_BYTES} "
            "random bytes per call, 2 calls in flight, then each PoP is polled until its "
            "replica counts every row; rows/s = rows / time until the slowest held them."
        ),
    )
