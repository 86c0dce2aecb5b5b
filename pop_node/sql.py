"""The PoP's SQL databases: replicas fed by the replication log, and D1's sessions.

Replicas: every SQL entry of the log is replayed (edgepop.sqldb) before the batch that
holds it commits to LMDB, so when `applied_seq` says N, every SQL commit up to N is in
the replicas too. Replay skips what a database already holds, so a batch replayed again
after a crash changes nothing.

Queries (transport-free, like pop_node.kv: the gRPC servicer and a worker's D1 binding
call the same code): `route` decides, from the session and the bookmark, whether the
local replica may answer; a statement that writes is refused by the replica before it
changes anything and goes to the primary with a request id (safe to retry).
"""

from __future__ import annotations

import asyncio
import enum
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from edge.v1 import kv_pb2, origin_pb2, sql_pb2
from edgepop import sqldb
from edgepop.metrics import NodeChildren
from edgepop.requestid import new_request_id
from pop_node.deadline import answer_budget_s
from pop_node.identity import PopIdentity
from pop_node.upstream import OriginLink, bookmark_wait_s, call_origin

# Budget for a call to the primary when the client set no deadline.
UPSTREAM_TIMEOUT_S_DEFAULT = 10.0


class Route(enum.Enum):
    PRIMARY = "primary"
    LOCAL = "local"
    # The replica may answer once it holds the bookmark; else the primary.
    WAIT = "wait"


def route(session: int, bookmark_seq: int, applied_seq: int) -> Route:
    """Where a query may first be tried (a write goes to the primary in any case). Pure.

    D1: outside a session, and for "first-primary", the primary; "first-unconstrained"
    anywhere; a bookmark, any copy at least that new.
    """
    if session in (sql_pb2.SQL_SESSION_UNSPECIFIED, sql_pb2.SQL_SESSION_FIRST_PRIMARY):
        return Route.PRIMARY
    if bookmark_seq <= applied_seq:
        return Route.LOCAL
    return Route.WAIT


class SqlSnapshot:
    """A snapshot's SQL images, written beside the replicas and swapped in whole at its
    end (pop_node.replication.SnapshotSink)."""

    def __init__(self, replicas: SqlReplicas) -> None:
        self.replicas = replicas
        self.staged = replicas.directory.with_name(replicas.directory.name + ".incoming")

    def begin(self) -> None:
        shutil.rmtree(self.staged, ignore_errors=True)
        self.staged.mkdir(parents=True)

    def add(self, part: origin_pb2.SnapshotPart) -> None:
        for piece in part.sql_images:
            path = (
                self.staged / f"{sqldb.check_database_name(piece.database.name)}{sqldb.FILE_SUFFIX}"
            )
            with path.open("r+b" if path.exists() else "wb") as file:
                file.seek(piece.offset)
                file.write(piece.data)

    async def install(self) -> None:
        if not self.staged.exists():  # a snapshot whose first part this node missed
            self.begin()
        await self.replicas.replace_all(self.staged)


class SqlPop(OriginLink, PopIdentity, Protocol):
    """What the SQL replicas use of their PoP (pop_node.node.PopNode): its name and
    region for a result's `meta`, its metrics, and the origin (the primaries)."""


class SqlReplicas:
    """The PoP's copies of every SQL database, and the query path over them."""

    def __init__(self, pop: SqlPop, directory: Path) -> None:
        self.pop = pop
        self.directory = directory
        self.databases = sqldb.Databases(directory, primary=False)
        self.snapshot = SqlSnapshot(self)
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="sql-read")
        self.metrics = metrics = pop.metrics
        self._queries = NodeChildren(metrics.sql_queries, metrics.node, metrics.region)
        self._applied_seqs = NodeChildren(
            metrics.sql_replica_applied_seq, metrics.node, metrics.region
        )

    def _served(self, database: str, where: str) -> Any:
        # Only names of databases that exist: a label per name a client makes up would
        # grow without bound.
        return self._queries(database if self.databases.exists(database) else "(unknown)", where)

    def _applied_seq(self, database: str) -> Any:
        return self._applied_seqs(database)

    def close(self) -> None:
        self._reads.shutdown(wait=True)
        self.databases.close()

    # -- replay (called by the replication client, on the loop) ---------------------------------

    def apply_entries(self, entries: Sequence[kv_pb2.LogEntry]) -> None:
        """Replay the SQL entries of a batch, before the batch commits to LMDB."""
        for entry in entries:
            if entry.op != kv_pb2.LOG_OP_SQL:
                continue
            commit = entry.sql
            database = self.databases.create(commit.database)
            created = commit.created if commit.HasField("created") else None
            if database.apply(entry.seq, commit.steps, created):
                self._applied_seq(commit.database).set(entry.seq)

    def reset(self) -> None:
        """Forget every database: a snapshot is about to replace the replica."""
        self.databases.remove_all()

    async def replace_all(self, staged: Path) -> None:
        """Install a snapshot's databases (staged in `staged`) in place of every replica.

        On the read thread, so no read holds a connection while they are swapped.
        """

        def swap() -> None:
            self.databases.close()
            retired = self.directory.with_name(self.directory.name + ".retired")
            shutil.rmtree(retired, ignore_errors=True)
            if self.directory.exists():
                self.directory.rename(retired)
            staged.rename(self.directory)
            shutil.rmtree(retired, ignore_errors=True)

        await asyncio.get_running_loop().run_in_executor(self._reads, swap)

    # Every database a query names is looked up and opened on the read thread, behind any
    # swap queued there: looked up on the loop during a swap, it could be one the swap
    # closes, or a Database opened on the replaced file (whose replay then goes nowhere).

    async def catalog(self) -> list[sql_pb2.SqlDatabase]:
        def listed() -> list[sql_pb2.SqlDatabase]:
            return [self.databases.get(name).info() for name in self.databases.names()]

        return await asyncio.get_running_loop().run_in_executor(self._reads, listed)

    async def dump(self, name: str) -> sql_pb2.SqlDumpResponse:
        loop = asyncio.get_running_loop()
        text, seq = await loop.run_in_executor(self._reads, lambda: self.databases.get(name).dump())
        return sql_pb2.SqlDumpResponse(dump=text, applied_seq=seq)

    # -- queries ---------------------------------------------------------------------------------

    async def query(
        self, request: sql_pb2.SqlQueryRequest, time_remaining: float | None
    ) -> sql_pb2.SqlQueryResponse:
        sqldb.check_query(request)
        floor = sqldb.parse_bookmark(request.bookmark) if request.bookmark else 0
        replication = self.pop.replication
        where = route(request.session, floor, replication.applied_seq)
        if where is Route.WAIT:
            wait_s = bookmark_wait_s(_budget(time_remaining))
            caught_up = await replication.wait_applied(floor, wait_s)
            where = Route.LOCAL if caught_up else Route.PRIMARY
        if where is Route.LOCAL and sqldb.may_read_only(request.statements):
            statements = list(request.statements)

            def read() -> tuple[list[sql_pb2.SqlResult], int] | None:
                # On the read thread, as a snapshot's swap is (see `catalog`).
                if not self.databases.exists(request.database):
                    return None  # not here (yet): the primary knows
                try:
                    return self.databases.get(request.database).read(statements)
                except sqldb.WriteNeeded:
                    return None  # nothing ran: the primary takes it

            loop = asyncio.get_running_loop()
            answered = await loop.run_in_executor(self._reads, read)
            if answered is not None:
                results, database_seq = answered
                # Read after the query: every commit it could have seen is at or below it.
                seen = max(replication.applied_seq, database_seq, floor)
                for result in results:
                    result.meta.served_by = self.pop.name
                    result.meta.served_by_region = self.pop.region
                    result.meta.served_by_primary = False
                self._served(request.database, "replica").inc()
                return sql_pb2.SqlQueryResponse(
                    results=results, bookmark=sqldb.format_bookmark(seen)
                )
        self._served(request.database, "primary").inc()
        return await self._at_primary(request, time_remaining)

    async def _at_primary(
        self, request: sql_pb2.SqlQueryRequest, time_remaining: float | None
    ) -> sql_pb2.SqlQueryResponse:
        forwarded = sql_pb2.SqlQueryRequest()
        forwarded.CopyFrom(request)
        if not forwarded.request_id:
            forwarded.request_id = new_request_id()  # a retried write applies once
        response: sql_pb2.SqlQueryResponse = await call_origin(
            lambda timeout: self.pop.origin.SqlQuery(
                forwarded, timeout=timeout, metadata=self.pop.node_metadata
            ),
            _budget(time_remaining),
        )
        return response


def _budget(remaining: float | None) -> float:
    return answer_budget_s(remaining, UPSTREAM_TIMEOUT_S_DEFAULT)
