"""The SQL databases' primaries, at the origin.

Writes to a database are committed in groups (as the KV committer does): the writes
queued while a group commits all go into the next one. A group runs in one SQLite
transaction that stays open while its steps go through the committer into the
replication log (durable, one entry and seq per write), and commits after: the database
records the last seq in the same SQLite transaction. So the log never lacks a write the
primary holds; if the origin dies between the two commits, `recover` replays the group
at start (a database's groups are serialised by its lock, so only its last one can be
missing). If SQLite's commit fails after the log took the group (the disk refused it),
the group is replayed from the log at once, as a start would, and until that succeeds
the database answers nothing at the primary (it would answer without logged commits).
Each write is all or nothing on its own (a savepoint): one that fails leaves
the others of its group. Reads run on their own connection (WAL): they never wait for a
write.

SQLite calls run on two threads (one for writes and replays, one for reads); the event
loop only waits.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.v1 import kv_pb2, origin_pb2, sql_pb2
from edgepop import buggify, sqldb
from edgepop.errors import NotFoundError, SqlError, UnavailableError
from edgepop.storage import Storage
from origin_node.committer import Committer
from origin_node.writelog import Change, WriteLog, WriteRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

# A database image travels in pieces of at most this size (gRPC messages stay small).
IMAGE_PIECE_BYTES = 1024 * 1024
# Writes to one database committed together at most (one SQLite and one log fsync).
GROUP_WRITES_MAX = 64


@dataclass
class _PendingWrite:
    statements: list[sql_pb2.SqlStatement]
    request_id: str
    future: asyncio.Future[tuple[list[sql_pb2.SqlResult], int]]


def _resolve(write: _PendingWrite, results: list[sql_pb2.SqlResult], seq: int) -> None:
    if not write.future.done():
        write.future.set_result((results, seq))


def _defer_retries(writes: list[_PendingWrite]) -> tuple[list[_PendingWrite], list[_PendingWrite]]:
    """(the group, the writes it defers): a retry queued beside its first write (the
    client gave up waiting before the write ran) waits for the next group, where the log
    says whether the first committed. Run in the same group, both would apply. Pure."""
    group: list[_PendingWrite] = []
    deferred: list[_PendingWrite] = []
    seen: set[str] = set()
    for write in writes:
        if write.request_id and write.request_id in seen:
            deferred.append(write)
        else:
            seen.add(write.request_id)
            group.append(write)
    return group, deferred


def _run_group(
    database: sqldb.Database, writes: list[_PendingWrite]
) -> list[sqldb.WriteResult | Exception]:
    """On the write thread: every write of a group in one open transaction; a write whose
    statement fails is rolled back alone and answers its error.

    Some failures take the whole transaction with them (SQLite rolls it back on an
    SQLITE_FULL or an interrupted write): the group then runs again without the writes
    that failed. Nothing of it is logged yet, so running a write again is safe; each
    round drops at least one write, so this ends.
    """
    failed: dict[int, Exception] = {}
    while True:
        database.begin()
        outcomes: list[sqldb.WriteResult | Exception] = []
        try:
            for index, write in enumerate(writes):
                if index in failed:
                    outcomes.append(failed[index])
                    continue
                try:
                    outcomes.append(database.run(write.statements))
                except SqlError as error:
                    failed[index] = error
                    outcomes.append(error)
                    if not database.in_write:
                        break
        except BaseException:
            database.rollback()
            raise
        if database.in_write:
            return outcomes


class SqlPrimaries:
    def __init__(
        self,
        directory: Path,
        storage: Storage,
        log_: WriteLog,
        committer: Committer,
        node: str,
        region: str,
        database_bytes_max: int = sqldb.DATABASE_BYTES_MAX_DEFAULT,
    ) -> None:
        self.databases = sqldb.Databases(
            directory, primary=True, database_bytes_max=database_bytes_max
        )
        self.storage = storage
        self.log = log_
        self.committer = committer
        self.node = node
        self.region = region
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="sql-write")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="sql-read")
        self._locks: dict[str, asyncio.Lock] = {}
        # Writes waiting for their database's next group commit, and its writer task.
        self._queues: dict[str, list[_PendingWrite]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        # Logged commits a database's primary lacks (SQLite failed to commit them after
        # the log took them), in seq order: replayed before it answers anything.
        self._behind: dict[str, list[kv_pb2.LogEntry]] = {}
        # The planted bug of the fault runs (EDGEPOP_BUGGIFY, test-only): retries run again.
        self._forget_requests = buggify.enabled(buggify.SQL_FORGET_REQUESTS)
        if self._forget_requests:
            log.warning("BUGGIFY %s: SQL retries run again", buggify.SQL_FORGET_REQUESTS)

    def recover(self) -> None:
        """Bring every database up to its last logged commit (before serving).

        Only its last group can be missing (a group's writes are logged together, with
        consecutive seqs, before SQLite commits them): read back from the last one.
        """
        with self.storage.read() as txn:
            catalog = self.log.sql_databases(txn)
            missing: list[kv_pb2.LogEntry] = []
            for database in catalog:
                copy = self.databases.create(database.name)
                group: list[kv_pb2.LogEntry] = []
                seq = database.last_seq
                while seq > copy.applied_seq:
                    entries = self.log.read(txn, seq, 1, 1 << 30)
                    if not entries or entries[0].seq != seq:
                        raise AssertionError(
                            f"database {database.name!r}: its logged commit {seq} is no "
                            "longer in the log"
                        )
                    entry = entries[0]
                    if entry.op != kv_pb2.LOG_OP_SQL or entry.sql.database != database.name:
                        break
                    group.append(entry)
                    seq -= 1
                missing.extend(reversed(group))
        for entry in missing:
            self._replay(entry)
            log.warning(
                "database %r: replayed logged commit %d (the origin stopped before it "
                "reached SQLite)",
                entry.sql.database,
                entry.seq,
            )

    def _replay(self, entry: kv_pb2.LogEntry) -> None:
        database = self.databases.create(entry.sql.database)
        created = entry.sql.created if entry.sql.HasField("created") else None
        database.apply(entry.seq, entry.sql.steps, created)

    def close(self) -> None:
        self._writes.shutdown(wait=True)
        self._reads.shutdown(wait=True)
        self.databases.close()

    async def _on(self, executor: ThreadPoolExecutor, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, work)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def _catch_up(self, name: str) -> None:
        """Under the database's lock: replay the logged commits its primary lacks, if any
        (`_behind`); UNAVAILABLE while the disk still refuses them."""
        entries = self._behind.get(name)
        if not entries:
            return

        def replay() -> None:
            if self.databases.exists(name):
                self.databases.get(name).rollback()
            for entry in entries:
                self._replay(entry)  # exactly once: a copy skips what it holds

        try:
            await self._on(self._writes, replay)
        except Exception as error:
            log.error("database %r: replaying logged commits from the log failed: %s", name, error)
            raise UnavailableError(
                f"database {name!r}: its primary lacks logged commits up to seq "
                f"{entries[-1].seq} (storing them failed: {error}); it answers again once "
                "they are stored"
            ) from error
        del self._behind[name]
        log.warning("database %r: holds its logged commits again (to %d)", name, entries[-1].seq)

    async def _caught_up(self, name: str) -> None:
        """Before a read at the primary: it must hold every logged commit."""
        if name in self._behind:
            async with self._lock(name):
                await self._catch_up(name)

    # -- the API -----------------------------------------------------------------------------

    def catalog(self) -> list[sql_pb2.SqlDatabase]:
        with self.storage.read() as txn:
            return sorted(self.log.sql_databases(txn), key=lambda database: database.name)

    def info(self, name: str) -> sql_pb2.SqlDatabase:
        sqldb.check_database_name(name)
        with self.storage.read() as txn:
            found = self.log.sql_database(txn, name)
        if found is None:
            raise NotFoundError(f"no database {name!r}")
        return found

    async def create(self, name: str) -> sql_pb2.SqlCreateResponse:
        sqldb.check_database_name(name)
        async with self._lock(name):
            commit = sql_pb2.SqlCommit(
                database=name, created=sql_pb2.SqlDatabase(name=name, uuid=str(uuid.uuid4()))
            )
            done = await self.committer.submit(
                WriteRequest("", [Change(kv_pb2.LOG_OP_SQL, name, sql=commit)])
            )
            entry = done.entries[0]
            try:
                await self._on(self._writes, lambda: self._replay(entry))
            except Exception:
                # Logged: the file must hold it before the database answers (as below).
                self._behind[name] = [entry]
                await self._catch_up(name)
        return sql_pb2.SqlCreateResponse(
            database=self.info(name), bookmark=sqldb.format_bookmark(done.seq)
        )

    async def query(self, request: sql_pb2.SqlQueryRequest) -> sql_pb2.SqlQueryResponse:
        """Run a query at the primary: reads on the read connection, writes logged first."""
        sqldb.check_query(request)
        floor = sqldb.parse_bookmark(request.bookmark) if request.bookmark else 0
        self.info(request.database)  # NOT_FOUND before anything runs
        await self._caught_up(request.database)
        database = self.databases.get(request.database)
        statements = list(request.statements)
        try:
            if not sqldb.may_read_only(statements):
                raise sqldb.WriteNeeded()
            results, seq = await self._on(self._reads, lambda: database.read(statements))
        except sqldb.WriteNeeded:
            results, seq = await self._write(database, statements, request.request_id)
        for result in results:
            result.meta.served_by = self.node
            result.meta.served_by_region = self.region
            result.meta.served_by_primary = True
        return sql_pb2.SqlQueryResponse(
            results=results, bookmark=sqldb.format_bookmark(max(seq, floor))
        )

    async def _write(
        self, database: sqldb.Database, statements: list[sql_pb2.SqlStatement], request_id: str
    ) -> tuple[list[sql_pb2.SqlResult], int]:
        """Queue a write for its database's group commit; (results, its seq) once durable."""
        future: asyncio.Future[tuple[list[sql_pb2.SqlResult], int]] = (
            asyncio.get_running_loop().create_future()
        )
        self._queues.setdefault(database.name, []).append(
            _PendingWrite(statements, request_id, future)
        )
        writer = self._writers.get(database.name)
        if writer is None or writer.done():
            self._writers[database.name] = asyncio.ensure_future(self._drain(database))
        return await future

    async def _drain(self, database: sqldb.Database) -> None:
        """Commit a database's queued writes, a group at a time, until none are left."""
        queue = self._queues[database.name]
        while queue:
            group, deferred = _defer_retries(queue[:GROUP_WRITES_MAX])
            del queue[:GROUP_WRITES_MAX]
            async with self._lock(database.name):
                try:
                    await self._commit_group(database, group)
                except BaseException as error:
                    for write in group:
                        if not write.future.done():
                            write.future.set_exception(error)
                    if not isinstance(error, Exception):
                        raise
            # Next: each finds its first write in the log, if that was logged.
            queue[:0] = deferred

    async def _commit_group(self, database: sqldb.Database, group: list[_PendingWrite]) -> None:
        """One SQLite transaction, one log commit (with fsync) and one SQLite commit for
        every write of the group; each write is all or nothing on its own (a savepoint)."""
        await self._catch_up(database.name)
        with self.storage.read() as txn:
            fresh = []
            for write in group:
                first_seq = (
                    None if self._forget_requests else self.log.request_seq(txn, write.request_id)
                )
                if first_seq is None:
                    fresh.append(write)
                else:
                    # A retry of a write the log holds: not run again (its statements would
                    # apply twice, or fail on what they did the first time). Its rows are
                    # not kept: it answers empty results and the first write's bookmark.
                    _resolve(write, [sql_pb2.SqlResult() for _ in write.statements], first_seq)
        if not fresh:
            return
        outcomes = await self._on(self._writes, lambda: _run_group(database, fresh))
        logged: list[tuple[_PendingWrite, sqldb.WriteResult]] = []
        unchanged: list[tuple[_PendingWrite, sqldb.WriteResult]] = []
        for write, outcome in zip(fresh, outcomes, strict=True):
            if isinstance(outcome, Exception):
                write.future.set_exception(outcome)
            elif outcome.steps:
                logged.append((write, outcome))
            else:  # nothing changed (an UPDATE that matched no row)
                unchanged.append((write, outcome))
        if not logged:
            await self._on(self._writes, database.rollback)
            for write, outcome in unchanged:
                _resolve(write, outcome.results, database.applied_seq)
            return
        changes = [
            Change(
                kv_pb2.LOG_OP_SQL,
                database.name,
                sql=sql_pb2.SqlCommit(database=database.name, steps=outcome.steps),
                request_id=write.request_id,
            )
            for write, outcome in logged
        ]
        try:
            # One request: its entries commit together (consecutive seqs) or not at all.
            done = await self.committer.submit(WriteRequest("", changes))
        except BaseException:
            await self._on(self._writes, database.rollback)
            raise
        last_seq = done.entries[-1].seq
        # On the loop: a COMMIT (one fsync of the WAL) blocks it for less than a hop to
        # the write thread and back costs; the write thread is idle (we hold the lock).
        try:
            database.commit(last_seq)
        except Exception as error:
            # The log holds the group, and the PoPs will apply it: the primary must hold
            # it too before it answers anything, so it is replayed from the log (as a
            # start would); if that fails too, the group's writes answer UNAVAILABLE
            # (their retries find them in the log) and so does the database, until done.
            log.error(
                "database %r: SQLite's commit of logged seqs %d-%d failed (%s); "
                "replaying them from the log",
                database.name,
                done.entries[0].seq,
                last_seq,
                error,
            )
            self._behind[database.name] = list(done.entries)
            await self._catch_up(database.name)
        for (write, outcome), entry in zip(logged, done.entries, strict=True):
            _resolve(write, outcome.results, entry.seq)
        for write, outcome in unchanged:
            _resolve(write, outcome.results, last_seq)  # it saw the group's earlier writes

    async def images(self) -> AsyncIterator[origin_pb2.SqlImagePiece]:
        """Every database as a whole SQLite file, in pieces (for a replica's snapshot).

        Each is taken under its database's lock, so no commit is half done (logged, not
        yet in SQLite): an image holds every commit its database's log entries name up to
        the moment it is taken.
        """
        for info in self.catalog():
            async with self._lock(info.name):
                await self._catch_up(info.name)
                database = self.databases.get(info.name)
                image = await self._on(self._reads, database.serialize)
            for offset in range(0, max(1, len(image)), IMAGE_PIECE_BYTES):
                piece = image[offset : offset + IMAGE_PIECE_BYTES]
                yield origin_pb2.SqlImagePiece(
                    database=info,
                    offset=offset,
                    data=piece,
                    last=offset + IMAGE_PIECE_BYTES >= len(image),
                )

    async def dump(self, name: str) -> sql_pb2.SqlDumpResponse:
        self.info(name)
        await self._caught_up(name)
        database = self.databases.get(name)
        text, seq = await self._on(self._reads, database.dump)
        return sql_pb2.SqlDumpResponse(dump=text, applied_seq=seq)
