"""SQLite-backed Durable Objects (`ctx.storage.sql`) on a real cluster: a raising
transactionSync leaves nothing behind, and kill -9 of the owner keeps every
acknowledged write (the new owner rebuilds the database from the replicated rows).

A worker in Cloudflare's shape (wrangler.jsonc, `new_sqlite_classes`), deployed at
cluster start; calls go over HTTP to the PoPs' ingress.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.cli import cluster_up, origin_and_pops, write_wrangler_worker
from tests.integration.objclient import call as object_call
from tests.integration.objclient import placement_of, result

pytestmark = pytest.mark.cluster

HOST = "notes.workers.dev"
NAMESPACE = "notes.Notes"
ENTRY = """
from urllib.parse import parse_qs, urlparse

from workers import DurableObject, Response, WorkerEntrypoint


class Notes(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.sql = ctx.storage.sql
        self.sql.exec(
            "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT)"
        )

    async def add(self, body):
        return self.sql.exec("INSERT INTO notes (body) VALUES (?) RETURNING id", body).one()["id"]

    async def add_then_fail(self, body):
        def work():
            self.sql.exec("INSERT INTO notes (body) VALUES (?)", body)
            self.sql.exec("UPDATE notes SET body = 'overwritten'")
            raise ValueError("changed my mind")

        try:
            self.ctx.storage.transactionSync(work)
        except ValueError as error:
            return str(error)

    async def bodies(self):
        return [row["body"] for row in self.sql.exec("SELECT body FROM notes ORDER BY id")]

    async def tag(self, key, value):
        kv = self.ctx.storage.kv
        before = kv.get(key)
        notes = self.sql.exec("SELECT count(*) AS n FROM notes").one()["n"]
        kv.put(key, {"value": value, "notes": notes})
        return {"before": before, "listed": kv.list({"prefix": "t"}), "gone": kv.delete("nothing")}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = {key: values[0] for key, values in parse_qs(urlparse(request.url).query).items()}
        stub = self.env.NOTES.get(self.env.NOTES.idFromName(query.get("name", "n")))
        if query["op"] == "add":
            return Response.json({"id": await stub.add(query["body"])})
        if query["op"] == "tag":
            return Response.json(await stub.tag(query["key"], query["value"]))
        if query["op"] == "fail":
            return Response.json({"result": await stub.add_then_fail(query["body"])})
        return Response.json({"bodies": await stub.bodies()})
"""
WRANGLER = {
    "name": "notes",
    "main": "src/entry.py",
    "durable_objects": {"bindings": [{"name": "NOTES", "class_name": "Notes"}]},
    "migrations": [{"tag": "v1", "new_sqlite_classes": ["Notes"]}],
}
POPS = ("tokyo-1", "london-1", "sydney-1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("do-sql")
    worker = write_wrangler_worker(directory / "notes", WRANGLER, ENTRY)
    topology = origin_and_pops("tokyo", "london", "sydney", emulate_delay=False)
    with cluster_up(directory, topology, [worker]) as (cluster, _):
        yield cluster


def call(cluster: Cluster, node: str, **query: str) -> tuple[int, Any]:
    url = f"http://{cluster.node(node).http_address}/?" + urllib.parse.urlencode(query)
    request = urllib.request.Request(url, headers={"Host": HOST})
    try:
        with urllib.request.urlopen(request, timeout=15) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:  # the PoP we asked is gone
        return 0, str(error)


def test_sql_writes_are_one_database_from_every_pop(cluster: Cluster) -> None:
    for node, body in zip(POPS, ("first", "second", "third"), strict=True):
        status, answer = call(cluster, node, op="add", name="shared", body=body)
        assert status == 200, answer
    for node in POPS:
        assert call(cluster, node, op="list", name="shared") == (
            200,
            {"bodies": ["first", "second", "third"]},
        )


def test_a_raising_transaction_sync_leaves_nothing_behind(cluster: Cluster) -> None:
    assert call(cluster, "tokyo-1", op="add", name="tx", body="kept")[0] == 200
    assert call(cluster, "tokyo-1", op="fail", name="tx", body="dropped") == (
        200,
        {"result": "changed my mind"},
    )
    assert call(cluster, "london-1", op="list", name="tx") == (200, {"bodies": ["kept"]})


def test_kill_9_of_the_owner_keeps_every_acknowledged_write(cluster: Cluster) -> None:
    name = "survivor"
    acknowledged = []
    for index in range(20):
        status, answer = call(cluster, "london-1", op="add", name=name, body=f"note-{index}")
        assert status == 200, answer
        acknowledged.append(f"note-{index}")
    placement = placement_of(cluster, NAMESPACE, name)
    assert placement is not None
    owner = placement.owner
    cluster.kill(owner)
    try:
        survivor = next(node for node in POPS if node != owner)

        def listed() -> Any:
            status, answer = call(cluster, survivor, op="list", name=name)
            return answer if status == 200 else None

        answer = poll_until(listed, timeout=30, interval=0.2, what="the object after failover")
        assert answer["bodies"] == acknowledged
        moved = placement_of(cluster, NAMESPACE, name)
        assert moved is not None and moved.owner != owner
        # And it keeps counting from where the dead owner left off (AUTOINCREMENT).
        status, added = call(cluster, survivor, op="add", name=name, body="after")
        assert (status, added) == (200, {"id": 21})
    finally:
        cluster.start(owner)


def test_the_synchronous_kv_api_shares_the_objects_storage(cluster: Cluster) -> None:
    assert call(cluster, "sydney-1", op="add", name="kv", body="one")[0] == 200
    status, first = call(cluster, "sydney-1", op="tag", name="kv", key="t1", value="a")
    assert status == 200, first
    assert first == {"before": None, "listed": [["t1", {"value": "a", "notes": 1}]], "gone": False}
    status, second = call(cluster, "tokyo-1", op="tag", name="kv", key="t1", value="b")
    assert second["before"] == {"value": "a", "notes": 1}
    assert second["listed"] == [["t1", {"value": "b", "notes": 1}]]


def test_the_built_in_sql_counter_is_sqlite_backed_and_counts_from_every_pop(
    cluster: Cluster,
) -> None:
    # SqlCounter keeps its value in `storage.sql` (a plain class would be refused it): the
    # fault runs' SQLite-backed objects.
    values = [
        result(object_call(cluster, node, "increment", {"by": 2}, namespace="SqlCounter", name="c"))
        for node in POPS
    ]
    assert values == [2, 4, 6]
    assert result(object_call(cluster, "sydney-1", "get", namespace="SqlCounter", name="g")) == 0
    assert result(object_call(cluster, "tokyo-1", "get", namespace="SqlCounter", name="c")) == 6
