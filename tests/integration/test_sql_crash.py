"""SQL databases under a seeded workload with kill -9 of a PoP and of the origin.

5,000 statements (inserts, updates, deletes, schema changes, multi-statement
transactions) from one seeded generator, each request marked by a row in `acks` in the
same transaction. A PoP is killed mid-workload and restarted; then the origin. Every
request is retried with its request id until it is answered, so each must apply exactly
once: at the end every acknowledged request's mark is at the primary, once, and the
primary and every replica dump identically.
"""

from __future__ import annotations

import random
import threading
import time
import uuid

import grpc
import pytest

from edge.v1 import sql_pb2
from edgectl.launcher import Cluster
from edgepop import sqldb
from tests.conftest import FAST_TOPOLOGY, ClusterFactory, poll_until
from tests.integration.kvclient import auth, metric_value, origin_stub, pop_stub

pytestmark = pytest.mark.cluster

SEED = 20261204
STATEMENTS = 5_000
RETRY_FOR_S = 60.0


class Workload:
    """A seeded stream of requests over a few tables whose shapes it tracks."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tables = {"t0": ["n", "s"]}
        self.request_index = 0

    def setup(self) -> list[str]:
        return [
            "CREATE TABLE acks (rid TEXT PRIMARY KEY)",
            "CREATE TABLE t0 (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, s TEXT)",
        ]

    def _statement(self) -> str:
        rng = self.rng
        table = rng.choice(sorted(self.tables))
        columns = self.tables[table]
        roll = rng.random()
        if roll < 0.45:
            return f"INSERT INTO {table} (n, s) VALUES ({rng.randint(0, 99)}, '{rng.random():.6f}')"
        if roll < 0.65:
            column = rng.choice(columns)
            value = rng.randint(0, 99) if column != "s" else f"'{rng.randint(0, 9)}'"
            return f"UPDATE {table} SET {column} = {value} WHERE n % {rng.randint(3, 9)} = 0"
        if roll < 0.8:
            return f"DELETE FROM {table} WHERE n = {rng.randint(0, 99)}"
        if roll < 0.84 and len(self.tables) < 6:
            name = f"t{len(self.tables)}"
            self.tables[name] = ["n", "s"]
            return f"CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, s TEXT)"
        if roll < 0.88 and len(columns) < 6:
            column = f"c{len(columns)}"
            columns.append(column)
            return f"ALTER TABLE {table} ADD COLUMN {column} INTEGER DEFAULT {rng.randint(0, 9)}"
        if roll < 0.92:
            return f"CREATE INDEX IF NOT EXISTS {table}_n ON {table} (n)"
        return f"INSERT INTO {table} (n, s) SELECT n + 1, s FROM {table} WHERE n < 5 LIMIT 3"

    def request(self) -> tuple[str, list[str]]:
        """(request id, statements): 1-8 statements and the request's mark, one transaction."""
        self.request_index += 1
        rid = f"r{self.request_index:05d}"
        statements = [self._statement() for _ in range(self.rng.randint(1, 8))]
        return rid, [*statements, f"INSERT INTO acks VALUES ('{rid}')"]


def send(cluster: Cluster, database: str, statements: list[str], request_id: str) -> str:
    """At the origin, retried (same request id) through kills until answered; the bookmark."""
    request = sql_pb2.SqlQueryRequest(
        database=database,
        statements=[sql_pb2.SqlStatement(sql=sql) for sql in statements],
        request_id=request_id,
    )
    deadline = time.monotonic() + RETRY_FOR_S
    while True:
        try:
            with origin_stub(cluster) as stub:
                return str(stub.SqlQuery(request, timeout=5).bookmark)
        except grpc.RpcError as error:
            retriable = error.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
            if not retriable or time.monotonic() > deadline:
                raise


def dump(cluster: Cluster, node: str, database: str) -> tuple[str, int]:
    request = sql_pb2.SqlDumpRequest(database=database)
    try:
        if node == "origin":
            with origin_stub(cluster) as stub:
                got = stub.SqlDump(request, metadata=auth(cluster), timeout=10)
        else:
            with pop_stub(cluster, node) as stub:
                got = stub.SqlDump(request, metadata=auth(cluster), timeout=10)
    except grpc.RpcError:
        return "", -1
    return got.dump, got.applied_seq


def test_a_seeded_workload_survives_kills_exactly_once(cluster_factory: ClusterFactory) -> None:
    cluster = cluster_factory(FAST_TOPOLOGY)
    database = f"crash-{uuid.uuid4().hex[:8]}"
    with origin_stub(cluster) as stub:
        stub.SqlCreate(sql_pb2.SqlCreateRequest(name=database), timeout=10)
    workload = Workload(SEED)
    send(cluster, database, workload.setup(), uuid.uuid4().hex)
    pops = [node.name for node in cluster.pops]
    victim = pops[0]
    acknowledged: list[str] = []
    refused: list[str] = []
    progress = {"sent": 0}
    done = threading.Event()

    def faults() -> None:
        # From another thread, so a kill lands while a request is in flight.
        schedule = (
            (1_000, "kill pop"),
            (1_800, "start pop"),
            (2_600, "origin"),
            (3_400, "origin"),
            (4_200, "origin"),
        )
        for threshold, fault in schedule:
            while progress["sent"] < threshold and not done.is_set():
                time.sleep(0.005)
            if done.is_set():
                return
            if fault == "kill pop":
                cluster.kill(victim)
            elif fault == "start pop":
                cluster.start(victim)
            else:
                cluster.kill("origin")
                cluster.start("origin")

    injector = threading.Thread(target=faults, daemon=True)
    injector.start()
    try:
        while progress["sent"] < STATEMENTS:
            rid, statements = workload.request()
            progress["sent"] += len(statements)
            try:
                send(cluster, database, statements, rid)
            except grpc.RpcError as error:
                # A statement the state refuses (deterministic): the request rolls back.
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
                refused.append(rid)
            else:
                acknowledged.append(rid)
    finally:
        done.set()
        injector.join(timeout=60)
    assert len(acknowledged) > 0.8 * workload.request_index, (len(acknowledged), len(refused))

    with origin_stub(cluster) as stub:
        marks = stub.SqlQuery(
            sql_pb2.SqlQueryRequest(
                database=database,
                statements=[sql_pb2.SqlStatement(sql="SELECT rid FROM acks ORDER BY rid")],
            ),
            timeout=10,
        )
    held = [row["rid"] for row in sqldb.result_dicts(marks.results[0])]
    assert held == sorted(acknowledged)  # every acknowledged request once, no refused one

    def identical() -> bool:
        primary = dump(cluster, "origin", database)
        return all(dump(cluster, node, database) == primary for node in pops)

    try:
        poll_until(identical, timeout=30, what="every replica to dump like the primary")
    except AssertionError:
        primary, primary_seq = dump(cluster, "origin", database)
        for node in pops:
            copy, seq = dump(cluster, node, database)
            if copy != primary:
                first = next(
                    (
                        pair
                        for pair in zip(primary.splitlines(), copy.splitlines(), strict=False)
                        if pair[0] != pair[1]
                    ),
                    None,
                )
                raise AssertionError(
                    f"{node} at seq {seq} (primary {primary_seq}); first difference {first}"
                ) from None
        raise


def test_a_pop_behind_the_log_gets_its_databases_in_the_snapshot(
    cluster_factory: ClusterFactory,
) -> None:
    # A short log: a PoP stopped while more than this was written gets a snapshot.
    cluster = cluster_factory(
        {
            "emulate_delay": False,
            "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 1}],
        },
        role_args={"origin": ["--log-retain-entries", "20"]},
    )
    pop = cluster.pops[0].name
    with origin_stub(cluster) as stub:
        for name in ("snap-a", "snap-b"):
            stub.SqlCreate(sql_pb2.SqlCreateRequest(name=name), timeout=10)
    send(cluster, "snap-a", ["CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, v)"], "a0")
    send(cluster, "snap-a", ["INSERT INTO t (v) VALUES ('before')"], "a1")

    def caught_up(database: str) -> bool:
        return dump(cluster, pop, database) == dump(cluster, "origin", database)

    poll_until(lambda: caught_up("snap-a"), timeout=10, what="the replica")
    cluster.stop(pop)
    # More than the log keeps, to both databases, with a schema change and large rows (3 MB
    # in all, so the image comes in several pieces; a row is at most 2 MB, D1's limit).
    send(cluster, "snap-b", ["CREATE TABLE big (v BLOB)"], "b0")
    for index in range(30):
        send(cluster, "snap-a", [f"INSERT INTO t (v) VALUES ('w{index}')"], f"a-{index}")
    send(
        cluster,
        "snap-b",
        ["INSERT INTO big VALUES (randomblob(1500000)), (randomblob(1500000))"],
        "b1",
    )
    send(cluster, "snap-a", ["ALTER TABLE t ADD COLUMN extra DEFAULT 7"], "a2")
    cluster.start(pop)
    for database in ("snap-a", "snap-b"):
        poll_until(lambda d=database: caught_up(d), timeout=20, what=f"{database} at {pop}")
    assert metric_value(cluster, pop, "edge_kv_snapshots_total") >= 1
    # And it keeps replaying from there.
    send(cluster, "snap-a", ["INSERT INTO t (v) VALUES ('after')"], "a3")
    poll_until(lambda: caught_up("snap-a"), timeout=10, what="replay after the snapshot")
