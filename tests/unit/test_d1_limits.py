"""D1's documented limits and error messages (issue 13): the entry checks, SQLite's own
run-time limits on the primary's and the readers' connections, the database size limit,
and the error wording (real SQLite files in a temp dir, no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from edge.v1 import sql_pb2
from edgepop import limits, sqldb
from edgepop.errors import (
    InvalidArgumentError,
    SqlError,
    SqlLimitExceededError,
    d1_message,
    statement_index_of,
    status_of,
)
from tests.unit.test_sql_primaries import Origin, _with_committer


def statement(sql: str, *params: object) -> sql_pb2.SqlStatement:
    return sql_pb2.SqlStatement(sql=sql, params=[sqldb.to_value(p) for p in params])


def request(*statements: sql_pb2.SqlStatement) -> sql_pb2.SqlQueryRequest:
    return sql_pb2.SqlQueryRequest(database="db", statements=statements)


# -- what a request carries, checked where it enters ----------------------------------------


def test_each_limit_a_request_carries_is_refused_just_past_it_and_named() -> None:
    at_limit = request(
        statement("SELECT " + "1" + " " * (sqldb.SQL_BYTES_MAX - len("SELECT 1"))),
        statement(
            "SELECT 1" + ", ?" * sqldb.PARAMS_PER_STATEMENT_MAX,
            *range(sqldb.PARAMS_PER_STATEMENT_MAX),
        ),
        # 4-byte characters: the limit counts UTF-8 bytes, not characters
        statement("SELECT ?", "😀" * (sqldb.VALUE_BYTES_MAX // 4)),
        statement("SELECT ?", b"x" * sqldb.VALUE_BYTES_MAX),
    )
    sqldb.check_query(at_limit)
    sqldb.check_query(request(*[statement("SELECT 1")] * sqldb.STATEMENTS_PER_QUERY_MAX))
    past = [
        (
            request(*[statement("SELECT 1")] * (sqldb.STATEMENTS_PER_QUERY_MAX + 1)),
            "D1_ERROR: too many statements: 51",
            "STATEMENTS_PER_QUERY_MAX",
            None,
        ),
        (
            request(statement("SELECT 1"), statement("SELECT 1" + " " * sqldb.SQL_BYTES_MAX)),
            "D1_ERROR: statement too long: 100008 bytes",
            "SQL_BYTES_MAX",
            1,
        ),
        (
            request(statement("SELECT 1", *range(sqldb.PARAMS_PER_STATEMENT_MAX + 1))),
            "D1_ERROR: too many SQL variables: 101 bound parameters",
            "PARAMS_PER_STATEMENT_MAX",
            0,
        ),
        (
            request(statement("SELECT ?", "😀" * (sqldb.VALUE_BYTES_MAX // 4) + "x")),
            "D1_ERROR: string or blob too big: a bound text of 2000001 bytes",
            "VALUE_BYTES_MAX",
            0,
        ),
        (
            request(statement("SELECT ?", b"x" * (sqldb.VALUE_BYTES_MAX + 1))),
            "D1_ERROR: string or blob too big: a bound blob of 2000001 bytes",
            "VALUE_BYTES_MAX",
            0,
        ),
        (request(statement("  ")), "D1_ERROR: empty SQL statement", "", 0),
        (request(), "D1_ERROR: no SQL statement", "", None),
    ]
    for refused, prefix, limit, index in past:
        with pytest.raises(SqlError) as raised:
            sqldb.check_query(refused)
        assert raised.value.message.startswith(prefix), raised.value.message
        assert limit in raised.value.message
        assert status_of(raised.value)[0] == grpc.StatusCode.INVALID_ARGUMENT
        assert raised.value.statement_index == index
        assert statement_index_of(raised.value.reason) == index


def test_a_value_sqlite_cannot_store_is_d1s_type_error() -> None:
    for value, kind in (
        ({"a": 1}, "dict"),
        ({1, 2}, "set"),
        ([1, 2], "list"),
        (object(), "object"),
        (2**63, "int"),
        (-(2**63) - 1, "int"),
    ):
        with pytest.raises(InvalidArgumentError) as raised:
            sqldb.to_value(value)
        assert raised.value.message.startswith(f"D1_TYPE_ERROR: Type '{kind}' not supported")
    assert sqldb.to_value(2**63 - 1).integer == 2**63 - 1
    assert sqldb.to_value(-(2**63)).integer == -(2**63)


def test_messages_get_d1s_prefix_once_and_the_statement_index_travels_as_a_reason() -> None:
    assert d1_message("no database 'x'") == "D1_ERROR: no database 'x'"
    for already in ("D1_ERROR: a", "D1_TYPE_ERROR: b", "D1_EXEC_ERROR: c", "D1_COLUMN_NOTFOUND: d"):
        assert d1_message(already) == already
    assert statement_index_of(SqlError("x", 7).reason) == 7
    assert statement_index_of(SqlError("x").reason) is None
    assert statement_index_of("not-owner") is None
    assert statement_index_of("sql-statement:") is None


# -- what SQLite enforces: on the primary's writer and on every reader ----------------------


@pytest.fixture
def primary(tmp_path: Path) -> sqldb.Database:
    database = sqldb.Database(tmp_path / "p.sqlite", primary=True)
    database.execute([statement("CREATE TABLE t (a, b)")])
    database.commit(1)
    return database


def columns(count: int) -> str:
    return ", ".join(f"c{index}" for index in range(count))


def test_sqlites_limits_refuse_what_d1_refuses_and_change_nothing(
    primary: sqldb.Database,
) -> None:
    big = sqldb.VALUE_BYTES_MAX
    half = sqldb.VALUE_BYTES_MAX // 2 + 10
    too_big = ("string or blob too big", "VALUE_BYTES_MAX")
    refused = [
        (
            f"CREATE TABLE wide ({columns(101)})",
            ("too many columns on wide", "COLUMNS_PER_TABLE_MAX"),
        ),
        ("ALTER TABLE hundred ADD COLUMN c100", ("too many columns", "COLUMNS_PER_TABLE_MAX")),
        (f"INSERT INTO t VALUES (randomblob({big + 1}), 1)", too_big),
        # two values under the limit, one row over it
        (f"INSERT INTO t VALUES (randomblob({half}), randomblob({half}))", too_big),
        (
            "SELECT max(" + ", ".join(["1"] * 33) + ")",
            ("too many arguments on function max", "FUNCTION_ARGS_MAX"),
        ),
        (
            "SELECT 'a' LIKE '" + "a" * 51 + "'",
            ("LIKE or GLOB pattern too complex", "LIKE_PATTERN_BYTES_MAX"),
        ),
        (
            "SELECT ?101",
            ("variable number must be between ?1 and ?100", "PARAMS_PER_STATEMENT_MAX"),
        ),
    ]
    primary.execute([statement(f"CREATE TABLE hundred ({columns(100)})")])
    primary.commit(2)
    before = primary.dump()
    for sql, (phrase, limit) in refused:
        with pytest.raises(SqlError) as raised:
            primary.execute([statement("INSERT INTO t VALUES (1, 2)"), statement(sql)])
        message = raised.value.message
        assert message.startswith(f"D1_ERROR: {phrase}"), message
        assert limit in message and message.endswith(("SQLITE_ERROR", "SQLITE_TOOBIG"))
        assert raised.value.statement_index == 1
        assert primary.dump() == before  # the statement before it was rolled back too
    # The readers hold the same limits (a read at a replica is refused as at the primary).
    with pytest.raises(SqlError, match="string or blob too big"):
        primary.read([statement(f"SELECT randomblob({big + 1})")])
    # ...and what is just within them passes.
    primary.execute(
        [
            statement(f"INSERT INTO t VALUES (randomblob({big - 100}), 1)"),
            statement("SELECT max(" + ", ".join(["1"] * 32) + ")"),
            statement("SELECT 'a' LIKE '" + "a" * 50 + "'"),
        ]
    )
    primary.commit(3)


def test_a_replica_replays_what_the_primary_accepted_whatever_its_size(tmp_path: Path) -> None:
    small = sqldb.Database(tmp_path / "p.sqlite", primary=True, database_bytes_max=256 * 1024)
    replica = sqldb.Database(tmp_path / "r.sqlite", primary=False)
    done = small.execute(
        [statement(f"CREATE TABLE t ({columns(100)})"), statement("INSERT INTO t (c0) VALUES (1)")]
    )
    small.commit(1)
    assert replica.apply(1, done.steps)
    assert replica.dump() == small.dump()
    # A dump reads `rowid, *`: 101 columns of a 100-column table, on the reader.
    assert "table t" in replica.dump()[0]


# -- the database's size ---------------------------------------------------------------------


def test_a_write_past_the_size_limit_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    limit = 512 * 1024
    database = sqldb.Database(tmp_path / "p.sqlite", primary=True, database_bytes_max=limit)
    database.execute([statement("CREATE TABLE t (v BLOB)")])
    database.commit(1)
    database.execute([statement("INSERT INTO t VALUES (randomblob(100000))")])
    database.commit(2)
    before = database.dump()
    with pytest.raises(SqlLimitExceededError) as raised:
        database.execute([statement("INSERT INTO t VALUES (randomblob(600000))")])
    assert status_of(raised.value)[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.message == (
        f"D1_ERROR: database or disk is full: a database holds at most {limit} bytes "
        "(DATABASE_BYTES_MAX): SQLITE_FULL"
    )
    assert database.dump() == before
    assert not database.in_write
    # Smaller writes still fit, up to the limit; the bookkeeping of a commit never fails.
    written = 0
    while True:
        try:
            done = database.execute([statement("INSERT INTO t VALUES (randomblob(30000))")])
        except SqlLimitExceededError:
            break
        assert done.results[0].meta.size_after <= limit
        database.commit(3 + written)
        written += 1
    assert written >= 5
    assert database.dump()[1] == 2 + written


def test_a_group_keeps_its_other_writes_when_one_fills_the_database(tmp_path: Path) -> None:
    origin = Origin(tmp_path, database_bytes_max=256 * 1024)

    async def writes() -> list[object]:
        await origin.sql.create("db")
        await query(origin, "CREATE TABLE t (v)")
        # Queued together, they commit as one group; the middle one would outgrow the
        # database, and SQLite rolls back the whole transaction when it fails.
        return await asyncio.gather(
            query(origin, "INSERT INTO t VALUES ('a')"),
            query(origin, "INSERT INTO t VALUES (randomblob(400000))"),
            query(origin, "INSERT INTO t VALUES ('b')"),
            return_exceptions=True,
        )

    try:
        first, full, last = asyncio.run(_with_committer(origin, writes()))
        assert isinstance(full, SqlLimitExceededError), full
        assert isinstance(first, sql_pb2.SqlQueryResponse)
        assert isinstance(last, sql_pb2.SqlQueryResponse)
        assert first.bookmark < last.bookmark
        read = asyncio.run(query(origin, "SELECT v FROM t ORDER BY rowid"))
        assert sqldb.result_dicts(read.results[0]) == [{"v": "a"}, {"v": "b"}]
    finally:
        origin.close()


# -- a query's duration -----------------------------------------------------------------------

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "


def test_a_query_running_past_its_time_is_interrupted_for_all_its_statements(
    primary: sqldb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqldb, "QUERY_SECONDS_MAX", 0.2)
    before = primary.dump()
    with pytest.raises(SqlLimitExceededError) as raised:
        primary.read([statement("SELECT 1"), statement(RUNAWAY + "SELECT count(*) FROM c")])
    assert raised.value.message.startswith("D1_ERROR: the query ran longer than 0.2 s")
    assert raised.value.statement_index == 1
    # A write interrupted: SQLite drops the whole transaction, nothing of it stays.
    with pytest.raises(SqlLimitExceededError):
        primary.execute(
            [
                statement("INSERT INTO t VALUES (1, 1)"),
                statement(RUNAWAY + "INSERT INTO t SELECT x, x FROM c"),
            ]
        )
    assert not primary.in_write
    assert primary.dump() == before


def test_a_group_keeps_its_other_writes_when_one_is_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqldb, "QUERY_SECONDS_MAX", 0.2)
    origin = Origin(tmp_path)

    async def writes() -> list[object]:
        await origin.sql.create("db")
        await query(origin, "CREATE TABLE t (v)")
        return await asyncio.gather(
            query(origin, "INSERT INTO t VALUES ('a')"),
            # (INSERT first: a query starting with WITH is tried as a read first, and
            # would join the queue late)
            query(origin, "INSERT INTO t " + RUNAWAY + "SELECT x FROM c"),
            query(origin, "INSERT INTO t VALUES ('b')"),
            return_exceptions=True,
        )

    try:
        first, runaway, last = asyncio.run(_with_committer(origin, writes()))
        assert isinstance(runaway, SqlLimitExceededError), runaway
        assert isinstance(first, sql_pb2.SqlQueryResponse), first
        assert isinstance(last, sql_pb2.SqlQueryResponse), last
        read = asyncio.run(query(origin, "SELECT v FROM t ORDER BY rowid"))
        assert sqldb.result_dicts(read.results[0]) == [{"v": "a"}, {"v": "b"}]
    finally:
        origin.close()


def test_a_result_past_its_size_is_refused(
    primary: sqldb.Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqldb, "RESULT_BYTES_MAX", 10_000)
    primary.read([statement("SELECT randomblob(9000)")])
    with pytest.raises(SqlLimitExceededError, match="query result too big"):
        primary.read([statement("SELECT randomblob(6000)"), statement("SELECT randomblob(6000)")])


async def query(origin: Origin, sql: str) -> sql_pb2.SqlQueryResponse:
    return await origin.sql.query(
        sql_pb2.SqlQueryRequest(database="db", statements=[sql_pb2.SqlStatement(sql=sql)])
    )


def test_a_query_with_a_request_id_past_the_limit_is_refused_where_it_enters() -> None:
    # Logged as an LMDB key with its write: past LMDB's key size it once failed the whole
    # group commit, and another client's KvPutMany with it (found by `make fuzz`).
    query = request(statement("INSERT INTO t (v) VALUES (1)"))
    query.request_id = "r" * limits.REQUEST_ID_BYTES_MAX
    sqldb.check_query(query)
    query.request_id = "r" * (limits.REQUEST_ID_BYTES_MAX + 1)
    with pytest.raises(InvalidArgumentError, match="REQUEST_ID_BYTES_MAX"):
        sqldb.check_query(query)
