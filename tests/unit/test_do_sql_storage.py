"""pop_node.objects.sql_storage: a call's SQL becomes the object's writes, and a new
instance rebuilt from those writes holds the same database."""

from __future__ import annotations

from typing import Any

import pytest

from pop_node.objects.sql_storage import SqlStorage, SqlStorageError


class Stored:
    """The object's durable keys, as the instance's storage would hold them."""

    def __init__(self) -> None:
        self.keys: dict[bytes, bytes] = {}

    def read(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for k, v in self.keys.items() if k.startswith(prefix))

    def apply(self, writes: dict[bytes, bytes | None]) -> None:
        for key, value in writes.items():
            if value is None:
                self.keys.pop(key, None)
            else:
                self.keys[key] = value

    def call(self, sql: SqlStorage, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
        for statement in statements:
            text, params = statement if isinstance(statement, tuple) else (statement, ())
            sql.exec(text, *params)
        writes: dict[bytes, bytes | None] = {}
        sql.end_call(writes)
        self.apply(writes)


def dump(sql: SqlStorage) -> list[Any]:
    tables = sql.exec("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
    out: list[Any] = []
    for row in tables.toArray():
        out.append(row["name"])
        out.extend(sql.exec(f'SELECT rowid, * FROM "{row["name"]}" ORDER BY rowid').raw())
    sql.abort_call()
    return out


def test_a_rebuilt_instance_holds_what_the_calls_committed() -> None:
    stored = Stored()
    owner = SqlStorage(stored.read)
    stored.call(
        owner,
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT, data BLOB)",
        "CREATE TABLE log (msg TEXT)",
        "CREATE TRIGGER t AFTER INSERT ON items BEGIN INSERT INTO log VALUES (new.name); END",
        ("INSERT INTO items (name, data) VALUES (?, ?)", ("a", b"\x00\xff")),
        ("INSERT INTO items (name) VALUES (?)", ("b",)),
    )
    stored.call(owner, "DELETE FROM items WHERE name = 'a'", "DELETE FROM log")
    stored.call(owner, "ALTER TABLE items ADD COLUMN qty INTEGER DEFAULT 1")
    stored.call(owner, ("UPDATE items SET qty = ? WHERE name = 'b'", (5,)))
    rebuilt = SqlStorage(stored.read)
    assert dump(rebuilt) == dump(owner)
    # The trigger did not run again on rebuild; the AUTOINCREMENT counter came back.
    stored.call(rebuilt, ("INSERT INTO items (name) VALUES (?)", ("c",)))
    rows = rebuilt.exec("SELECT id, name, qty FROM items ORDER BY id").toArray()
    assert rows == [{"id": 2, "name": "b", "qty": 5}, {"id": 3, "name": "c", "qty": 1}]
    assert rebuilt.exec("SELECT msg FROM log").toArray() == [{"msg": "c"}]
    rebuilt.abort_call()


def test_a_failed_call_and_a_raising_transaction_sync_leave_nothing() -> None:
    stored = Stored()
    sql = SqlStorage(stored.read)
    stored.call(sql, "CREATE TABLE c (n INTEGER)", "INSERT INTO c VALUES (1)")
    before = dict(stored.keys)
    sql.exec("INSERT INTO c VALUES (2)")
    sql.abort_call()  # the call raised
    assert sql.exec("SELECT count(*) AS n FROM c").one() == {"n": 1}

    def body() -> None:
        sql.exec("INSERT INTO c VALUES (3)")
        raise ValueError("no")

    with pytest.raises(ValueError):
        sql.transaction_sync(body)
    stored.call(sql)  # the call itself succeeds
    assert stored.keys == before
    assert SqlStorage(stored.read).exec("SELECT n FROM c").toArray() == [{"n": 1}]


def test_cursor_api_and_refusals() -> None:
    stored = Stored()
    sql = SqlStorage(stored.read)
    cursor = sql.exec("SELECT 1 AS a, 'x' AS b UNION ALL SELECT 2, 'y'")
    assert cursor.columnNames == ["a", "b"] and cursor.rowsRead == 2
    assert list(cursor.raw()) == [[1, "x"], [2, "y"]]
    sql.exec("CREATE TABLE t (v)")
    assert sql.exec("INSERT INTO t VALUES (1), (2)").rowsWritten == 2
    with pytest.raises(SqlStorageError, match="exactly one"):
        sql.exec("SELECT v FROM t").one()
    for refused in (
        "BEGIN",
        "ATTACH 'x' AS y",
        "PRAGMA foreign_keys=OFF",
        "CREATE TABLE _cf_x (v)",
    ):
        with pytest.raises(SqlStorageError):
            sql.exec(refused)
    sql.exec("CREATE TABLE w (k PRIMARY KEY) WITHOUT ROWID")
    with pytest.raises(SqlStorageError, match="WITHOUT ROWID"):
        sql.end_call({})
