"""origin_node.sql: a write logged but not yet in SQLite when the origin stops is replayed
at the next start, once (real LMDB and SQLite in a temp dir, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import apsw
import pytest

from edge.v1 import kv_pb2, sql_pb2
from edgepop import sqldb
from edgepop.errors import UnavailableError
from edgepop.kvstore import KvStore
from edgepop.metrics import OriginMetrics
from edgepop.storage import Storage
from origin_node.committer import Committer
from origin_node.sql import SqlPrimaries
from origin_node.writelog import Change, WriteLog, WriteRequest

T = TypeVar("T")


class Origin:
    """The origin's storage, log, committer and SQL primaries, as OriginNode wires them."""

    def __init__(
        self, directory: Path, database_bytes_max: int = sqldb.DATABASE_BYTES_MAX_DEFAULT
    ) -> None:
        self.storage = Storage(directory / "lmdb", 64 * 1024**2)
        self.log = WriteLog(KvStore(self.storage, track_expiry=True))
        self.committer = Committer(
            self.storage, self.log, OriginMetrics("origin", "us-east-1"), lambda _h, _f: None
        )
        self.sql = SqlPrimaries(
            directory / "sql",
            self.storage,
            self.log,
            self.committer,
            "origin",
            "us-east-1",
            database_bytes_max,
        )
        self.sql.recover()

    def close(self) -> None:
        self.sql.close()
        self.storage.close()


def statements(*sql: str) -> list[sql_pb2.SqlStatement]:
    return [sql_pb2.SqlStatement(sql=text) for text in sql]


async def _query(origin: Origin, *sql: str, request_id: str = "") -> sql_pb2.SqlQueryResponse:
    request = sql_pb2.SqlQueryRequest(database="db", statements=statements(*sql))
    request.request_id = request_id
    return await origin.sql.query(request)


async def _with_committer(origin: Origin, work: Coroutine[Any, Any, T]) -> T:
    committing = asyncio.ensure_future(origin.committer.run())
    try:
        return await work
    finally:
        committing.cancel()


def _dump(origin: Origin) -> tuple[str, int]:
    dumped = asyncio.run(origin.sql.dump("db"))
    return dumped.dump, dumped.applied_seq


def test_a_logged_write_missing_from_sqlite_is_replayed_once_at_start(tmp_path: Path) -> None:
    origin = Origin(tmp_path)

    async def before_the_crash() -> int:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await _query(origin, "INSERT INTO t (v) VALUES ('kept')")
        # The next write reaches the log, and the origin stops before SQLite commits it.
        database = origin.sql.databases.get("db")
        done = database.execute(statements("INSERT INTO t (v) VALUES ('logged')"))
        logged = await origin.committer.submit(
            WriteRequest(
                "",
                [
                    Change(
                        kv_pb2.LOG_OP_SQL,
                        "db",
                        sql=sql_pb2.SqlCommit(database="db", steps=done.steps),
                    )
                ],
                "the-request",
            )
        )
        return logged.seq

    seq = asyncio.run(_with_committer(origin, before_the_crash()))
    origin.close()  # the open SQLite transaction is rolled back, as by a crash

    restarted = Origin(tmp_path)
    try:
        text, applied = _dump(restarted)
        assert applied == seq
        assert "'kept'" in text and "'logged'" in text
        # Its retry (same request id) is not run again: the first bookmark comes back.
        again = asyncio.run(
            _with_committer(
                restarted,
                _query(restarted, "INSERT INTO t (v) VALUES ('logged')", request_id="the-request"),
            )
        )
        assert again.bookmark == sqldb.format_bookmark(seq)
        assert _dump(restarted) == (text, seq)
        # A second start finds nothing to replay.
        restarted.close()
        restarted = Origin(tmp_path)
        assert _dump(restarted) == (text, seq)
    finally:
        restarted.close()


def test_concurrent_writes_commit_in_groups_and_a_failing_one_alone(tmp_path: Path) -> None:
    origin = Origin(tmp_path)

    async def scenario() -> list[sql_pb2.SqlQueryResponse | BaseException]:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)")
        writes = [
            _query(origin, f"INSERT INTO t (v) VALUES ('{'dup' if n in (3, 4) else n}')")
            for n in range(20)
        ]
        return await asyncio.gather(*writes, return_exceptions=True)

    try:
        answers = asyncio.run(_with_committer(origin, scenario()))
        failed = [n for n, answer in enumerate(answers) if isinstance(answer, BaseException)]
        assert failed == [4]  # the second 'dup' alone: UNIQUE
        assert "UNIQUE constraint failed" in str(answers[4])
        bookmarks = [a.bookmark for a in answers if isinstance(a, sql_pb2.SqlQueryResponse)]
        assert len(set(bookmarks)) == 19 and bookmarks == sorted(bookmarks)  # one seq each
        text, applied = _dump(origin)
        assert applied == sqldb.parse_bookmark(bookmarks[-1])
        assert text.count("\n(") == 19  # 19 rows in t
        # Fewer log commits than writes: they were grouped.
        assert origin.committer.metrics.kv_commits._value.get() < 19  # type: ignore[attr-defined]
    finally:
        origin.close()


def test_a_retry_queued_beside_its_first_attempt_runs_once(tmp_path: Path) -> None:
    origin = Origin(tmp_path)

    async def scenario() -> list[sql_pb2.SqlQueryResponse]:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        # Enough writes that they spread over groups in flight on the write thread; the
        # same request id three times, in the same group and in later ones.
        writes = [
            _query(
                origin,
                f"INSERT INTO t (v) VALUES ('{n}')",
                request_id="again" if n in (1, 2, 30) else "",
            )
            for n in range(40)
        ]
        return await asyncio.gather(*writes)

    try:
        answers = asyncio.run(_with_committer(origin, scenario()))
        assert answers[1].bookmark == answers[2].bookmark == answers[30].bookmark
        text, _ = _dump(origin)
        assert text.count("\n(") == 38  # 40 writes, two of them retries of write 1
        assert "'1'" in text and "'2'" not in text and "'30'" not in text
    finally:
        origin.close()


def test_a_logged_group_missing_from_sqlite_is_replayed_whole(tmp_path: Path) -> None:
    origin = Origin(tmp_path)

    async def log_a_group() -> int:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (v TEXT)")
        database = origin.sql.databases.get("db")
        database.begin()
        results = [database.run(statements(f"INSERT INTO t VALUES ('g{n}')")) for n in range(3)]
        changes = [
            Change(
                kv_pb2.LOG_OP_SQL,
                "db",
                sql=sql_pb2.SqlCommit(database="db", steps=result.steps),
                request_id=f"group-{n}",
            )
            for n, result in enumerate(results)
        ]
        logged = await origin.committer.submit(WriteRequest("", changes))
        return logged.seq

    last_seq = asyncio.run(_with_committer(origin, log_a_group()))
    origin.close()  # before SQLite committed the group
    restarted = Origin(tmp_path)
    try:
        text, applied = _dump(restarted)
        assert applied == last_seq
        assert all(f"'g{n}'" in text for n in range(3))
    finally:
        restarted.close()


class _FailingSyncs(apsw.VFS):
    """SQLite's default VFS, except that the sync of a WAL file fails while `failures`
    is above 0 (each failure counts down; -1: every sync fails): a disk that refuses a
    commit. Installed as the process's default VFS, so the primaries' connections use it."""

    def __init__(self) -> None:
        self.failures = 0
        self.failed = 0
        self.base = apsw.vfs_names()[0]  # the default before this one
        super().__init__("failing-syncs", self.base, makedefault=True)

    def xOpen(self, name: Any, flags: Any) -> apsw.VFSFile:
        return _FailingSyncFile(self, name, flags)


class _FailingSyncFile(apsw.VFSFile):
    def __init__(self, vfs: _FailingSyncs, name: Any, flags: Any) -> None:
        path = name.filename() if isinstance(name, apsw.URIFilename) else str(name)
        self._vfs = vfs
        self._wal = path.endswith("-wal")
        super().__init__(vfs.base, name, flags)

    def xSync(self, flags: int) -> None:
        if self._wal and self._vfs.failures:
            if self._vfs.failures > 0:
                self._vfs.failures -= 1
            self._vfs.failed += 1
            raise apsw.IOError("injected: the disk refused the WAL's sync")
        super().xSync(flags)


@pytest.fixture
def failing_syncs() -> Iterator[_FailingSyncs]:
    vfs = _FailingSyncs()
    try:
        yield vfs
    finally:
        vfs.unregister()


def _logged_rows(origin: Origin, tmp_path: Path) -> str:
    """The database as its log says it is: every logged commit replayed on a fresh copy."""
    copy = sqldb.Database(tmp_path / "from-the-log" / "db.sqlite", primary=False)
    try:
        with origin.storage.read() as txn:
            head, _ = origin.log.positions(txn)
            for entry in origin.log.read(txn, 1, head, 1 << 30):
                if entry.op == kv_pb2.LOG_OP_SQL and entry.sql.database == "db":
                    created = entry.sql.created if entry.sql.HasField("created") else None
                    copy.apply(entry.seq, entry.sql.steps, created)
        return copy.dump()[0]
    finally:
        copy.close()


def test_a_logged_write_whose_sqlite_commit_fails_is_replayed_from_the_log(
    tmp_path: Path, failing_syncs: _FailingSyncs
) -> None:
    origin = Origin(tmp_path)
    (tmp_path / "from-the-log").mkdir()

    async def scenario() -> tuple[sql_pb2.SqlQueryResponse, sql_pb2.SqlQueryResponse]:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        await _query(origin, "INSERT INTO t (v) VALUES ('before')")
        failing_syncs.failures = 1  # the next commit's sync: after the log took the write
        during = await _query(origin, "INSERT INTO t (v) VALUES ('during')", request_id="w")
        after = await _query(origin, "INSERT INTO t (v) VALUES ('after')")
        return during, after

    try:
        during, after = asyncio.run(_with_committer(origin, scenario()))
        assert failing_syncs.failed == 1
        assert during.results[0].meta.last_row_id == 2
        text, applied = _dump(origin)
        assert applied == sqldb.parse_bookmark(after.bookmark)
        assert text == _logged_rows(origin, tmp_path)
        assert text.count("'during'") == 1 and "'after'" in text
        # A restart finds nothing to replay: the primary held every logged commit.
        origin.close()
        origin = Origin(tmp_path)
        assert _dump(origin) == (text, applied)
    finally:
        origin.close()


def test_a_primary_that_cannot_store_a_logged_write_refuses_queries_until_it_can(
    tmp_path: Path, failing_syncs: _FailingSyncs
) -> None:
    origin = Origin(tmp_path)
    (tmp_path / "from-the-log").mkdir()

    async def scenario() -> None:
        await origin.sql.create("db")
        await _query(origin, "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        failing_syncs.failures = -1  # every sync, the replay's too
        with pytest.raises(UnavailableError, match=r"lacks logged commits.*refused the WAL"):
            await _query(origin, "INSERT INTO t (v) VALUES ('logged')", request_id="w")
        # The primary lacks a logged commit: no read or write may be answered from it.
        with pytest.raises(UnavailableError):
            await _query(origin, "SELECT v FROM t")
        with pytest.raises(UnavailableError):
            await _query(origin, "INSERT INTO t (v) VALUES ('refused')")
        with pytest.raises(UnavailableError):
            await origin.sql.dump("db")
        failing_syncs.failures = 0  # the disk takes writes again
        read = await _query(origin, "SELECT v FROM t")
        assert [row.values[0].text for row in read.results[0].rows] == ["logged"]
        # The retry of the write whose answer was lost finds it in the log.
        again = await _query(origin, "INSERT INTO t (v) VALUES ('logged')", request_id="w")
        assert sqldb.parse_bookmark(again.bookmark) == origin.sql.info("db").last_seq

    try:
        asyncio.run(_with_committer(origin, scenario()))
        text, _ = _dump(origin)
        assert text.count("'logged'") == 1 and "'refused'" not in text
        assert text == _logged_rows(origin, tmp_path)
    finally:
        origin.close()
