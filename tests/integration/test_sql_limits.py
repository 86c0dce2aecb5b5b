"""D1's documented limits and error messages on a real cluster (issue 13): refused where a
query enters, at the PoP and at the origin, with a clear status and nothing changed; a
database that reaches its size stops growing; the worker binding raises D1's errors with
D1's prefixes; `edgectl d1 execute --json` prints wrangler's error shape.

One small cluster for the module (a tokyo PoP, the seed's delays on), with the databases'
size limit lowered to DATABASE_BYTES_MAX in its topology (a setting of the cluster, which is
why the shared cluster cannot serve); each test uses databases of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest

from edgectl.launcher import Cluster
from edgepop import sqldb
from tests.conftest import poll_until
from tests.integration.cli import cluster_up, edgectl, origin_and_pops, write_wrangler_worker
from tests.integration.test_sql import dump, new_database, query, rows
from tests.integration.workerclient import http_get

pytestmark = pytest.mark.cluster

DATABASE_BYTES_MAX = 4_000_000
NODES = ("tokyo-1", "origin")

# A worker that runs D1 calls that fail and answers what each raised.
ERRORS_HOST = "errors.workers.dev"
ERRORS_ENTRY = """
from pyodide.ffi import JsException
from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        db = self.env.DB
        if request.url.endswith("/many"):
            # As many local reads as one invocation may make, and one more.
            session = db.withSession("first-unconstrained")
            done = 0
            try:
                for _ in range(1001):
                    await session.prepare("SELECT 1").first()
                    done += 1
            except JsException as error:
                return Response.json({"done": done, "error": str(error)})
            return Response.json({"done": done})
        cases = {
            "no_table": lambda: db.prepare("SELECT * FROM nope").all(),
            "type": lambda: db.prepare("INSERT INTO t (v) VALUES (?)").bind({"a": 1}).run(),
            "column": lambda: db.prepare("SELECT v FROM t").first("missing"),
            "exec": lambda: db.exec("INSERT INTO t (v) VALUES ('x');\\nINSERTZ INTO t VALUES (1)"),
            "wide": lambda: db.exec(
                "CREATE TABLE wide (" + ", ".join(f"c{i}" for i in range(101)) + ")"
            ),
            "too_big": lambda: db.prepare("INSERT INTO t (v) VALUES (randomblob(2000001))").run(),
        }
        raised = {}
        for name, call in cases.items():
            try:
                await call()
                raised[name] = None
            except JsException as error:
                raised[name] = {"message": str(error), "name": error.name}
        count = await db.prepare("SELECT count(*) AS n FROM t").first("n")
        return Response.json({"raised": raised, "rows": count})
"""
ERRORS_WRANGLER = {
    "name": "errors",
    "main": "src/entry.py",
    "d1_databases": [{"binding": "DB", "database_name": "errors", "database_id": "local"}],
    # A thousand queries take more than the default 50 ms of CPU.
    "limits": {"cpu_ms": 30_000},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("sql-limits")
    worker = write_wrangler_worker(directory / "errors", ERRORS_WRANGLER, ERRORS_ENTRY)
    topology = origin_and_pops("tokyo", sql={"database_bytes_max": DATABASE_BYTES_MAX})
    with cluster_up(directory, topology, [worker]) as (cluster, _):
        yield cluster


def replica_matches(cluster: Cluster, database: str) -> bool:
    primary = dump(cluster, "origin", database)
    try:
        copy = dump(cluster, "tokyo-1", database)
    except grpc.RpcError:  # not created there yet
        return False
    return (copy.dump, copy.applied_seq) == (primary.dump, primary.applied_seq)


def refused(
    cluster: Cluster, node: str, database: str, *statements: object, session: str = "none"
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        query(cluster, node, database, *statements, session=session)
    return raised.value


def test_each_limit_is_refused_at_the_pop_and_the_origin_and_changes_nothing(
    cluster: Cluster,
) -> None:
    database = new_database(cluster)
    query(
        cluster, "origin", database, "CREATE TABLE t (a, b)", f"CREATE TABLE hundred ({cols(100)})"
    )
    poll_until(lambda: replica_matches(cluster, database), timeout=10, what="the replica")
    before = dump(cluster, "origin", database)
    half = sqldb.VALUE_BYTES_MAX // 2 + 10
    cases: list[tuple[object, str]] = [
        ("SELECT 1" + " " * sqldb.SQL_BYTES_MAX, "D1_ERROR: statement too long"),
        (("SELECT 1", tuple(range(101))), "D1_ERROR: too many SQL variables"),
        (("SELECT ?", ("x" * (sqldb.VALUE_BYTES_MAX + 1),)), "D1_ERROR: string or blob too big"),
        (f"CREATE TABLE wide ({cols(101)})", "D1_ERROR: too many columns on wide"),
        ("ALTER TABLE hundred ADD COLUMN c100", "D1_ERROR: too many columns"),
        (
            f"INSERT INTO t VALUES (randomblob({half}), randomblob({half}))",
            "D1_ERROR: string or blob too big",
        ),
        ("SELECT max(" + ", ".join(["1"] * 33) + ")", "D1_ERROR: too many arguments on function"),
        ("SELECT 'a' LIKE '" + "a" * 51 + "'", "D1_ERROR: LIKE or GLOB pattern too complex"),
    ]
    for node in NODES:
        for statement, message in cases:
            # Behind a write that would succeed: the whole query is refused.
            error = refused(cluster, node, database, "INSERT INTO t VALUES (1, 2)", statement)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (node, error.details())
            assert (error.details() or "").startswith(message), (node, error.details())
    # A read at the replica holds the same limits as one at the primary.
    error = refused(
        cluster,
        "tokyo-1",
        database,
        f"SELECT randomblob({sqldb.VALUE_BYTES_MAX + 1})",
        session="unconstrained",
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "VALUE_BYTES_MAX" in (error.details() or "")
    after = dump(cluster, "origin", database)
    assert (after.dump, after.applied_seq) == (before.dump, before.applied_seq)
    assert replica_matches(cluster, database)


def cols(count: int) -> str:
    return ", ".join(f"c{index}" for index in range(count))


def test_a_database_stops_growing_at_its_size_and_serves_on(cluster: Cluster) -> None:
    database = new_database(cluster)
    query(cluster, "origin", database, "CREATE TABLE blobs (id INTEGER PRIMARY KEY, v BLOB)")
    insert = ("INSERT INTO blobs (v) VALUES (randomblob(?))", (400_000,))
    written = 0
    while True:
        try:
            response, _ = query(cluster, "tokyo-1", database, insert)
        except grpc.RpcError as error:
            full = error
            break
        assert response.results[0].meta.size_after <= DATABASE_BYTES_MAX
        written += 1
        assert written < DATABASE_BYTES_MAX // 400_000, "the database grew past its limit"
    assert written >= 5
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (full.details() or "").startswith("D1_ERROR: database or disk is full")
    assert "DATABASE_BYTES_MAX" in (full.details() or "")
    poll_until(lambda: replica_matches(cluster, database), timeout=10, what="the replica")
    before = dump(cluster, "origin", database)
    error = refused(cluster, "origin", database, "DELETE FROM blobs WHERE id = 1", insert, insert)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = dump(cluster, "origin", database)
    assert (after.dump, after.applied_seq) == (before.dump, before.applied_seq)
    # Reads go on; a delete makes room that a write may take again.
    counted, _ = query(cluster, "tokyo-1", database, "SELECT count(*) AS n FROM blobs")
    assert rows(counted) == [{"n": written}]
    query(cluster, "tokyo-1", database, "DELETE FROM blobs WHERE id = 1")
    query(cluster, "tokyo-1", database, insert)
    poll_until(lambda: replica_matches(cluster, database), timeout=10, what="the replica")


def errors_worker(cluster: Cluster, path: str) -> tuple[int, str]:
    return http_get(cluster.node("tokyo-1").http_address, ERRORS_HOST, path, timeout_s=30)


def test_a_worker_sees_d1s_errors_with_d1s_prefixes(cluster: Cluster) -> None:
    assert edgectl(cluster.data_dir, "d1", "create", "errors").returncode == 0
    query(cluster, "origin", "errors", "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    query(cluster, "origin", "errors", "INSERT INTO t (v) VALUES ('kept')")
    before = dump(cluster, "origin", "errors")
    status, text = errors_worker(cluster, "/")
    assert status == 200, text
    answer = json.loads(text)
    raised = {name: case["message"] for name, case in answer["raised"].items()}
    assert {case["name"] for case in answer["raised"].values()} == {"Error"}
    assert raised["no_table"] == "D1_ERROR: no such table: nope: SQLITE_ERROR"
    assert raised["type"].startswith("D1_TYPE_ERROR: Type 'dict' not supported for value")
    assert raised["column"] == "D1_COLUMN_NOTFOUND: Column not found (missing)"
    assert raised["exec"].startswith(
        'D1_EXEC_ERROR: Error in line 2: INSERTZ INTO t VALUES (1): near "INSERTZ": syntax error'
    )
    assert raised["wide"].startswith("D1_EXEC_ERROR: Error in line 1: CREATE TABLE wide")
    assert "too many columns on wide" in raised["wide"]
    assert raised["too_big"].startswith("D1_ERROR: string or blob too big")
    assert answer["rows"] == 1  # exec's first statement went with its second
    after = dump(cluster, "origin", "errors")
    assert (after.dump, after.applied_seq) == (before.dump, before.applied_seq)


def test_an_invocation_makes_at_most_1000_d1_queries(cluster: Cluster) -> None:
    if edgectl(cluster.data_dir, "d1", "create", "errors").returncode == 0:
        query(cluster, "origin", "errors", "CREATE TABLE t (id INTEGER PRIMARY KEY, v)")
    # Read at tokyo's own replica once it has the database (else the primary answers,
    # 170 ms away, a thousand times).
    poll_until(lambda: replica_matches(cluster, "errors"), timeout=10, what="the replica")
    status, text = errors_worker(cluster, "/many")
    assert status == 200, text
    answer = json.loads(text)
    assert answer["done"] == sqldb.QUERIES_PER_INVOCATION_MAX
    assert answer["error"].startswith("D1_ERROR: Too many API requests by single worker")
    # The next invocation counts from zero.
    assert json.loads(errors_worker(cluster, "/many")[1])["done"] == 1000


def test_edgectl_execute_json_prints_the_error_and_exits_1(cluster: Cluster) -> None:
    database = new_database(cluster)
    failed = edgectl(
        cluster.data_dir, "d1", "execute", database, "--command", "SELECT * FROM nope", "--json"
    )
    assert failed.returncode == 1
    printed = json.loads(failed.stdout)
    assert printed["error"]["text"] == "D1_ERROR: no such table: nope: SQLITE_ERROR"
    assert printed["error"]["code"] == "INVALID_ARGUMENT"
    assert printed["error"]["kind"] == "error"
    wide = edgectl(
        cluster.data_dir,
        "d1",
        "execute",
        database,
        "--command",
        f"CREATE TABLE wide ({cols(101)})",
        "--json",
    )
    assert wide.returncode == 1
    assert json.loads(wide.stdout)["error"]["text"].startswith("D1_ERROR: too many columns")
    missing = edgectl(
        cluster.data_dir, "d1", "execute", "no-such-db", "--command", "SELECT 1", "--json"
    )
    assert missing.returncode == 1
    assert json.loads(missing.stdout)["error"]["code"] == "NOT_FOUND"
    # Without --json: the message on stderr, exit 1.
    human = edgectl(cluster.data_dir, "d1", "execute", database, "--command", "SELECT * FROM nope")
    assert human.returncode == 1 and "D1_ERROR: no such table: nope" in human.stderr
