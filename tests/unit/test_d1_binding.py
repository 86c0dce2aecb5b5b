"""pop_node.workers.d1: the worker binding raises D1's errors, with D1's prefixes, as the
`JsException` a Python Worker on Cloudflare catches; and it counts queries per invocation
(over a stand-in for the PoP's SQL replicas running real SQLite: no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.v1 import sql_pb2
from edgepop import sqldb, worker_api
from edgepop.errors import EdgeError
from edgepop.worker_api import D1Error, ExecutionContext
from pop_node.workers.d1 import D1Binding
from pyodide.ffi import JsException


class Primary:
    """SqlReplicas.query over one primary database file, counting the queries it runs."""

    def __init__(self, path: Path) -> None:
        self.database = sqldb.Database(path, primary=True)
        self.seq = 0
        self.queries = 0

    async def query(
        self, request: sql_pb2.SqlQueryRequest, time_remaining: float | None
    ) -> sql_pb2.SqlQueryResponse:
        sqldb.check_query(request)
        self.queries += 1
        done = self.database.execute(request.statements)
        self.seq += 1
        self.database.commit(self.seq)
        return sql_pb2.SqlQueryResponse(
            results=done.results, bookmark=sqldb.format_bookmark(self.seq)
        )


@pytest.fixture
def primary(tmp_path: Path) -> Iterator[Primary]:
    found = Primary(tmp_path / "db.sqlite")
    yield found
    found.database.close()


@pytest.fixture
def db(primary: Primary) -> D1Binding:
    binding = D1Binding(primary, "db")  # type: ignore[arg-type]
    asyncio.run(binding.exec("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"))
    return binding


def raised(work: Any) -> D1Error:
    with pytest.raises(D1Error) as caught:
        asyncio.run(work)
    error = caught.value
    assert isinstance(error, JsException) and error.name == "Error"
    assert str(error) == error.message  # the prefix at the start, as D1's message has it
    return error


def test_sqlite_errors_are_d1_errors_ending_with_sqlites_code(db: D1Binding) -> None:
    error = raised(db.prepare("SELECT * FROM nope").all())
    assert error.message == "D1_ERROR: no such table: nope: SQLITE_ERROR"
    error = raised(db.prepare("INSERT INTO t (name) VALUES (NULL)").run())
    assert error.message == "D1_ERROR: NOT NULL constraint failed: t.name: SQLITE_CONSTRAINT"
    error = raised(db.prepare("SELECT ?").bind(*range(101)).all())
    assert error.message.startswith("D1_ERROR: too many SQL variables")


def test_a_value_bind_cannot_take_is_d1s_type_error_at_once(
    db: D1Binding, primary: Primary
) -> None:
    queries = primary.queries
    for value, kind in (({"a": 1}, "dict"), ({1}, "set"), ([1], "list"), (2**64, "int")):
        with pytest.raises(D1Error) as caught:
            db.prepare("INSERT INTO t (name) VALUES (?)").bind(value)
        assert caught.value.message.startswith(f"D1_TYPE_ERROR: Type '{kind}' not supported")
    assert primary.queries == queries  # nothing was sent


def test_first_of_a_missing_column_is_d1s_column_not_found(db: D1Binding) -> None:
    asyncio.run(db.prepare("INSERT INTO t (name) VALUES (?)").bind("ada").run())
    assert asyncio.run(db.prepare("SELECT name FROM t").first("name")) == "ada"
    error = raised(db.prepare("SELECT name FROM t").first("age"))
    assert error.message == "D1_COLUMN_NOTFOUND: Column not found (age)"
    # No row: no column to miss, as on D1.
    assert asyncio.run(db.prepare("SELECT name FROM t WHERE 0").first("age")) is None


def test_exec_names_the_failing_statements_line_and_leaves_nothing(
    db: D1Binding, primary: Primary
) -> None:
    before = primary.database.dump()
    error = raised(
        db.exec("INSERT INTO t (name) VALUES ('a');\nINSERTZ INTO t VALUES (1);\nSELECT 1")
    )
    assert error.message == (
        'D1_EXEC_ERROR: Error in line 2: INSERTZ INTO t VALUES (1): near "INSERTZ": '
        "syntax error: SQLITE_ERROR"
    )
    assert primary.database.dump() == before
    assert raised(db.exec("-- only a comment")).message.startswith("D1_EXEC_ERROR")


def test_a_batch_error_rolls_back_the_batch(db: D1Binding, primary: Primary) -> None:
    before = primary.database.dump()
    insert = db.prepare("INSERT INTO t (id, name) VALUES (?, ?)")
    error = raised(db.batch([insert.bind(1, "a"), insert.bind(1, "b")]))
    assert error.message == "D1_ERROR: UNIQUE constraint failed: t.id: SQLITE_CONSTRAINT"
    assert primary.database.dump() == before
    assert raised(db.batch([])).message.startswith("D1_ERROR")


def test_an_invocation_makes_at_most_1000_queries(db: D1Binding, primary: Primary) -> None:
    class Scope:
        context = ExecutionContext()

    async def invocation() -> int:
        token = worker_api.current.set(Scope())  # type: ignore[arg-type]
        try:
            select = db.prepare("SELECT 1")
            for _ in range(sqldb.QUERIES_PER_INVOCATION_MAX - 1):
                await select.all()
            await db.batch([select, select])  # a batch is one query
            sent = primary.queries
            with pytest.raises(D1Error) as caught:
                await select.all()
            assert caught.value.message.startswith(
                "D1_ERROR: Too many API requests by single worker invocation"
            )
            assert primary.queries == sent  # the refused query was not sent
            return sent
        finally:
            worker_api.current.reset(token)

    before = primary.queries
    assert asyncio.run(invocation()) - before == sqldb.QUERIES_PER_INVOCATION_MAX
    # The next invocation starts again from zero; outside one nothing is counted.
    Scope.context = ExecutionContext()
    asyncio.run(invocation())
    asyncio.run(db.prepare("SELECT 1").all())


def test_a_missing_database_is_a_d1_error(primary: Primary) -> None:
    class Missing:
        async def query(self, request: Any, time_remaining: float | None) -> Any:
            raise EdgeError("no database 'gone'")

    error = raised(D1Binding(Missing(), "gone").prepare("SELECT 1").all())  # type: ignore[arg-type]
    assert error.message == "D1_ERROR: no database 'gone'"
