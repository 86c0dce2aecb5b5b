"""`env.DB`: a D1 database binding, with Cloudflare's API, over the PoP's SQL replicas.

Cloudflare's semantics: outside a session every query goes to the primary (here, at the
origin: the worker pays its PoP's delay to us-east-1); `withSession()` lets the first
query read the PoP's replica ("first-unconstrained"), `withSession("first-primary")`
starts at the primary, `withSession(bookmark)` at any copy at least that new, and every
later query of the session carries the newest bookmark seen (sequential consistency).
Writes always go to the primary. Results are D1's: `results` (rows as dicts), `success`
and `meta` (served_by_region, served_by_primary, rows_read, ... and the bookmark).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from edge.v1 import sql_pb2
from edgepop import sqldb
from edgepop.worker_api import JsDict

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


class D1PreparedStatement:
    """`db.prepare(sql)`; `bind(...)` returns a new statement with the values bound."""

    def __init__(self, database: _Queries, sql: str, params: tuple[Any, ...] = ()) -> None:
        self._database = database
        self.sql = sql
        self.params = params

    def bind(self, *values: Any) -> D1PreparedStatement:
        return D1PreparedStatement(self._database, self.sql, values)

    def _statement(self) -> sql_pb2.SqlStatement:
        return sql_pb2.SqlStatement(
            sql=self.sql, params=[sqldb.to_value(value) for value in self.params]
        )

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
            raise ValueError(f"D1_COLUMN_NOTFOUND: column {column!r} not in the result")
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
            raise ValueError("batch: no statement")
        return await self.run_batch(list(statements))

    async def _query(self, statements: Sequence[D1PreparedStatement]) -> sql_pb2.SqlQueryResponse:
        request = self._session.request(
            self._database, [statement._statement() for statement in statements]
        )
        response = await self._sql.query(request, None)
        self._session.saw(response.bookmark)
        return response

    async def run_batch(self, statements: Sequence[D1PreparedStatement]) -> list[D1Result]:
        response = await self._query(statements)
        return [_result(result, response.bookmark) for result in response.results]

    async def run_raw(self, statement: D1PreparedStatement) -> sql_pb2.SqlResult:
        response = await self._query([statement])
        return response.results[0]


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
        """Run SQL statements (no bound values) at the primary; `{count, duration}`."""
        statements = sqldb.split_statements(query)
        if not statements:
            raise ValueError("exec: no SQL statement")
        results = await self.run_batch([self.prepare(sql) for sql in statements])
        return JsDict(
            count=len(results), duration=sum(result["meta"]["duration"] for result in results)
        )
