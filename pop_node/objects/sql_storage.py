"""`ctx.storage.sql` of SQLite-backed Durable Objects (wrangler's `new_sqlite_classes`).

Each instance runs its SQL on an in-memory SQLite database; what makes it durable is the
object's ordinary storage. At the end of every call the rows the call changed are written
as internal keys of the object (one per row) into the call's writes, which then go
through the same gates, group commit and synchronous standby copy as every other write:
RPO 0 and one owner per epoch hold as for key-value storage, and a new owner after a
failover rebuilds the database from those keys. A call is one SQLite transaction: if it
raises, nothing of its SQL stays (nor of its key-value writes). `transactionSync(fn)` is
a savepoint inside it.

Which rows changed: SQLite's update hook (rowid tables; WITHOUT ROWID tables are refused),
with the truncate optimisation of `DELETE FROM t` turned off by the authorizer so every
deleted row is reported. A schema change rewrites the schema key and every table's rows.

Keys (under the runtime's internal prefix, so `list()` never shows them):
  \\x00sql/schema              -> JSON list of the schema statements, in creation order
  \\x00sql/seq                 -> JSON of sqlite_sequence (AUTOINCREMENT counters)
  \\x00sql/r/<table>\\x00<rowid> -> JSON of the row (rowid as 8 bytes, ordered)
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import apsw

from edgepop.errors import InvalidArgumentError
from edgepop.sqldb import DDL_ACTIONS
from pop_node.objects.store import INTERNAL_PREFIX

T = TypeVar("T")

SQL_PREFIX = INTERNAL_PREFIX + b"sql/"
SCHEMA_KEY = SQL_PREFIX + b"schema"
SEQUENCES_KEY = SQL_PREFIX + b"seq"
ROW_PREFIX = SQL_PREFIX + b"r/"
_ROWID = struct.Struct(">Q")
_ROWID_OFFSET = 1 << 63  # signed rowids, ordered as unsigned bytes
# Cloudflare reserves table names starting with _cf_.
RESERVED_PREFIX = "_cf_"

_REFUSED = {
    apsw.SQLITE_ATTACH: "ATTACH",
    apsw.SQLITE_DETACH: "DETACH",
    apsw.SQLITE_TRANSACTION: "BEGIN/COMMIT/ROLLBACK (use transactionSync)",
    apsw.SQLITE_SAVEPOINT: "SAVEPOINT (use transactionSync)",
}


class SqlStorageError(InvalidArgumentError):
    """A statement of `ctx.storage.sql.exec` failed (SQLite's message)."""


def row_key(table: str, rowid: int) -> bytes:
    return ROW_PREFIX + table.encode() + b"\x00" + _ROWID.pack(rowid + _ROWID_OFFSET)


def _encode_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b": base64.b64encode(value).decode()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        return base64.b64decode(value["b"])
    return value


class SqlCursor:
    """What `exec` returns (Cloudflare's SqlStorageCursor), its rows read at once."""

    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]], written: int) -> None:
        self.columnNames = columns
        self.rowsRead = len(rows)
        self.rowsWritten = written
        self._rows = rows
        self._next = 0

    column_names = property(lambda self: self.columnNames)
    rows_read = property(lambda self: self.rowsRead)
    rows_written = property(lambda self: self.rowsWritten)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self._next < len(self._rows):
            row = self._rows[self._next]
            self._next += 1
            yield dict(zip(self.columnNames, row, strict=True))

    def next(self) -> dict[str, Any]:
        """{"done": bool, "value": row}, as a JavaScript iterator answers."""
        for row in self:
            return {"done": False, "value": row}
        return {"done": True}

    def toArray(self) -> list[dict[str, Any]]:
        return list(self)

    to_array = toArray

    def one(self) -> dict[str, Any]:
        rows = list(self)
        if len(rows) != 1:
            raise SqlStorageError(f"Expected exactly one result from SQL query, got {len(rows)}")
        return rows[0]

    def raw(self) -> Iterator[list[Any]]:
        while self._next < len(self._rows):
            row = self._rows[self._next]
            self._next += 1
            yield list(row)


class SqlStorage:
    """One object's SQL database: in memory, made durable through the object's writes."""

    def __init__(self, read_internal: Callable[[bytes], list[tuple[bytes, bytes]]]) -> None:
        """`read_internal(prefix)`: the object's stored (key, value) pairs under `prefix`,
        as its storage sees them now (durable, pending and the current call's writes)."""
        self._read_internal = read_internal
        self._connection: apsw.Connection | None = None
        self._dirty: set[tuple[str, int]] = set()
        self._schema_changed = False
        self._in_call = False
        # True while a user's statement runs: the authorizer checks only those.
        self._user = False

    # -- the API (Cloudflare's names) ----------------------------------------------------------

    def exec(self, query: str, *bindings: Any) -> SqlCursor:
        connection = self._open_call()
        cursor = connection.cursor()
        columns: list[str] = []

        def trace(traced: apsw.Cursor, _sql: str, _bindings: Any) -> bool:
            nonlocal columns
            try:
                columns = [column[0] for column in traced.get_description()]
            except apsw.ExecutionCompleteError:
                columns = []
            return True

        cursor.exec_trace = trace
        before = connection.total_changes()
        self._user = True
        try:
            rows = list(cursor.execute(query, bindings))
        except apsw.Error as error:
            raise SqlStorageError(f"{error}: {type(error).__name__}") from None
        finally:
            self._user = False
            cursor.close()
        return SqlCursor(columns, rows, connection.total_changes() - before)

    @property
    def databaseSize(self) -> int:
        connection = self._database()
        pages = connection.execute("PRAGMA page_count").fetchone()
        size = connection.execute("PRAGMA page_size").fetchone()
        return int(pages[0]) * int(size[0]) if pages and size else 0

    database_size = databaseSize

    def transaction_sync(self, body: Callable[[], T]) -> T:
        """Run `body` atomically: if it raises, none of its SQL stays."""
        connection = self._open_call()
        connection.execute("SAVEPOINT transaction_sync")
        try:
            result = body()
        except BaseException:
            connection.execute("ROLLBACK TO transaction_sync")
            connection.execute("RELEASE transaction_sync")
            raise
        connection.execute("RELEASE transaction_sync")
        return result

    # -- the call's transaction ----------------------------------------------------------------

    def _database(self) -> apsw.Connection:
        if self._connection is None:
            self._connection = self._load()
        return self._connection

    def _open_call(self) -> apsw.Connection:
        connection = self._database()
        if not self._in_call:
            connection.execute("BEGIN")
            self._in_call = True
        return connection

    def end_call(self, writes: dict[bytes, bytes | None] | None) -> None:
        """The call succeeded: its changed rows go into `writes`, then it commits here."""
        if not self._in_call:
            return
        connection = self._database()
        if writes is not None:
            writes.update(self._changes(connection))
        connection.execute("COMMIT")
        self._in_call = False
        self._reset_tracking()

    def abort_call(self) -> None:
        """The call failed: nothing of its SQL stays."""
        if self._in_call and self._connection is not None:
            self._connection.execute("ROLLBACK")
        self._in_call = False
        self._reset_tracking()

    def forget(self) -> None:
        """Drop the in-memory copy (the instance is stopping): reloaded from storage."""
        if self._connection is not None:
            self._connection.close()
        self._connection = None
        self._in_call = False
        self._reset_tracking()

    def _reset_tracking(self) -> None:
        self._dirty = set()
        self._schema_changed = False

    # -- changes -> writes ---------------------------------------------------------------------

    def _changes(self, connection: apsw.Connection) -> dict[bytes, bytes | None]:
        writes: dict[bytes, bytes | None] = {}
        tables = _tables(connection)
        if self._schema_changed:
            schema = [
                sql
                for (sql,) in connection.execute(
                    "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL "
                    "AND name != 'sqlite_sequence' ORDER BY rowid"
                )
            ]
            writes[SCHEMA_KEY] = json.dumps(schema).encode()
            # Every stored row is rewritten: columns may have moved, tables gone.
            for key, _ in self._read_internal(ROW_PREFIX):
                writes[key] = None
            for table in tables:
                for row in connection.execute(f"SELECT rowid, * FROM {_quote(table)}"):
                    writes[row_key(table, int(row[0]))] = _encode_row(connection, table, row)
        else:
            for table, rowid in self._dirty:
                if table not in tables:
                    continue
                row = connection.execute(
                    f"SELECT rowid, * FROM {_quote(table)} WHERE rowid = ?", (rowid,)
                ).fetchone()
                key = row_key(table, rowid)
                writes[key] = None if row is None else _encode_row(connection, table, row)
        if "sqlite_sequence" in _all_tables(connection):
            sequences = list(connection.execute("SELECT name, seq FROM sqlite_sequence"))
            writes[SEQUENCES_KEY] = json.dumps(sorted(sequences)).encode()
        return writes

    def _on_update(self, _kind: int, _database: str, table: str, rowid: int) -> None:
        if table != "sqlite_sequence":
            self._dirty.add((table, rowid))

    def _authorize(self, action: int, one: Any, two: Any, _db: Any, _trigger: Any) -> int:
        if not self._user:  # our own statements
            return apsw.SQLITE_OK
        table = one if isinstance(one, str) else ""
        if action in _REFUSED:
            return apsw.SQLITE_DENY
        if table.startswith(RESERVED_PREFIX) and action != apsw.SQLITE_READ:
            return apsw.SQLITE_DENY
        if action == apsw.SQLITE_PRAGMA and two is not None:
            return apsw.SQLITE_DENY  # setting one would not survive a reload
        if action in DDL_ACTIONS:
            self._schema_changed = True
        if action == apsw.SQLITE_DELETE and table and not table.startswith("sqlite_"):
            # IGNORE turns off the truncate optimisation: each deleted row is reported.
            return apsw.SQLITE_IGNORE
        return apsw.SQLITE_OK

    # -- loading -------------------------------------------------------------------------------

    def _load(self) -> apsw.Connection:
        connection = apsw.Connection(":memory:", statementcachesize=0)
        # Rows are put back as stored: triggers already ran when they were written.
        connection.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        stored = dict(self._read_internal(SQL_PREFIX))
        schema = json.loads(stored.get(SCHEMA_KEY, b"[]"))
        for statement in schema:
            connection.execute(statement)
        for key, value in stored.items():
            if not key.startswith(ROW_PREFIX):
                continue
            row = json.loads(value)
            table = key[len(ROW_PREFIX) :].split(b"\x00", 1)[0].decode()
            columns = ", ".join(["rowid", *(_quote(name) for name in row["c"])])
            marks = ", ".join("?" * (len(row["c"]) + 1))
            connection.execute(
                f"INSERT INTO {_quote(table)} ({columns}) VALUES ({marks})",
                [row["r"], *(_decode_value(value) for value in row["v"])],
            )
        if SEQUENCES_KEY in stored and "sqlite_sequence" in _all_tables(connection):
            connection.execute("DELETE FROM sqlite_sequence")
            for name, seq in json.loads(stored[SEQUENCES_KEY]):
                connection.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (name, seq)
                )
        connection.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
        connection.execute("PRAGMA foreign_keys=ON")
        connection.authorizer = self._authorize
        connection.set_update_hook(self._on_update)
        return connection


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _all_tables(connection: apsw.Connection) -> set[str]:
    return {
        str(name)
        for (name,) in connection.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    }


def _tables(connection: apsw.Connection) -> list[str]:
    """The user's tables (rowid tables only: WITHOUT ROWID is refused at creation)."""
    tables = []
    for name, sql in connection.execute(
        "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    ):
        if "WITHOUT ROWID" in str(sql).upper():
            raise SqlStorageError(
                f"table {name!r}: WITHOUT ROWID tables are not supported in Durable Objects"
            )
        tables.append(str(name))
    return tables


def _encode_row(connection: apsw.Connection, table: str, row: Sequence[Any]) -> bytes:
    columns = [
        str(column[1]) for column in connection.execute(f"PRAGMA table_info({_quote(table)})")
    ]
    return json.dumps(
        {"r": row[0], "c": columns, "v": [_encode_value(value) for value in row[1:]]}
    ).encode()
