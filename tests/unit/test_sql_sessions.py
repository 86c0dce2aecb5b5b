"""pop_node.sql.route and edgepop.sqldb.split_statements: D1's session rules, pure."""

from __future__ import annotations

import pytest

from edge.v1 import sql_pb2
from edgepop.sqldb import split_statements
from pop_node.sql import Route, route


@pytest.mark.parametrize(
    ("session", "bookmark", "applied", "expected"),
    [
        # outside a session, and first-primary: the primary, however fresh the replica
        (sql_pb2.SQL_SESSION_UNSPECIFIED, 0, 100, Route.PRIMARY),
        (sql_pb2.SQL_SESSION_FIRST_PRIMARY, 0, 100, Route.PRIMARY),
        # first-unconstrained: the local replica, however stale
        (sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED, 0, 0, Route.LOCAL),
        # a bookmark: local once the replica holds it, else wait (then the primary)
        (sql_pb2.SQL_SESSION_BOOKMARK, 50, 50, Route.LOCAL),
        (sql_pb2.SQL_SESSION_BOOKMARK, 50, 80, Route.LOCAL),
        (sql_pb2.SQL_SESSION_BOOKMARK, 51, 50, Route.WAIT),
    ],
)
def test_where_a_query_may_first_be_tried(
    session: int, bookmark: int, applied: int, expected: Route
) -> None:
    assert route(session, bookmark, applied) is expected


def test_statements_split_where_sqlite_says_they_end() -> None:
    sql = """
    CREATE TABLE t (v TEXT);  -- a comment; with a semicolon
    INSERT INTO t VALUES ('a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO t VALUES ('x'); END;
    SELECT 1
    -- trailing comment
    """
    assert split_statements(sql) == [
        "CREATE TABLE t (v TEXT);",
        "-- a comment; with a semicolon\n    INSERT INTO t VALUES ('a;b');",
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO t VALUES ('x'); END;",
        "SELECT 1\n    -- trailing comment",
    ]
    assert split_statements("  ;; -- nothing\n") == []
    # apsw cannot look into text holding a NUL: one statement, which the request's checks
    # refuse (test_sqldb), where apsw.complete raised ValueError.
    assert split_statements("SELECT 1;\x00; SELECT 2") == ["SELECT 1;\x00; SELECT 2"]
