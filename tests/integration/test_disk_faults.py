"""A disk that refuses to sync: writes fail with a clear UNAVAILABLE, nothing of them is
kept or half kept, reads go on, and everything works again once the disk does.

The cluster (us-east-1 + london x2, delay emulation off) runs over the power-loss shim
(`tests/integration/powerloss/`) with its refuse flag: while the flag file exists, fsync
and fdatasync of the watched files fail with EIO, as a failing disk's would. Watched:
every LMDB data file (the origin's log, the control plane's state, the PoPs' replicas and
Durable Object stores) and the SQL primary's WAL of the database used here.

- The whole disk refuses: a KV write, a Durable Object's increment and a SQL write each
  answer UNAVAILABLE naming the refused commit (they used to answer INTERNAL); reads at
  the PoPs and at the SQL primary still answer; after the disk recovers, the refused
  writes are nowhere (the Counter counts on from its last acknowledged value) and the
  replicas converge on the origin.
- Only the SQL primary's WAL refuses: the log takes the write (so the replicas apply it)
  but SQLite cannot commit it at the primary; the primary then answers UNAVAILABLE to
  reads and writes of that database (it would answer without a logged write) until the
  disk recovers, and then holds the write exactly once; its retry is answered from the log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from edge.v1 import kv_pb2, objects_pb2, origin_pb2_grpc, sql_pb2
from edgectl.launcher import Cluster
from tests.conftest import _make_factory, _stop, poll_until
from tests.integration.kvclient import OPTIONS, converged, pop_stub
from tests.integration.powerloss import WATCHED_NAMES, RefusedSyncs, build_shim, run_under_shim

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 2}],
}
DATABASE = "disk"
WAL_NAME = f"{DATABASE}.sqlite-wal"  # the SQL primary's WAL (edgepop.sqldb's file naming)
NAMESPACE = "disk-faults"
COUNTER = "disk-faults"  # placed in london: owner and standby are its two PoPs
ENTRY_POP = "london-1"
OTHER_POP = "london-2"
CALL_TIMEOUT_S = 3.0
RECOVERY_TIMEOUT_S = 30.0
REFUSED_COMMIT = "storage refused the commit"


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, RefusedSyncs]]:
    """One cluster for both tests (neither leaves it broken), under the shim."""
    shim = build_shim(tmp_path_factory.mktemp("disk-faults-shim"))
    started: list[Cluster] = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        cluster = _make_factory(tmp_path_factory.mktemp("disk-faults"), started)(
            TOPOLOGY, start=False
        )
        refused = RefusedSyncs(cluster.data_dir / "refuse-syncs")
        run_under_shim(
            monkeypatch, shim, cluster.data_dir, (*WATCHED_NAMES, WAL_NAME), refused.flag
        )
        cluster.up()
    try:
        _sql(cluster, "CREATE TABLE t (v TEXT)", create=True)
        yield cluster, refused
    finally:
        refused.allow()
        _stop(started)


def _put(cluster: Cluster, key: str) -> kv_pb2.KvPutResponse:
    with pop_stub(cluster, ENTRY_POP) as stub:
        return stub.KvPut(
            kv_pb2.KvPutRequest(namespace=NAMESPACE, key=key, value=key.encode()),
            timeout=CALL_TIMEOUT_S,
        )


def _found(cluster: Cluster, pop: str, key: str) -> bool:
    with pop_stub(cluster, pop) as stub:
        reply = stub.KvGet(kv_pb2.KvGetRequest(namespace=NAMESPACE, key=key), timeout=5)
    return bool(reply.found)


def _increment(cluster: Cluster) -> int:
    with pop_stub(cluster, ENTRY_POP) as stub:
        reply = stub.ObjectCall(
            objects_pb2.ObjectCallRequest(namespace="Counter", name=COUNTER, method="increment"),
            timeout=CALL_TIMEOUT_S,
        )
    return int(json.loads(reply.result_json))


def _sql(
    cluster: Cluster,
    sql: str,
    *,
    create: bool = False,
    replica: bool = False,
    request_id: str = "",
) -> sql_pb2.SqlQueryResponse:
    """`sql` at the primary (through a PoP, outside a session), or at the PoP's replica."""
    if create:
        with cluster.channel(cluster.origin.grpc_address, OPTIONS) as channel:
            origin_pb2_grpc.OriginStub(channel).SqlCreate(
                sql_pb2.SqlCreateRequest(name=DATABASE), timeout=CALL_TIMEOUT_S
            )
    request = sql_pb2.SqlQueryRequest(
        database=DATABASE, statements=[sql_pb2.SqlStatement(sql=sql)], request_id=request_id
    )
    if replica:
        request.session = sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED
    with pop_stub(cluster, ENTRY_POP) as stub:
        return stub.SqlQuery(request, timeout=CALL_TIMEOUT_S)


def _values(answer: sql_pb2.SqlQueryResponse) -> list[str]:
    return [row.values[0].text for row in answer.results[0].rows]


def _refused(call: Any, *, says: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error = refused.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE, (error.code(), error.details())
    assert says in (error.details() or ""), error.details()
    return error


def test_a_disk_that_refuses_syncs_fails_writes_as_unavailable_and_keeps_none_of_them(
    disk: tuple[Cluster, RefusedSyncs],
) -> None:
    cluster, refused = disk
    _put(cluster, "before")
    counted = _increment(cluster)
    _sql(cluster, "INSERT INTO t VALUES ('before')")

    refused.refuse()  # every watched file
    try:
        _refused(lambda: _put(cluster, "during"), says=REFUSED_COMMIT)
        _refused(lambda: _increment(cluster), says=REFUSED_COMMIT)
        _refused(lambda: _sql(cluster, "INSERT INTO t VALUES ('during')"), says=REFUSED_COMMIT)
        # Reads need no sync.
        assert _found(cluster, OTHER_POP, "before")
        assert "before" in _values(_sql(cluster, "SELECT v FROM t"))
    finally:
        refused.allow()

    _put(cluster, "after")
    # The refused increment left nothing, on the owner or its standby.
    assert _increment(cluster) == counted + 1
    _sql(cluster, "INSERT INTO t VALUES ('after')")
    assert sorted(_values(_sql(cluster, "SELECT v FROM t"))) == ["after", "before"]
    poll_until(lambda: converged(cluster), timeout=RECOVERY_TIMEOUT_S, what="replicas converge")
    assert not _found(cluster, ENTRY_POP, "during")
    assert _found(cluster, OTHER_POP, "after")


def test_a_primary_that_cannot_commit_a_logged_write_answers_unavailable_until_it_can(
    disk: tuple[Cluster, RefusedSyncs],
) -> None:
    cluster, refused = disk
    refused.refuse(WAL_NAME)  # only SQLite's commit at the primary; the log syncs
    try:
        _refused(
            lambda: _sql(cluster, "INSERT INTO t VALUES ('logged')", request_id="logged-1"),
            says="lacks logged commits",
        )
        # The log took it: the replicas apply it ...
        poll_until(
            lambda: "logged" in _values(_sql(cluster, "SELECT v FROM t", replica=True)),
            timeout=RECOVERY_TIMEOUT_S,
            what="the logged write at london-1's replica",
        )
        # ... and the primary, which lacks it, answers nothing of that database.
        _refused(lambda: _sql(cluster, "SELECT v FROM t"), says="lacks logged commits")
        _refused(
            lambda: _sql(cluster, "INSERT INTO t VALUES ('refused')"), says="lacks logged commits"
        )
    finally:
        refused.allow()

    assert _values(_sql(cluster, "SELECT v FROM t")).count("logged") == 1
    again = _sql(cluster, "INSERT INTO t VALUES ('logged')", request_id="logged-1")
    values = _values(_sql(cluster, "SELECT v FROM t"))
    assert values.count("logged") == 1 and "refused" not in values
    assert again.bookmark  # answered from the log: the first attempt's seq
