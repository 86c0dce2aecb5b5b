"""`env.DB`: a D1 database binding, with Cloudflare's API, over the PoP's SQL replicas.

Cloudflare's semantics: outside a session every query goes to the primary (here, at the
origin: the worker pays its PoP's delay to us-east-1); `withSession()` lets the first
query read the PoP's replica ("first-unconstrained"), `withSession("first-primary")`
starts at the primary, `withSession(bookmark)` at any copy at least that new, and every
later query of the session carries the newest bookmark seen (sequential consistency).
Writes always go to the primary. Results are D1's: `results` (rows as dicts), `success`
and `meta` (served_by_region, served_by_primary, rows_read, ... and the bookmark).

Errors are D1's too: every failure is a `D1Error` (a `JsException`, as a JS error is in
a Python Worker on Cloudflare) whose message starts with D1's prefix: `D1_TYPE_ERROR` for
a value `bind` cannot take, `D1_COLUMN_NOTFOUND` for `first(column)` of a missing column,
`D1_EXEC_ERROR: Error in line N: ...` for `exec`, `D1_ERROR: ...` for the rest (SQLite's
failures end with their result code: "D1_ERROR: no such table: foo: SQLITE_ERROR").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.v1 import sql_pb2
from edgepop import sqldb
from edgepop.errors import (
    D1_COLUMN_NOTFOUND,
    D1_ERROR,
    D1_EXEC_ERROR,
    EdgeError,
    d1_message,
    statement_index_of,
)
from edgepop.worker_api import D1Error, JsDict, current_context

if TYPE_CHECKING:
    from pop_node.sql import SqlReplicas

FIRST_UNCONSTRAINED = "first-unconstrained"
FIRST_PRIMARY = "first-primary"


class D1Result(JsDict):
    """`{results, success, meta}`; keys read as attributes too (`result.results`)."""


def _result(result: sql_pb2.SqlResult, bookmark: str) -> D1Result:
    meta = result.meta
    return D1Result(
        results=[JsDict(row) for row in sqldb.result_dicts(result)],
        success=True,
        meta=JsDict(
            served_by=meta.served_by,
            served_by_region=meta.served_by_region,
            served_by_primary=meta.served_by_primary,
            duration=meta.duration_ms,
            changes=meta.changes,
            last_row_id=meta.last_row_id,
            changed_db=meta.changed_db,
            size_after=meta.size_after,
            rows_read=meta.rows_read,
            rows_written=meta.rows_written,
            bookmark=bookmark,
        ),
    )


class _Session:
    """Where a binding's queries may go, and the newest bookmark seen so far."""

    def __init__(self, mode: sql_pb2.SqlSession.ValueType, bookmark: str = "") -> None:
        self.mode = mode
        self.bookmark = bookmark

    def request(
        self, database: str, statements: Sequence[sql_pb2.SqlStatement]
    ) -> sql_pb2.SqlQueryRequest:
        return sql_pb2.SqlQueryRequest(
            database=database, statements=statements, session=self.mode, bookmark=self.bookmark
        )

    def saw(self, bookmark: str) -> None:
        if self.mode == sql_pb2.SQL_SESSION_UNSPECIFIED:
            return  # outside a session: every query at the primary
        if bookmark > self.bookmark:  # bookmarks order as text
            self.bookmark = bookmark
        self.mode = sql_pb2.SQL_SESSION_BOOKMARK


def _bound(values: Sequence[Any]) -> list[sql_pb2.SqlValue]:
    """Values for `bind`; one SQLite cannot store is D1's D1_TYPE_ERROR, raised at once."""
    try:
        return [sqldb.to_value(value) for value in values]
    except EdgeError as error:
        raise D1Error(d1_message(error.message)) from None


class D1PreparedStatement:
    """`db.prepare(sql)`; `bind(...)` returns a new statement with the values bound."""

    def __init__(
        self, database: _Queries, sql: str, values: Sequence[sql_pb2.SqlValue] = ()
    ) -> None:
        self._database = database
        self.sql = sql
        self._values = values

    def bind(self, *values: Any) -> D1PreparedStatement:
        return D1PreparedStatement(self._database, self.sql, _bound(values))

    def _statement(self) -> sql_pb2.SqlStatement:
        return sql_pb2.SqlStatement(sql=self.sql, params=self._values)

    async def all(self) -> D1Result:
        return (await self._database.run_batch([self]))[0]

    async def run(self) -> D1Result:
        return await self.all()

    async def first(self, column: str | None = None) -> Any:
        """The first row (a dict), or one column of it; None when there is no row."""
        rows = (await self.all())["results"]
        if not rows:
            return None
        if column is None:
            return rows[0]
        if column not in rows[0]:
            raise D1Error(f"{D1_COLUMN_NOTFOUND}: Column not found ({column})")
        return rows[0][column]

    async def raw(
        self, options: dict[str, Any] | None = None, *, columnNames: bool = False
    ) -> list[list[Any]]:
        """Rows as lists of values; with columnNames, the names first."""
        if options:
            columnNames = bool(options.get("columnNames", columnNames))
        result = await self._database.run_raw(self)
        rows = [[sqldb.to_python(value) for value in row.values] for row in result.rows]
        return [list(result.columns), *rows] if columnNames else rows


class _Queries:
    """What a database binding and a session share: prepare, batch, and running them."""

    def __init__(self, sql: SqlReplicas, database: str, session: _Session) -> None:
        self._sql = sql
        self._database = database
        self._session = session

    def prepare(self, query: str) -> D1PreparedStatement:
        return D1PreparedStatement(self, query)

    async def batch(self, statements: Sequence[D1PreparedStatement]) -> list[D1Result]:
        """Run statements as one transaction: all commit, or none (D1's batch)."""
        if not statements:
            raise D1Error(f"{D1_ERROR}: batch: no statement")
        return await self.run_batch(list(statements))

    async def _query(self, statements: Sequence[D1PreparedStatement]) -> sql_pb2.SqlQueryResponse:
        """One query (a statement or a batch): counted against the invocation's limit, and
        any failure raised as D1Error."""
        _count_query()
        request = self._session.request(
            self._database, [statement._statement() for statement in statements]
        )
        try:
            response = await self._sql.query(request, None)
        except EdgeError as error:
            raise _D1QueryError(
                d1_message(error.message), statement_index_of(error.reason)
            ) from None
        self._session.saw(response.bookmark)
        return response

    async def run_batch(self, statements: Sequence[D1PreparedStatement]) -> list[D1Result]:
        response = await self._query(statements)
        return [_result(result, response.bookmark) for result in response.results]

    async def run_raw(self, statement: D1PreparedStatement) -> sql_pb2.SqlResult:
        response = await self._query([statement])
        return response.results[0]


class _D1QueryError(D1Error):
    """A failed query, remembering which statement failed (for exec's "line N")."""

    def __init__(self, message: str, statement_index: int | None) -> None:
        super().__init__(message)
        self.statement_index = statement_index


def _count_query() -> None:
    """One more D1 query for the invocation being handled; past D1's limit, a D1Error
    (the query is not sent). Outside an invocation nothing is counted."""
    context = current_context()
    if context is None:
        return
    if context.d1_queries >= sqldb.QUERIES_PER_INVOCATION_MAX:
        raise D1Error(
            f"{D1_ERROR}: Too many API requests by single worker invocation: at most "
            f"{sqldb.QUERIES_PER_INVOCATION_MAX} D1 queries (QUERIES_PER_INVOCATION_MAX)"
        )
    context.d1_queries += 1


def _exec_message(error: _D1QueryError, statements: Sequence[str]) -> str:
    """D1's wording of an `exec` failure: "D1_EXEC_ERROR: Error in line N: SQL: cause"."""
    cause = error.message.removeprefix(f"{D1_ERROR}: ")
    index = error.statement_index
    if index is None or not 0 <= index < len(statements):
        return f"{D1_EXEC_ERROR}: {cause}"
    sql = statements[index].rstrip(";").rstrip()
    return f"{D1_EXEC_ERROR}: Error in line {index + 1}: {sql}: {cause}"


class D1DatabaseSession(_Queries):
    """`db.withSession(...)`: queries in one sequentially consistent session."""

    def getBookmark(self) -> str | None:
        """The newest version this session has seen; None before its first query."""
        return self._session.bookmark or None

    get_bookmark = getBookmark


class D1Binding(_Queries):
    """`env.DB`: a D1 database (queries outside a session go to the primary)."""

    def __init__(self, sql: SqlReplicas, database: str) -> None:
        super().__init__(sql, database, _Session(sql_pb2.SQL_SESSION_UNSPECIFIED))
        self.database = database

    def withSession(self, constraint: str | None = FIRST_UNCONSTRAINED) -> D1DatabaseSession:
        if constraint in (None, "", FIRST_UNCONSTRAINED):
            session = _Session(sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED)
        elif constraint == FIRST_PRIMARY:
            session = _Session(sql_pb2.SQL_SESSION_FIRST_PRIMARY)
        else:
            sqldb.parse_bookmark(constraint)  # a clear error for a malformed one
            session = _Session(sql_pb2.SQL_SESSION_BOOKMARK, constraint)
        return D1DatabaseSession(self._sql, self.database, session)

    with_session = withSession

    async def exec(self, query: str) -> JsDict:
        """Run SQL statements (no bound values) at the primary, as one transaction;
        `{count, duration}`. A failure names its statement: "D1_EXEC_ERROR: Error in line
        N: ..." (N counts statements, as D1's does when each is on its own line)."""
        statements = sqldb.split_statements(query)
        if not statements:
            raise D1Error(f"{D1_EXEC_ERROR}: no SQL statement")
        try:
            results = await self.run_batch([self.prepare(sql) for sql in statements])
        except _D1QueryError as error:
            raise D1Error(_exec_message(error, statements)) from None
        return JsDict(
            count=len(results), duration=sum(result["meta"]["duration"] for result in results)
        )
