"""SQL databases (D1-style) on a real cluster: the primary at the origin, a replica at each
PoP fed through the replication log, sessions ordered by bookmarks.

One cluster (tokyo and sydney PoPs, the seed's delays on) for the module; each test uses
databases of its own. The partition test heals what it breaks.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.v1 import sql_pb2
from edgectl.launcher import Cluster
from edgepop import sqldb
from tests.conftest import poll_until
from tests.integration.cli import (
    cluster_up,
    edgectl,
    edgectl_json,
    origin_and_pops,
    write_wrangler_worker,
)
from tests.integration.kvclient import auth, metric_value, origin_stub, pop_stub
from tests.integration.workerclient import http_get

pytestmark = pytest.mark.cluster

POPS = ("tokyo-1", "sydney-1")
SESSION = {
    "none": sql_pb2.SQL_SESSION_UNSPECIFIED,
    "unconstrained": sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED,
    "primary": sql_pb2.SQL_SESSION_FIRST_PRIMARY,
    "bookmark": sql_pb2.SQL_SESSION_BOOKMARK,
}


# A worker on D1's binding API (prepare/bind/all/first/raw/run, batch, exec, withSession).
SHOP_HOST = "shop.workers.dev"
SHOP_ENTRY = """
import json
from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        db = self.env.DB
        if url.path == "/setup":
            done = await db.exec(
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT UNIQUE, qty INTEGER);"
                "CREATE INDEX items_qty ON items (qty)"
            )
            return Response.json({"count": done.count})
        if url.path == "/add":
            added = await db.prepare("INSERT INTO items (name, qty) VALUES (?, ?)").bind(
                query["name"], int(query["qty"])
            ).run()
            return Response.json({"id": added.meta.last_row_id, "bookmark": added.meta["bookmark"]})
        if url.path == "/batch":
            try:
                await db.batch([
                    db.prepare("INSERT INTO items (name, qty) VALUES (?, ?)").bind("pear", 1),
                    db.prepare("INSERT INTO items (name, qty) VALUES (?, ?)").bind("apple", 2),
                ])
            except Exception as error:
                return Response(str(error), status=409)
            return Response("committed")
        session = db.withSession(request.headers.get("x-d1-bookmark") or "first-unconstrained")
        before = session.getBookmark()
        listed = await session.prepare("SELECT name, qty FROM items ORDER BY id").all()
        count = await session.prepare("SELECT count(*) AS n FROM items").first("n")
        first = await session.prepare("SELECT name FROM items WHERE qty > ?").bind(100).first()
        raw = await session.prepare("SELECT name, qty FROM items ORDER BY id").raw(columnNames=True)
        return Response.json({
            "before": before,
            "rows": listed.results,
            "count": count,
            "none": first,
            "raw": raw,
            "primary": listed.meta.served_by_primary,
            "region": listed.meta.served_by_region,
            "bookmark": session.getBookmark(),
        })
"""
SHOP_WRANGLER = {
    "name": "shop",
    "main": "src/entry.py",
    "d1_databases": [{"binding": "DB", "database_name": "shop", "database_id": "local"}],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("sql")
    worker = write_wrangler_worker(directory / "shop", SHOP_WRANGLER, SHOP_ENTRY)
    with cluster_up(directory, origin_and_pops("tokyo", "sydney"), [worker]) as (cluster, _):
        yield cluster


def new_database(cluster: Cluster) -> str:
    name = f"db-{uuid.uuid4().hex[:10]}"
    created = edgectl_json(cluster.data_dir, "d1", "create", name)
    assert created["name"] == name and created["uuid"]
    return name


def query(
    cluster: Cluster,
    node: str,
    database: str,
    *statements: str | tuple[str, tuple[object, ...]],
    session: str = "none",
    bookmark: str = "",
) -> tuple[sql_pb2.SqlQueryResponse, float]:
    """Statements (SQL, or (SQL, params)) at one PoP, or "origin"; (response, seconds)."""
    request = sql_pb2.SqlQueryRequest(
        database=database, session=SESSION[session], bookmark=bookmark
    )
    for statement in statements:
        sql, params = statement if isinstance(statement, tuple) else (statement, ())
        request.statements.append(
            sql_pb2.SqlStatement(sql=sql, params=[sqldb.to_value(p) for p in params])
        )
    started = time.perf_counter()
    if node == "origin":
        with origin_stub(cluster) as stub:
            response = stub.SqlQuery(request, timeout=10)
    else:
        with pop_stub(cluster, node) as stub:
            response = stub.SqlQuery(request, timeout=10)
    return response, time.perf_counter() - started


def rows(response: sql_pb2.SqlQueryResponse, index: int = -1) -> list[dict[str, object]]:
    return sqldb.result_dicts(response.results[index])


def dump(cluster: Cluster, node: str, database: str) -> sql_pb2.SqlDumpResponse:
    request = sql_pb2.SqlDumpRequest(database=database)
    if node == "origin":
        with origin_stub(cluster) as stub:
            return stub.SqlDump(request, metadata=auth(cluster), timeout=10)
    with pop_stub(cluster, node) as stub:
        return stub.SqlDump(request, metadata=auth(cluster), timeout=10)


def labelled(cluster: Cluster, node: str, metric: str, database: str) -> float:
    """The sum of a metric's samples for one database on one node."""
    address = cluster.node(node).metrics_address
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
        families = text_string_to_metric_families(response.read().decode())
        return sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == metric and sample.labels.get("database") == database
        )


def replicas_match(cluster: Cluster, database: str) -> bool:
    primary = dump(cluster, "origin", database)
    for node in POPS:
        try:
            copy = dump(cluster, node, database)
        except grpc.RpcError:  # not created there yet
            return False
        if (copy.dump, copy.applied_seq) != (primary.dump, primary.applied_seq):
            return False
    return True


def test_writes_reach_every_replica_which_dumps_like_the_primary(cluster: Cluster) -> None:
    database = new_database(cluster)
    response, _ = query(
        cluster,
        "tokyo-1",
        database,
        "CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT, at REAL)",
        ("INSERT INTO notes (body, at) VALUES (?, julianday('now'))", ("one",)),
        ("INSERT INTO notes (body, at) VALUES (?, random())", ("two",)),
        "CREATE INDEX notes_body ON notes (body)",
    )
    meta = response.results[1].meta
    assert meta.served_by_primary and meta.served_by_region == "us-east-1"
    assert meta.rows_written == 1 and meta.last_row_id == 1 and meta.changed_db
    poll_until(lambda: replicas_match(cluster, database), timeout=10, what="replicas")
    primary = dump(cluster, "origin", database)
    assert "notes_body" in primary.dump and "'two'" in primary.dump
    assert primary.applied_seq == sqldb.parse_bookmark(response.bookmark)
    listed = {entry["name"]: entry for entry in edgectl_json(cluster.data_dir, "d1", "list")}
    assert listed[database]["last_seq"] == primary.applied_seq
    for node in POPS:
        assert labelled(cluster, node, "edge_sql_replica_applied_seq", database) == (
            primary.applied_seq
        )


def test_a_bookmark_reads_its_write_anywhere_and_replicas_read_locally(cluster: Cluster) -> None:
    database = new_database(cluster)
    query(cluster, "sydney-1", database, "CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    written, _ = query(
        cluster, "sydney-1", database, ("INSERT INTO kv VALUES (?, ?)", ("colour", "blue"))
    )
    # At once, at the other side of the world: the session never reads older.
    read, _ = query(
        cluster,
        "tokyo-1",
        database,
        ("SELECT v FROM kv WHERE k = ?", ("colour",)),
        session="bookmark",
        bookmark=written.bookmark,
    )
    assert rows(read) == [{"v": "blue"}]
    assert read.bookmark >= written.bookmark
    # Once the replica holds it, reads in a session stay in tokyo: 8 ms, not 170.
    poll_until(lambda: replicas_match(cluster, database), timeout=10, what="replicas")
    local, local_s = query(
        cluster, "tokyo-1", database, "SELECT count(*) AS n FROM kv", session="unconstrained"
    )
    meta = local.results[0].meta
    assert not meta.served_by_primary and meta.served_by_region == "tokyo"
    assert meta.served_by == "tokyo-1" and rows(local) == [{"n": 1}]
    # Outside a session, and with first-primary, the primary answers (tokyo -> us-east-1).
    for session in ("none", "primary"):
        remote, remote_s = query(
            cluster, "tokyo-1", database, "SELECT count(*) AS n FROM kv", session=session
        )
        assert remote.results[0].meta.served_by_primary, session
        assert remote_s > local_s + 0.1, (session, remote_s, local_s)


def test_writes_in_a_session_go_to_the_primary_and_return_a_newer_bookmark(
    cluster: Cluster,
) -> None:
    database = new_database(cluster)
    first, _ = query(cluster, "tokyo-1", database, "CREATE TABLE t (n INTEGER)")
    second, _ = query(
        cluster,
        "tokyo-1",
        database,
        "INSERT INTO t VALUES (1)",
        session="bookmark",
        bookmark=first.bookmark,
    )
    assert second.results[0].meta.served_by_primary
    assert second.bookmark > first.bookmark
    after, _ = query(
        cluster,
        "sydney-1",
        database,
        "SELECT n FROM t",
        session="bookmark",
        bookmark=second.bookmark,
    )
    assert rows(after) == [{"n": 1}]


def test_bad_queries_get_clear_errors_and_change_nothing(cluster: Cluster) -> None:
    database = new_database(cluster)
    query(cluster, "tokyo-1", database, "CREATE TABLE u (v TEXT NOT NULL)")
    before = dump(cluster, "origin", database)
    cases = [
        (("SELEKT 1",), grpc.StatusCode.INVALID_ARGUMENT, 'D1_ERROR: near "SELEKT"'),
        (
            ("INSERT INTO u VALUES ('ok')", "INSERT INTO u VALUES (NULL)"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "NOT NULL constraint failed",
        ),
        (("DROP TABLE _edgepop_meta",), grpc.StatusCode.INVALID_ARGUMENT, "reserved"),
        (("BEGIN",), grpc.StatusCode.INVALID_ARGUMENT, "one transaction"),
        (("SELECT 1",) * 51, grpc.StatusCode.INVALID_ARGUMENT, "STATEMENTS_PER_QUERY_MAX"),
    ]
    for statements, code, message in cases:
        for node in ("tokyo-1", "origin"):
            with pytest.raises(grpc.RpcError) as raised:
                query(cluster, node, database, *statements)
            assert raised.value.code() == code, (statements, raised.value.details())
            assert message in (raised.value.details() or ""), raised.value.details()
    with pytest.raises(grpc.RpcError) as raised:
        query(cluster, "sydney-1", "no-such-db", "SELECT 1")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as raised:
        query(cluster, "sydney-1", database, "SELECT 1", session="bookmark", bookmark="x")
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    after = dump(cluster, "origin", database)
    assert (after.dump, after.applied_seq) == (before.dump, before.applied_seq)
    duplicate = edgectl(cluster.data_dir, "d1", "create", database)
    assert duplicate.returncode == 1 and "ALREADY_EXISTS" in duplicate.stderr


def test_a_partitioned_replica_serves_stale_reads_and_says_how_stale(cluster: Cluster) -> None:
    database = new_database(cluster)
    query(cluster, "origin", database, "CREATE TABLE c (n INTEGER)", "INSERT INTO c VALUES (1)")
    poll_until(lambda: replicas_match(cluster, database), timeout=10, what="replicas")
    data_dir = cluster.data_dir
    assert edgectl(data_dir, "net", "partition", "sydney", "us-east-1").returncode == 0
    try:
        updated, _ = query(cluster, "origin", database, "UPDATE c SET n = 2")
        stale, _ = query(cluster, "sydney-1", database, "SELECT n FROM c", session="unconstrained")
        assert rows(stale) == [{"n": 1}]  # first-unconstrained: whatever sydney holds
        assert not stale.results[0].meta.served_by_primary
        assert stale.bookmark < updated.bookmark
        lag = poll_until(
            lambda: (
                value
                if (value := metric_value(cluster, "sydney-1", "edge_kv_replication_lag_seconds"))
                > 1.0
                else None
            ),
            timeout=10,
            what="sydney's lag metric to grow",
        )
        assert lag > 1.0
        assert metric_value(cluster, "tokyo-1", "edge_kv_replication_lag_seconds") < 1.0
    finally:
        assert edgectl(data_dir, "net", "heal").returncode == 0
    poll_until(lambda: replicas_match(cluster, database), timeout=15, what="catch-up")
    fresh, _ = query(cluster, "sydney-1", database, "SELECT n FROM c", session="unconstrained")
    assert rows(fresh) == [{"n": 2}]
    assert labelled(cluster, "sydney-1", "edge_sql_queries_total", database) >= 2


def test_edgectl_d1_execute_prints_d1s_result_shape(cluster: Cluster, tmp_path: Path) -> None:
    database = new_database(cluster)
    script = tmp_path / "init.sql"
    script.write_text(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, quote TEXT);\n"
        "-- a comment, and a ';' inside a string\n"
        "INSERT INTO q (quote) VALUES ('a; b'), ('c');\n"
    )
    applied = edgectl_json(cluster.data_dir, "d1", "execute", database, "--file", str(script))
    assert [result["success"] for result in applied] == [True, True]
    assert applied[1]["meta"]["rows_written"] == 2
    bookmark = applied[1]["meta"]["bookmark"]
    read = edgectl_json(
        cluster.data_dir,
        "d1",
        "execute",
        database,
        "--command",
        "SELECT quote FROM q ORDER BY id",
        "--from",
        "sydney",
        "--bookmark",
        bookmark,
    )
    assert read[0]["results"] == [{"quote": "a; b"}, {"quote": "c"}]
    assert read[0]["meta"]["bookmark"] >= bookmark
    human = edgectl(
        cluster.data_dir, "d1", "execute", database, "--command", "SELECT count(*) FROM q"
    )
    assert human.returncode == 0 and "primary origin (us-east-1)" in human.stdout


def shop(cluster: Cluster, node: str, path: str, bookmark: str = "") -> tuple[int, str]:
    headers = {"x-d1-bookmark": bookmark} if bookmark else {}
    return http_get(cluster.node(node).http_address, SHOP_HOST, path, **headers)


def test_a_worker_uses_d1s_binding_api(cluster: Cluster) -> None:
    assert edgectl(cluster.data_dir, "d1", "create", "shop").returncode == 0
    assert shop(cluster, "tokyo-1", "/setup") == (200, '{"count": 2}')
    status, text = shop(cluster, "tokyo-1", "/add?name=fig&qty=3")
    assert status == 200, text
    added = json.loads(text)
    assert added["id"] == 1
    # A session started from the write's bookmark reads it at once, even in sydney.
    status, text = shop(cluster, "sydney-1", "/", bookmark=added["bookmark"])
    assert status == 200, text
    seen = json.loads(text)
    assert seen["before"] == added["bookmark"]
    assert seen["rows"] == [{"name": "fig", "qty": 3}] and seen["count"] == 1
    assert seen["none"] is None
    assert seen["raw"] == [["name", "qty"], ["fig", 3]]
    assert seen["bookmark"] >= added["bookmark"]
    # A batch is one transaction: run again, it fails on "pear" (UNIQUE) and leaves no
    # second "apple" behind.
    assert shop(cluster, "tokyo-1", "/batch") == (200, "committed")
    status, text = shop(cluster, "tokyo-1", "/batch")
    assert status == 409 and "UNIQUE constraint failed: items.name" in text
    status, text = shop(cluster, "tokyo-1", "/", bookmark=added["bookmark"])
    assert json.loads(text)["count"] == 3
    # Once caught up, a session's reads are served by the PoP's own replica.
    poll_until(lambda: replicas_match(cluster, "shop"), timeout=10, what="replicas")
    local = json.loads(shop(cluster, "sydney-1", "/")[1])
    assert local["primary"] is False and local["region"] == "sydney" and local["before"] is None


def test_migrations_apply_once_in_order_and_a_failing_one_leaves_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    database = new_database(cluster)
    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "0001_init.sql").write_text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);")
    (folder / "0002_seed.sql").write_text("INSERT INTO users (name) VALUES ('ada');")
    data_dir = cluster.data_dir
    applied = edgectl_json(data_dir, "d1", "migrations", "apply", database, str(folder))
    assert [entry["name"] for entry in applied] == ["0001_init.sql", "0002_seed.sql"]
    assert edgectl_json(data_dir, "d1", "migrations", "apply", database, str(folder)) == []
    (folder / "0003_email.sql").write_text("ALTER TABLE users ADD COLUMN email TEXT;")
    (folder / "0004_broken.sql").write_text(
        "UPDATE users SET email = 'a@b';\nINSERT INTO nowhere VALUES (1);"
    )
    failed = edgectl(data_dir, "d1", "migrations", "apply", database, str(folder))
    assert failed.returncode == 1 and "0004_broken.sql" in failed.stderr
    listed = edgectl_json(data_dir, "d1", "migrations", "list", database, str(folder))
    assert [entry["applied"] for entry in listed] == [True, True, True, False]
    emails, _ = query(cluster, "origin", database, "SELECT email FROM users")
    assert rows(emails) == [{"email": None}]  # 0004's UPDATE was rolled back with it
