"""SQLite databases for D1-style SQL: the primary's transactions, the replicas' replay, dumps.

Storage logic only (no sockets, no event loop): the origin runs the primary of each
database with it, every PoP a replica, and the unit tests run both side by side.

Replication ships the primary's effects, not its statements (a statement calling
`random()` or `datetime('now')` would diverge): a write transaction runs at the primary
with SQLite's session extension recording every row it changes, and what goes into the
replication log is a list of steps, replayed in order at every replica in one
transaction:

- `changeset`: the row changes (rowid tables included, by rowid);
- `ddl`: a schema statement, which changesets do not carry. A transaction is cut into
  changesets around each one (a changeset describes rows in the schema it was taken
  under). Schema statements are deterministic, except `CREATE TABLE ... AS SELECT` over a
  non-deterministic query, which is refused;
- `sequences`: AUTOINCREMENT counters (sqlite_sequence is not in changesets).

Replicas replay with triggers disabled (their effects are already in the changeset) and
foreign keys off (cascades too). Each database records the seq of the last commit it
holds in `_edgepop_meta`, in the same SQLite transaction as the data, so replay is
exactly once across crashes: a step whose seq is not above it is skipped.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from edge.v1 import sql_pb2
from edgepop import limits
from edgepop.errors import (
    D1_TYPE_ERROR,
    InvalidArgumentError,
    NotFoundError,
    SqlError,
    SqlLimitExceededError,
)
from edgepop.topology import DEFAULT_SQL_DATABASE_BYTES_MAX

DATABASE_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# D1's limits (https://developers.cloudflare.com/d1/platform/limits/, Workers Paid, as of
# April 2026). Those a request carries are checked where it enters (`check_query`, at the
# PoP and again at the origin); the rest SQLite enforces itself (`SQLITE_LIMITS`).
#
# Ours, not D1's (D1 documents no count): statements in one query or batch.
STATEMENTS_PER_QUERY_MAX = 50
# "Maximum SQL statement length": 100,000 bytes.
SQL_BYTES_MAX = 100_000
# "Maximum bound parameters per query": 100 (we count per statement, as SQLite binds).
PARAMS_PER_STATEMENT_MAX = 100
# "Maximum string, BLOB or table row size": 2,000,000 bytes.
VALUE_BYTES_MAX = 2_000_000
# "Maximum number of columns per table": 100.
COLUMNS_PER_TABLE_MAX = 100
# "Maximum arguments per SQL function": 32.
FUNCTION_ARGS_MAX = 32
# "Maximum characters (bytes) in a LIKE or GLOB pattern": 50.
LIKE_PATTERN_BYTES_MAX = 50
# "Maximum query result size": 50 MB (all of one query's results, as they go on the wire).
RESULT_BYTES_MAX = 50_000_000
# "Maximum database size": 10 GB, the origin's default; the topology's
# `sql.database_bytes_max` sets another (a test fills a small one).
DATABASE_BYTES_MAX_DEFAULT = DEFAULT_SQL_DATABASE_BYTES_MAX
# "Queries per Worker invocation": 1,000 (a statement or a batch is one query), counted
# by the worker binding.
QUERIES_PER_INVOCATION_MAX = 1000
# "Maximum SQL query duration": 30 s for one query (all of its statements), checked every
# PROGRESS_STEPS virtual-machine steps.
QUERY_SECONDS_MAX = 30.0
PROGRESS_STEPS = 10_000
# The same limits as SQLite's run-time limits, on every connection that runs a user's SQL
# (SQLite's message then names what was refused; see Database.__init__ for which).
SQLITE_LIMITS = {
    apsw.SQLITE_LIMIT_SQL_LENGTH: SQL_BYTES_MAX,
    apsw.SQLITE_LIMIT_VARIABLE_NUMBER: PARAMS_PER_STATEMENT_MAX,
    apsw.SQLITE_LIMIT_LENGTH: VALUE_BYTES_MAX,
    apsw.SQLITE_LIMIT_FUNCTION_ARG: FUNCTION_ARGS_MAX,
    apsw.SQLITE_LIMIT_LIKE_PATTERN_LENGTH: LIKE_PATTERN_BYTES_MAX,
}
# A table's columns are limited where tables are made (the primary's writer) only: the
# limit also caps a result's columns, and a dump reads `rowid, *` (one more than a table's).
SQLITE_WRITER_LIMITS = {**SQLITE_LIMITS, apsw.SQLITE_LIMIT_COLUMN: COLUMNS_PER_TABLE_MAX}
# SQLite's own ceiling on max_page_count: while our own statements run (`_unlimited`).
_PAGES_UNLIMITED = 4_294_967_294
# A commit this close to the size limit (in pages) lifts it for its bookkeeping.
COMMIT_PAGES_MARGIN = 16
# The table each database keeps its own replication position in; users cannot touch it.
META_TABLE = "_edgepop_meta"
FILE_SUFFIX = ".sqlite"

# SQLite authorizer actions that change the schema.
DDL_ACTIONS = frozenset(
    {
        apsw.SQLITE_CREATE_TABLE,
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_VIEW,
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TRIGGER,
        apsw.SQLITE_DROP_VIEW,
        apsw.SQLITE_ALTER_TABLE,
        apsw.SQLITE_CREATE_VTABLE,
        apsw.SQLITE_DROP_VTABLE,
    }
)
_WRITE_ACTIONS = DDL_ACTIONS | {apsw.SQLITE_INSERT, apsw.SQLITE_UPDATE, apsw.SQLITE_DELETE}
# Per-connection state would outlive the request and differ between primary and replicas.
_REFUSED_ACTIONS = {
    apsw.SQLITE_CREATE_TEMP_TABLE: "temporary tables",
    apsw.SQLITE_CREATE_TEMP_INDEX: "temporary indexes",
    apsw.SQLITE_CREATE_TEMP_TRIGGER: "temporary triggers",
    apsw.SQLITE_CREATE_TEMP_VIEW: "temporary views",
    apsw.SQLITE_DROP_TEMP_TABLE: "temporary tables",
    apsw.SQLITE_DROP_TEMP_INDEX: "temporary indexes",
    apsw.SQLITE_DROP_TEMP_TRIGGER: "temporary triggers",
    apsw.SQLITE_DROP_TEMP_VIEW: "temporary views",
    apsw.SQLITE_ATTACH: "ATTACH",
    apsw.SQLITE_DETACH: "DETACH",
    # D1: a query or batch is one transaction; statements cannot open their own.
    apsw.SQLITE_TRANSACTION: "BEGIN/COMMIT/ROLLBACK (a batch is one transaction)",
    apsw.SQLITE_SAVEPOINT: "SAVEPOINT (a batch is one transaction)",
}
# Pragmas a query may read. These take a table or index name as their argument (and
# SQLite's session extension reads table_xinfo itself)...
_ARGUMENT_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "integrity_check",
        "quick_check",
    }
)
# ...and these only without a value: set, they would change one copy only.
_VALUE_PRAGMAS = frozenset(
    {
        "page_count",
        "page_size",
        "freelist_count",
        "user_version",
        "schema_version",
        "collation_list",
        "function_list",
        "pragma_list",
        "database_list",
        "foreign_keys",
    }
)


def check_database_name(name: str) -> str:
    if not DATABASE_NAME_PATTERN.fullmatch(name):
        raise InvalidArgumentError(
            f"database name {name[:80]!r}: 1-64 characters of A-Z a-z 0-9 _ - "
            "(DATABASE_NAME_PATTERN)"
        )
    return name


def check_query(request: sql_pb2.SqlQueryRequest) -> None:
    """The request's limits, before it goes anywhere: INVALID_ARGUMENT, worded as D1 words
    it (a D1 prefix, SQLite's phrase and result code) and naming our limit."""
    check_database_name(request.database)
    # Logged as an LMDB key with the write: one too long would fail its whole group.
    limits.check_request_id(request.request_id)
    if not request.statements:
        raise SqlError("no SQL statement: a query needs at least one")
    if len(request.statements) > STATEMENTS_PER_QUERY_MAX:
        raise SqlError(
            f"too many statements: {len(request.statements)}, at most "
            f"{STATEMENTS_PER_QUERY_MAX} per query or batch (STATEMENTS_PER_QUERY_MAX)"
        )
    for index, statement in enumerate(request.statements):
        check_statement(statement, index)


def check_statement(statement: sql_pb2.SqlStatement, index: int = 0) -> None:
    """One statement's limits; `index` is its place in the query (the error names it)."""
    size = len(statement.sql.encode())
    if size == 0 or not statement.sql.strip():
        raise SqlError("empty SQL statement", index)
    if "\x00" in statement.sql:
        # SQLite's tokenizer has no token for it; apsw refuses the text before SQLite sees it.
        raise SqlError(
            f"unrecognized token: a NUL character at offset {statement.sql.index(chr(0))} of "
            "the SQL text: SQLITE_ERROR",
            index,
        )
    if size > SQL_BYTES_MAX:
        raise SqlError(
            f"statement too long: {size} bytes, at most {SQL_BYTES_MAX} (SQL_BYTES_MAX): "
            "SQLITE_TOOBIG",
            index,
        )
    if len(statement.params) > PARAMS_PER_STATEMENT_MAX:
        raise SqlError(
            f"too many SQL variables: {len(statement.params)} bound parameters, at most "
            f"{PARAMS_PER_STATEMENT_MAX} (PARAMS_PER_STATEMENT_MAX): SQLITE_ERROR",
            index,
        )
    for param in statement.params:
        kind = param.WhichOneof("kind")
        # A text's UTF-8 is at most 4 bytes a character: short ones are not encoded.
        if kind == "text" and len(param.text) * 4 > VALUE_BYTES_MAX:
            size = len(param.text.encode())
        elif kind == "blob":
            size = len(param.blob)
        else:
            continue
        if size > VALUE_BYTES_MAX:
            raise SqlError(
                f"string or blob too big: a bound {kind} of {size} bytes, at most "
                f"{VALUE_BYTES_MAX} (VALUE_BYTES_MAX): SQLITE_TOOBIG",
                index,
            )


def split_statements(sql: str) -> list[str]:
    """SQL text cut into complete statements (a ';' inside a string or a trigger's body
    does not end one). A trailing statement without ';' counts too. Text holding a NUL
    character is one statement, which `check_statement` refuses (apsw cannot look into it)."""
    if "\x00" in sql:
        return [sql]
    statements: list[str] = []
    start = 0
    for index, char in enumerate(sql):
        if char == ";" and apsw.complete(sql[start : index + 1]):
            statement = sql[start : index + 1].strip()
            if statement.strip("; \t\r\n"):
                statements.append(statement)
            start = index + 1
    rest = sql[start:].strip()
    if rest and not _only_comments(rest):
        statements.append(rest)
    return statements


def _only_comments(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines()]
    return all(not line or line.startswith("--") for line in lines)


_READ_KEYWORDS = ("select", "with", "pragma", "explain", "values")


def may_read_only(statements: Sequence[sql_pb2.SqlStatement]) -> bool:
    """Whether statements may be read-only, by their first words: a query that starts
    with INSERT, UPDATE, CREATE, ... skips the read-only attempt (a thread hop). Only a
    shortcut: what is tried read-only is refused before it writes anything."""
    for statement in statements:
        words = statement.sql.lstrip(" \t\r\n(").split(None, 1)
        if not words or words[0].lower() not in _READ_KEYWORDS:
            return False
    return True


# -- bookmarks -------------------------------------------------------------------------------


def format_bookmark(seq: int) -> str:
    """A bookmark: the log seq of a version, as a fixed-width string (ordered as text too)."""
    return f"{seq:016x}"


def parse_bookmark(bookmark: str) -> int:
    try:
        if len(bookmark) != 16:
            raise ValueError
        return int(bookmark, 16)
    except ValueError:
        raise InvalidArgumentError(f"malformed bookmark {bookmark[:40]!r}") from None


# -- values ----------------------------------------------------------------------------------


def to_python(value: sql_pb2.SqlValue) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None or kind == "null":
        return None
    return getattr(value, kind)


# The range of a SQLite INTEGER (and of SqlValue.integer).
_INTEGER_MIN, _INTEGER_MAX = -(2**63), 2**63 - 1


def to_value(value: Any) -> sql_pb2.SqlValue:
    """A Python value bound to a statement. What SQLite cannot store is D1's type error
    (InvalidArgumentError "D1_TYPE_ERROR: Type 'dict' not supported for value ...")."""
    if value is None:
        return sql_pb2.SqlValue(null=True)
    if isinstance(value, bool):
        return sql_pb2.SqlValue(integer=int(value))
    if isinstance(value, int):
        if not _INTEGER_MIN <= value <= _INTEGER_MAX:
            raise InvalidArgumentError(
                f"{D1_TYPE_ERROR}: Type 'int' not supported for value {value}: "
                "outside SQLite's 64-bit integers"
            )
        return sql_pb2.SqlValue(integer=value)
    if isinstance(value, float):
        return sql_pb2.SqlValue(real=value)
    if isinstance(value, str):
        return sql_pb2.SqlValue(text=value)
    if isinstance(value, bytes | bytearray | memoryview):
        return sql_pb2.SqlValue(blob=bytes(value))
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise InvalidArgumentError(
        f"{D1_TYPE_ERROR}: Type '{type(value).__name__}' not supported for value {shown}"
    )


def result_dicts(result: sql_pb2.SqlResult) -> list[dict[str, Any]]:
    """A result's rows as D1 returns them: one dict per row, by column name."""
    return [
        {name: to_python(value) for name, value in zip(result.columns, row.values, strict=True)}
        for row in result.rows
    ]


# -- one database ----------------------------------------------------------------------------


class WriteNeeded(Exception):
    """A read-only execution met a statement that writes: the primary must run it."""


@dataclass
class _Execution:
    """What the authorizer and the statement tracer learn while a query runs."""

    read_only: bool
    wrote: bool = False
    ddl_pending: bool = False
    # The statement being prepared creates a table: a SELECT in it makes it a CREATE
    # TABLE ... AS SELECT (SQLite's parser says so; reset by the tracer per statement).
    creating_table: bool = False
    refused: str = ""
    # The session extension's own queries (schema reads, changesets) are not the user's.
    internal: bool = False


@dataclass
class WriteResult:
    results: list[sql_pb2.SqlResult]
    steps: list[sql_pb2.SqlStep] = field(default_factory=list)


class Database:
    """One SQLite database file: the primary's (`primary=True`) or a replica's.

    Not thread-safe: the role runs every call for one database on one thread, except
    `read`, which uses its own read-only connection (WAL: readers never block the writer).
    """

    def __init__(
        self, path: Path, *, primary: bool, database_bytes_max: int = DATABASE_BYTES_MAX_DEFAULT
    ) -> None:
        self.path = path
        self.primary = primary
        self.name = path.name.removesuffix(FILE_SUFFIX)
        # No statement cache: a cached statement is not prepared again, so the authorizer
        # would not see a user's statement whose text matches one of ours.
        self._writer = apsw.Connection(str(path), statementcachesize=0)
        self._writer.execute("PRAGMA journal_mode=WAL")
        # The primary acknowledges a write once it is on disk (with the log's fsync);
        # a replica, like the KV replica, is re-fed from the log after a machine crash.
        self._writer.execute(f"PRAGMA synchronous={'FULL' if primary else 'NORMAL'}")
        self._writer.execute(
            f"CREATE TABLE IF NOT EXISTS {META_TABLE}(key TEXT PRIMARY KEY, value)"
        )
        if primary:
            self._writer.execute("PRAGMA foreign_keys=ON")  # D1 enforces them
        else:
            # Replay: the changesets already hold what triggers and cascades did.
            self._writer.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
        self._execution: _Execution | None = None
        self._writer.authorizer = self._authorize
        self._reader = apsw.Connection(
            str(path), flags=apsw.SQLITE_OPEN_READONLY, statementcachesize=0
        )
        self._reader.authorizer = self._authorize_read
        self._read_execution: _Execution | None = None
        self._in_write = False
        self.applied_seq = self._read_applied_seq()
        page_size = self._writer.execute("PRAGMA page_size").fetchone()
        self._page_size = int(page_size[0]) if page_size else 4096
        # D1's limits, enforced by SQLite where a user's SQL runs: the primary's writer
        # and every reader. Not on a replica's writer: what it replays already passed them
        # at the primary, and replay must never be refused.
        for limit, value in SQLITE_LIMITS.items():
            self._reader.limit(limit, value)
        self.database_bytes_max = database_bytes_max
        self._max_pages = max(1, database_bytes_max // self._page_size)
        # The writer's page count after its last statement (what `commit` looks at).
        self._writer_pages = 0
        # SQLite's own limits, for our statements (see `_unlimited`).
        self._sqlite_limits = {limit: self._writer.limit(limit) for limit in SQLITE_WRITER_LIMITS}
        if primary:
            self._limit_writer(True)
        # Whether sqlite_sequence exists (None: to be looked up; see _sequences).
        self._has_sequences: bool | None = None

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    @property
    def in_write(self) -> bool:
        """Whether the primary's write transaction is open (SQLite may end it itself: an
        SQLITE_FULL or an interrupted write rolls the whole transaction back)."""
        return self._in_write

    def _limit_writer(self, limited: bool, *, size: bool = True) -> None:
        """D1's limits on the primary's writer (`limited`), or SQLite's own; `size` too,
        the database's: a write that would grow the file past it fails with SQLITE_FULL
        before it changes anything (SQLite counts pages as it allocates them)."""
        limits = SQLITE_WRITER_LIMITS if limited else self._sqlite_limits
        for limit, value in limits.items():
            self._writer.limit(limit, value)
        if size:
            pages = self._max_pages if limited else _PAGES_UNLIMITED
            self._writer.execute(f"PRAGMA max_page_count={pages}").fetchall()

    @contextlib.contextmanager
    def _unlimited(self, *, size: bool = True) -> Iterator[None]:
        """Our own statements on the primary's writer, free of the user's limits: a
        logged commit's bookkeeping and replay (logged: they must apply), and the session
        extension's (a changeset of a 100-column table reads `rowid` and 100 columns;
        it writes nothing, `size=False` spares the pragma)."""
        if not self.primary:
            yield
            return
        self._limit_writer(False, size=size)
        try:
            yield
        finally:
            self._limit_writer(True, size=size)

    def _read_applied_seq(self) -> int:
        row = self._writer.execute(
            f"SELECT value FROM {META_TABLE} WHERE key = 'applied_seq'"
        ).fetchone()
        return int(row[0]) if row else 0

    # -- the authorizer: what statements may do --------------------------------------------

    def _check(self, execution: _Execution | None, action: int, one: Any, two: Any) -> int:
        if execution is None or execution.internal:  # our own statements
            return apsw.SQLITE_OK
        if action == apsw.SQLITE_CREATE_TABLE:
            execution.creating_table = True
        elif action == apsw.SQLITE_SELECT and execution.creating_table:
            execution.refused = (
                "CREATE TABLE ... AS SELECT (its rows would be computed again at every "
                "replica): create the table, then INSERT ... SELECT"
            )
            return apsw.SQLITE_DENY
        table = one if isinstance(one, str) else ""
        touches_rows = action in (
            apsw.SQLITE_READ,
            apsw.SQLITE_INSERT,
            apsw.SQLITE_UPDATE,
            apsw.SQLITE_DELETE,
        )
        if touches_rows and table.lower() == META_TABLE:
            execution.refused = f"access to {META_TABLE} (reserved)"
            return apsw.SQLITE_DENY
        if action in _REFUSED_ACTIONS:
            execution.refused = _REFUSED_ACTIONS[action]
            return apsw.SQLITE_DENY
        if action == apsw.SQLITE_PRAGMA:
            pragma = str(one).lower()
            if pragma not in _ARGUMENT_PRAGMAS and (
                pragma not in _VALUE_PRAGMAS or two is not None
            ):
                execution.refused = f"PRAGMA {one}{'=' + str(two) if two is not None else ''}"
                return apsw.SQLITE_DENY
        if action in _WRITE_ACTIONS:
            if execution.read_only:
                execution.wrote = True  # the caller turns the denial into WriteNeeded
                return apsw.SQLITE_DENY
            if action in DDL_ACTIONS and table.lower() == META_TABLE:
                execution.refused = f"changing {META_TABLE} (reserved)"
                return apsw.SQLITE_DENY
            if action in DDL_ACTIONS:
                execution.ddl_pending = True
        return apsw.SQLITE_OK

    def _authorize(self, action: int, one: Any, two: Any, _db: Any, _trigger: Any) -> int:
        return self._check(self._execution, action, one, two)

    def _authorize_read(self, action: int, one: Any, two: Any, _db: Any, _trigger: Any) -> int:
        return self._check(self._read_execution, action, one, two)

    # -- reads -----------------------------------------------------------------------------

    def read(
        self, statements: Sequence[sql_pb2.SqlStatement]
    ) -> tuple[list[sql_pb2.SqlResult], int]:
        """Run read-only statements in one read transaction; (results, applied_seq).

        Raises WriteNeeded as soon as a statement would write (nothing was changed).
        """
        connection = self._reader
        connection.execute("BEGIN")
        try:
            seq_row = connection.execute(
                f"SELECT value FROM {META_TABLE} WHERE key = 'applied_seq'"
            ).fetchone()
            execution = _Execution(read_only=True)
            self._read_execution = execution
            try:
                results = self._run_all(connection, execution, statements, None)
            finally:
                self._read_execution = None
        finally:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        return results, int(seq_row[0]) if seq_row else 0

    # -- the primary's writes ----------------------------------------------------------------

    def begin(self) -> None:
        """Open the primary's write transaction for `run` calls; `commit(seq)` or
        `rollback()` ends it."""
        if not self.primary:
            raise RuntimeError("only the primary executes writes")
        if self._in_write:
            raise RuntimeError("a write transaction is already open")
        self._writer.execute("BEGIN IMMEDIATE")
        self._in_write = True

    def run(self, statements: Sequence[sql_pb2.SqlStatement]) -> WriteResult:
        """One request's statements inside the open transaction, all or nothing (a
        savepoint): its results and steps, or its error with nothing of it left."""
        if not self._in_write:
            raise RuntimeError("no write transaction is open")
        connection = self._writer
        connection.execute("SAVEPOINT request")
        sequences_before = self._sequences()
        execution = _Execution(read_only=False)
        recorder = _StepRecorder(connection, execution, lambda: self._unlimited(size=False))
        self._execution = execution
        try:
            results = self._run_all(connection, execution, statements, recorder)
            recorder.flush()
        except BaseException:
            self._execution = None
            recorder.close()
            self._has_sequences = None
            if connection.in_transaction:
                connection.execute("ROLLBACK TO request")
                connection.execute("RELEASE request")
            else:
                # SQLite rolled the whole transaction back (SQLITE_FULL, an interrupted
                # write): the caller's other writes in it are gone too (see `in_write`).
                self._in_write = False
            raise
        self._execution = None
        recorder.close()
        connection.execute("RELEASE request")
        if recorder.ddl_seen:
            self._has_sequences = None
        steps = recorder.steps
        sequences_after = self._sequences()
        if sequences_after != sequences_before:
            steps.append(_sequences_step(sequences_after))
        return WriteResult(results=results, steps=steps)

    def execute(self, statements: Sequence[sql_pb2.SqlStatement]) -> WriteResult:
        """`begin` and `run` for one request: the transaction stays open; the caller logs
        the steps, then calls `commit(seq)` (or `rollback()` if the log refused them)."""
        self.begin()
        try:
            return self.run(statements)
        except BaseException:
            self.rollback()
            raise

    def commit(self, seq: int) -> None:
        """Commit the open write transaction as the log entry `seq`.

        The write is logged already: our bookkeeping must not fail on the size limit. It
        updates one small row in place, so it needs no new page; near the limit it runs
        without it all the same (lifting it costs two pragmas, ~15 us, on every commit).
        """
        near_limit = self._writer_pages + COMMIT_PAGES_MARGIN >= self._max_pages
        try:
            with self._unlimited() if near_limit else contextlib.nullcontext():
                self._set_applied_seq(seq)
                self._writer.execute("COMMIT")
        except BaseException:
            # A COMMIT that fails on the disk (an I/O error, a full disk) may have rolled
            # the transaction back already: end it either way, holding nothing of it.
            self.rollback()
            raise
        self._in_write = False
        self.applied_seq = seq

    def rollback(self) -> None:
        """End the open write transaction, keeping nothing of it (SQLite may have ended
        it itself: a failed COMMIT or an SQLITE_FULL rolls back)."""
        if self._in_write:
            self._in_write = False
            self._has_sequences = None
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")

    # -- the replicas' replay ------------------------------------------------------------------

    def apply(
        self,
        seq: int,
        steps: Sequence[sql_pb2.SqlStep],
        created: sql_pb2.SqlDatabase | None = None,
    ) -> bool:
        """Replay one logged commit (or a database's creation, `created`); False when this
        copy already holds it (exactly once).

        Replicas replay everything; the primary only what it logged but had not committed
        when the origin stopped. Triggers and foreign-key actions do not run: their
        effects are in the changesets.
        """
        if seq <= self.applied_seq:
            return False
        connection = self._writer
        if self.primary:
            connection.execute("PRAGMA foreign_keys=OFF")  # no-op inside a transaction
            connection.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 0)
            self._limit_writer(False)  # logged: it must apply
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for step in steps:
                    kind = step.WhichOneof("kind")
                    if kind == "changeset":
                        apsw.Changeset.apply(step.changeset, connection)
                    elif kind == "ddl":
                        connection.execute(step.ddl)
                    elif kind == "sequences":
                        _restore_sequences(connection, step.sequences)
                if created is not None:
                    self._set_meta("uuid", created.uuid)
                    self._set_meta("created_seq", created.created_seq)
                    self._set_meta("created_at", created.created_at)
                self._set_applied_seq(seq)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # a failed COMMIT may have rolled back
                    connection.execute("ROLLBACK")
                raise
            finally:
                self._has_sequences = None
        finally:
            if self.primary:
                connection.config(apsw.SQLITE_DBCONFIG_ENABLE_TRIGGER, 1)
                connection.execute("PRAGMA foreign_keys=ON")
                self._limit_writer(True)
        self.applied_seq = seq
        return True

    def info(self) -> sql_pb2.SqlDatabase:
        """What this copy knows of its database: name, uuid, creation, last commit."""
        meta = dict(self._writer.execute(f"SELECT key, value FROM {META_TABLE}"))
        return sql_pb2.SqlDatabase(
            name=self.name,
            uuid=str(meta.get("uuid", "")),
            created_seq=int(meta.get("created_seq", 0)),
            created_at=float(meta.get("created_at", 0.0)),
            last_seq=int(meta.get("applied_seq", 0)),
        )

    def _set_meta(self, key: str, value: object) -> None:
        self._writer.execute(
            f"INSERT INTO {META_TABLE}(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _set_applied_seq(self, seq: int) -> None:
        self._set_meta("applied_seq", seq)

    def _sequences(self) -> list[tuple[str, int]]:
        # Whether sqlite_sequence exists changes only with the schema: looked up again
        # after a schema change (or a rollback), not on every write.
        if self._has_sequences is None:
            self._has_sequences = bool(
                self._writer.execute(
                    "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'"
                ).fetchone()
            )
        if not self._has_sequences:
            return []
        return [
            (str(name), int(value))
            for name, value in self._writer.execute(
                "SELECT name, seq FROM sqlite_sequence ORDER BY name"
            )
        ]

    # -- running statements ----------------------------------------------------------------

    def _run_all(
        self,
        connection: apsw.Connection,
        execution: _Execution,
        statements: Sequence[sql_pb2.SqlStatement],
        recorder: _StepRecorder | None,
    ) -> list[sql_pb2.SqlResult]:
        """A query's statements in order, within D1's per-query limits: QUERY_SECONDS_MAX
        for all of them, RESULT_BYTES_MAX for all of their results."""
        deadline = time.monotonic() + QUERY_SECONDS_MAX
        results: list[sql_pb2.SqlResult] = []
        result_bytes = 0
        for index, statement in enumerate(statements):
            result = self._run(connection, execution, statement, recorder, index, deadline)
            result_bytes += result.ByteSize()
            if result_bytes > RESULT_BYTES_MAX:
                raise SqlLimitExceededError(
                    f"query result too big: over {RESULT_BYTES_MAX} bytes (RESULT_BYTES_MAX)",
                    index,
                )
            results.append(result)
        return results

    def _run(
        self,
        connection: apsw.Connection,
        execution: _Execution,
        statement: sql_pb2.SqlStatement,
        recorder: _StepRecorder | None,
        index: int,
        deadline: float,
    ) -> sql_pb2.SqlResult:
        started = time.perf_counter()
        params = [to_python(value) for value in statement.params]
        cursor = connection.cursor()
        columns: list[str] = []
        rows: list[tuple[Any, ...]] = []
        statements_run = 0

        def trace(traced: apsw.Cursor, sql: str, _bindings: Any) -> bool:
            nonlocal columns, rows, statements_run
            statements_run += 1
            execution.creating_table = False  # prepared: the next statement is another
            if recorder is not None:
                recorder.before_statement(sql, execution)
            try:
                columns = [column[0] for column in traced.get_description()]
            except apsw.ExecutionCompleteError:
                columns = []
            rows = []
            return True

        cursor.exec_trace = trace
        changes_before = connection.total_changes()
        # A statement that runs away (a recursive CTE without a bound) is interrupted.
        connection.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
        try:
            for row in cursor.execute(statement.sql, params):
                rows.append(row)
        except apsw.InterruptError:
            raise SqlLimitExceededError(
                f"the query ran longer than {QUERY_SECONDS_MAX:g} s (QUERY_SECONDS_MAX): "
                "SQLITE_INTERRUPT",
                index,
            ) from None
        except apsw.FullError:
            raise SqlLimitExceededError(
                f"database or disk is full: a database holds at most {self.database_bytes_max} "
                "bytes (DATABASE_BYTES_MAX): SQLITE_FULL",
                index,
            ) from None
        except apsw.AuthError:
            if execution.wrote:
                raise WriteNeeded() from None
            raise SqlError(
                f"not authorized: {execution.refused or 'statement refused'}", index
            ) from None
        except apsw.BindingsError as error:
            raise SqlError(f"wrong number of bound parameters: {error}", index) from None
        except apsw.Error as error:
            raise SqlError(_describe(error), index) from None
        finally:
            connection.set_progress_handler(None)
            cursor.close()
        written = connection.total_changes() - changes_before
        if recorder is not None:
            recorder.after_statement()
        duration_ms = (time.perf_counter() - started) * 1e3
        result = sql_pb2.SqlResult(
            columns=columns,
            rows=[sql_pb2.SqlRow(values=[to_value(value) for value in row]) for row in rows],
        )
        meta = result.meta
        meta.rows_read = len(rows)
        meta.rows_written = max(0, written)
        meta.changes = connection.changes() if written else 0
        meta.last_row_id = connection.last_insert_rowid()
        meta.changed_db = written > 0 or (recorder is not None and recorder.ddl_seen)
        meta.size_after = self._size(connection)
        meta.duration_ms = duration_ms
        return result

    def _size(self, connection: apsw.Connection) -> int:
        page_count = connection.execute("PRAGMA page_count").fetchone()
        pages = int(page_count[0]) if page_count else 0
        if connection is self._writer:
            self._writer_pages = pages
        return pages * self._page_size

    def serialize(self) -> bytes:
        """The whole database as one SQLite file image (a consistent read)."""
        return bytes(self._reader.serialize("main"))

    # -- dumps -----------------------------------------------------------------------------

    def dump(self) -> tuple[str, int]:
        """A deterministic text dump of the committed state, and its applied seq."""
        connection = self._reader
        connection.execute("BEGIN")
        try:
            lines = list(_dump_lines(connection))
            row = connection.execute(
                f"SELECT value FROM {META_TABLE} WHERE key = 'applied_seq'"
            ).fetchone()
        finally:
            connection.execute("ROLLBACK")
        return "\n".join(lines) + "\n", int(row[0]) if row else 0


class _StepRecorder:
    """Cuts a write transaction into steps: a changeset, then each schema statement alone."""

    def __init__(
        self,
        connection: apsw.Connection,
        execution: _Execution,
        unlimited: Callable[[], contextlib.AbstractContextManager[None]],
    ) -> None:
        self.connection = connection
        self.execution = execution
        self.unlimited = unlimited
        self.steps: list[sql_pb2.SqlStep] = []
        self.ddl_seen = False
        self._session: apsw.Session | None = None
        self._open_session()

    def _open_session(self) -> None:
        session = apsw.Session(self.connection, "main")
        session.config(apsw.SQLITE_SESSION_OBJCONFIG_ROWID, 1)
        session.table_filter(lambda name: name != META_TABLE)
        session.attach()
        self._session = session

    def flush(self) -> None:
        """The row changes since the last cut, as a step (none when there are none)."""
        session = self._session
        if session is None:
            return
        self.execution.internal = True
        try:
            with self.unlimited():
                if not session.is_empty:
                    self.steps.append(sql_pb2.SqlStep(changeset=session.changeset()))
        finally:
            self.execution.internal = False
        session.close()
        self._session = None

    def before_statement(self, sql: str, execution: _Execution) -> None:
        if self._session is None:
            self._open_session()
        if execution.ddl_pending:
            execution.ddl_pending = False
            self.flush()
            self.steps.append(sql_pb2.SqlStep(ddl=sql))
            self.ddl_seen = True

    def after_statement(self) -> None:
        if self._session is None:  # the last statement was a schema change
            self._open_session()

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def _sequences_step(sequences: list[tuple[str, int]]) -> sql_pb2.SqlStep:
    return sql_pb2.SqlStep(
        sequences=sql_pb2.SqlSequences(
            names=[name for name, _ in sequences], values=[value for _, value in sequences]
        )
    )


def _restore_sequences(connection: apsw.Connection, sequences: sql_pb2.SqlSequences) -> None:
    exists = connection.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = 'sqlite_sequence'"
    ).fetchone()
    if not exists:
        return
    connection.execute("DELETE FROM sqlite_sequence")
    for name, value in zip(sequences.names, sequences.values, strict=True):
        connection.execute("INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (name, value))


# SQLite's messages for its run-time limits, and the limit of ours each one is.
_LIMIT_MESSAGES = (
    ("too many columns", f"COLUMNS_PER_TABLE_MAX: {COLUMNS_PER_TABLE_MAX}"),
    ("string or blob too big", f"VALUE_BYTES_MAX: {VALUE_BYTES_MAX} bytes"),
    ("too many arguments on function", f"FUNCTION_ARGS_MAX: {FUNCTION_ARGS_MAX}"),
    ("LIKE or GLOB pattern too complex", f"LIKE_PATTERN_BYTES_MAX: {LIKE_PATTERN_BYTES_MAX}"),
    ("variable number must be between", f"PARAMS_PER_STATEMENT_MAX: {PARAMS_PER_STATEMENT_MAX}"),
    ("too many SQL variables", f"PARAMS_PER_STATEMENT_MAX: {PARAMS_PER_STATEMENT_MAX}"),
    ("statement too long", f"SQL_BYTES_MAX: {SQL_BYTES_MAX} bytes"),
)


def _describe(error: apsw.Error) -> str:
    """SQLite's message and result code, as D1 words its errors ("...: SQLITE_ERROR"); a
    limit's message also names our limit ("too many columns on t (COLUMNS_PER_TABLE_MAX:
    100): SQLITE_ERROR")."""
    message = str(error)
    # Some apsw errors start with their class name ("SQLError: no such table: x").
    message = message.removeprefix(f"{type(error).__name__}: ")
    code = apsw.mapping_result_codes.get(getattr(error, "result", -1), "SQLITE_ERROR")
    for phrase, limit in _LIMIT_MESSAGES:
        if message.startswith(phrase):
            return f"{message} ({limit}): {code}"
    return f"{message}: {code}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _dump_lines(connection: apsw.Connection) -> Iterator[str]:
    schema = list(
        connection.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_schema "
            "WHERE name != ? ORDER BY type, name",
            (META_TABLE,),
        )
    )
    for kind, name, table, sql in schema:
        yield f"schema {kind} {name} {table} {sql!r}"
    for kind, name, _table, sql in schema:
        if kind != "table" or (sql or "").upper().startswith("CREATE VIRTUAL"):
            continue
        yield f"table {name}"
        quoted = _quote(name)
        if name == "sqlite_sequence":  # its rowids are SQLite's bookkeeping, not data
            yield from map(repr, connection.execute(f"SELECT * FROM {quoted} ORDER BY name"))
            continue
        try:
            rows = connection.execute(f"SELECT rowid, * FROM {quoted} ORDER BY rowid")
            for row in rows:
                yield repr(row)
        except apsw.SQLError:  # WITHOUT ROWID: order by every column
            count = len(connection.execute(f"PRAGMA table_info({quoted})").fetchall())
            order = ", ".join(str(index + 1) for index in range(count))
            for row in connection.execute(f"SELECT * FROM {quoted} ORDER BY {order}"):
                yield repr(row)


# -- a directory of databases ------------------------------------------------------------


class Databases:
    """The databases of one node, one file each under `directory`."""

    def __init__(
        self,
        directory: Path,
        *,
        primary: bool,
        database_bytes_max: int = DATABASE_BYTES_MAX_DEFAULT,
    ) -> None:
        self.directory = directory
        self.primary = primary
        self.database_bytes_max = database_bytes_max
        directory.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, Database] = {}
        # A replica's databases are opened by the loop (replay) and the read thread
        # (queries): one Database per file, never two writers racing to open it.
        self._opening = threading.Lock()

    def path(self, name: str) -> Path:
        return self.directory / f"{check_database_name(name)}{FILE_SUFFIX}"

    def exists(self, name: str) -> bool:
        return name in self._open or self.path(name).exists()

    def create(self, name: str) -> Database:
        database = self._open.get(name)
        if database is not None:
            return database
        with self._opening:
            database = self._open.get(name)
            if database is None:
                database = Database(
                    self.path(name),
                    primary=self.primary,
                    database_bytes_max=self.database_bytes_max,
                )
                self._open[name] = database
            return database

    def get(self, name: str) -> Database:
        database = self._open.get(name)
        if database is None:
            if not self.path(name).exists():
                raise NotFoundError(f"no database {name!r}")
            database = self.create(name)
        return database

    def names(self) -> list[str]:
        found = {
            path.name.removesuffix(FILE_SUFFIX) for path in self.directory.glob(f"*{FILE_SUFFIX}")
        }
        return sorted(found | set(self._open))

    def remove_all(self) -> None:
        """Forget every database (a replica about to be rebuilt from a snapshot)."""
        self.close()
        for path in self.directory.iterdir():
            if path.is_file():
                path.unlink()

    def close(self) -> None:
        with self._opening:
            for database in self._open.values():
                database.close()
            self._open.clear()
