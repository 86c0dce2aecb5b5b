"""edgepop.sqldb: a primary's writes replayed on a replica give the same database."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edge.v1 import sql_pb2
from edgepop import sqldb
from edgepop.errors import InvalidArgumentError, SqlError


def statement(sql: str, *params: object) -> sql_pb2.SqlStatement:
    return sql_pb2.SqlStatement(sql=sql, params=[sqldb.to_value(p) for p in params])


class Pair:
    """A primary and a replica, the replica fed only with the primary's logged steps."""

    def __init__(self, tmp_path: Path) -> None:
        self.primary = sqldb.Database(tmp_path / "p.sqlite", primary=True)
        self.replica = sqldb.Database(tmp_path / "r.sqlite", primary=False)
        self.seq = 0
        self.log: list[tuple[int, list[sql_pb2.SqlStep]]] = []

    def write(self, *statements: sql_pb2.SqlStatement) -> list[sql_pb2.SqlResult]:
        done = self.primary.execute(statements)
        self.seq += 1
        self.primary.commit(self.seq)
        self.log.append((self.seq, done.steps))
        assert self.replica.apply(self.seq, done.steps)
        return done.results

    def same(self) -> str:
        primary, primary_seq = self.primary.dump()
        replica, replica_seq = self.replica.dump()
        assert primary == replica
        assert primary_seq == replica_seq == self.seq
        return primary


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return Pair(tmp_path)


def test_rows_schema_changes_and_counters_replay_identically(pair: Pair) -> None:
    pair.write(
        statement("CREATE TABLE q (id INTEGER PRIMARY KEY AUTOINCREMENT, quote TEXT, author TEXT)"),
        statement('INSERT INTO q (quote, author) VALUES ("a", "b"), ("c", "d")'),
    )
    pair.write(statement("DELETE FROM q WHERE id = 2"))
    # a schema change between row changes, in one transaction
    pair.write(
        statement("INSERT INTO q (quote) VALUES (?)", "before"),
        statement("ALTER TABLE q ADD COLUMN year INTEGER DEFAULT 2000"),
        statement("UPDATE q SET year = 1999 WHERE quote = ?", "before"),
        statement("CREATE INDEX q_year ON q (year)"),
    )
    # non-deterministic values are replayed as the primary computed them
    pair.write(statement("INSERT INTO q (quote, year) VALUES (hex(randomblob(8)), random())"))
    dump = pair.same()
    assert "q_year" in dump
    # the AUTOINCREMENT counter moved on at both (the deleted id 2 is never reused)
    assert "sqlite_sequence" in dump
    results = pair.write(statement("INSERT INTO q (quote) VALUES ('next')"))
    assert results[0].meta.last_row_id == 5
    pair.same()


def test_triggers_cascades_and_without_rowid_tables(pair: Pair) -> None:
    pair.write(
        statement("CREATE TABLE parent (id INTEGER PRIMARY KEY, name TEXT)"),
        statement(
            "CREATE TABLE child (id INTEGER PRIMARY KEY, "
            "parent INTEGER REFERENCES parent(id) ON DELETE CASCADE)"
        ),
        statement("CREATE TABLE audit (msg TEXT)"),  # a rowid table without a key
        statement(
            "CREATE TRIGGER t AFTER INSERT ON parent BEGIN "
            "INSERT INTO audit VALUES ('added ' || new.name); END"
        ),
        statement("CREATE TABLE kv (k TEXT PRIMARY KEY, v) WITHOUT ROWID"),
    )
    pair.write(
        statement("INSERT INTO parent VALUES (1, 'x'), (2, 'y')"),
        statement("INSERT INTO child VALUES (10, 1), (11, 2)"),
        statement("INSERT INTO kv VALUES ('b', 2), ('a', 1)"),
    )
    pair.write(statement("DELETE FROM parent WHERE id = 1"))  # cascades to child 10
    dump = pair.same()
    assert "('added x',)" in dump or "'added x'" in dump
    rows, _ = pair.replica.read([statement("SELECT count(*) FROM child")])
    assert rows[0].rows[0].values[0].integer == 1
    rows, _ = pair.replica.read([statement("SELECT count(*) FROM audit")])
    assert rows[0].rows[0].values[0].integer == 2  # the trigger ran once, at the primary


def test_replay_is_exactly_once(pair: Pair) -> None:
    pair.write(statement("CREATE TABLE c (n INTEGER)"))
    pair.write(statement("INSERT INTO c VALUES (1)"))
    seq, steps = pair.log[-1]
    assert not pair.replica.apply(seq, steps)  # redelivered after a reconnect
    pair.same()


def test_a_failing_statement_rolls_the_whole_batch_back(pair: Pair) -> None:
    pair.write(statement("CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT NOT NULL)"))
    before = pair.primary.dump()
    with pytest.raises(SqlError, match=r"NOT NULL constraint failed: u\.v: SQLITE_CONSTRAINT"):
        pair.primary.execute(
            [
                statement("INSERT INTO u (v) VALUES ('ok')"),
                statement("INSERT INTO u (v) VALUES (NULL)"),
            ]
        )
    assert pair.primary.dump() == before
    # and the connection is usable again
    pair.write(statement("INSERT INTO u (v) VALUES ('after')"))
    pair.same()


def test_reads_refuse_writes_before_changing_anything(pair: Pair) -> None:
    pair.write(statement("CREATE TABLE r (v)"), statement("INSERT INTO r VALUES (1)"))
    with pytest.raises(sqldb.WriteNeeded):
        pair.replica.read([statement("SELECT * FROM r"), statement("INSERT INTO r VALUES (2)")])
    results, seq = pair.replica.read([statement("SELECT v, 'x' AS tag FROM r")])
    assert list(results[0].columns) == ["v", "tag"]
    assert sqldb.result_dicts(results[0]) == [{"v": 1, "tag": "x"}]
    assert seq == pair.seq
    pair.same()


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("BEGIN", "BEGIN/COMMIT"),
        ("ATTACH DATABASE 'x.db' AS x", "ATTACH"),
        ("PRAGMA journal_mode=DELETE", "PRAGMA journal_mode"),
        ("CREATE TEMP TABLE t (x)", "temporary tables"),
        (f"SELECT * FROM {sqldb.META_TABLE}", "reserved"),
        (f"DELETE FROM {sqldb.META_TABLE}", "reserved"),
        ("CREATE TABLE copy AS SELECT 1 AS x", "AS SELECT"),
        # SQLite's parser decides, not a pattern over the text: comments, quoting, a
        # schema name and missing spaces are all still a CREATE ... AS SELECT.
        ("-- a copy\n/* of t */ CREATE TABLE copy AS SELECT 1 AS x", "AS SELECT"),
        ('CREATE /* x */ TABLE IF NOT EXISTS main."copy"AS SELECT 1 AS x', "AS SELECT"),
        ("CREATE TABLE [copy]/**/AS/**/VALUES (1)", "AS SELECT"),
    ],
)
def test_statements_that_would_make_copies_differ_are_refused(
    pair: Pair, sql: str, refused: str
) -> None:
    with pytest.raises(SqlError, match=refused):
        pair.primary.execute([statement(sql)])
    # A replica runs nothing of it either: refused, or sent on to the primary.
    with pytest.raises((SqlError, sqldb.WriteNeeded)):
        pair.replica.read([statement(sql)])
    pair.write(statement("PRAGMA table_list"))  # reading a pragma is fine
    pair.same()


def test_a_table_with_checks_and_generated_columns_is_not_taken_for_a_copy(pair: Pair) -> None:
    pair.write(
        statement("CREATE TABLE t (x INTEGER CHECK (x > 0) DEFAULT 1, y AS (x + 1))"),
        statement("SELECT * FROM t"),
    )
    pair.write(statement("CREATE VIEW v AS SELECT x FROM t"), statement("INSERT INTO t VALUES (2)"))
    results, _ = pair.replica.read([statement("SELECT * FROM v")])
    assert sqldb.result_dicts(results[0]) == [{"x": 2}]
    pair.same()


def test_request_limits_and_bookmarks() -> None:
    request = sql_pb2.SqlQueryRequest(database="db", statements=[statement("SELECT 1")])
    sqldb.check_query(request)
    with pytest.raises(InvalidArgumentError, match="DATABASE_NAME_PATTERN"):
        sqldb.check_query(sql_pb2.SqlQueryRequest(database="a b", statements=[statement("x")]))
    many = sql_pb2.SqlQueryRequest(database="db", statements=[statement("SELECT 1")] * 51)
    with pytest.raises(InvalidArgumentError, match="STATEMENTS_PER_QUERY_MAX"):
        sqldb.check_query(many)
    with pytest.raises(InvalidArgumentError, match="SQL_BYTES_MAX"):
        sqldb.check_query(
            sql_pb2.SqlQueryRequest(database="db", statements=[statement("x" * 100_001)])
        )
    # Found by the fuzz: apsw refused the text with a ValueError, which answered INTERNAL.
    with pytest.raises(InvalidArgumentError, match="NUL character at offset 6"):
        sqldb.check_query(
            sql_pb2.SqlQueryRequest(database="db", statements=[statement("SELECT\x001")])
        )
    assert sqldb.parse_bookmark(sqldb.format_bookmark(1234)) == 1234
    assert sqldb.format_bookmark(9) < sqldb.format_bookmark(10)  # ordered as text
    with pytest.raises(InvalidArgumentError, match="malformed bookmark"):
        sqldb.parse_bookmark("nope")


def test_a_seeded_random_workload_leaves_primary_and_replica_identical(pair: Pair) -> None:
    rng = random.Random(7)
    pair.write(
        statement("CREATE TABLE w0 (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, s TEXT)")
    )
    tables = ["w0"]
    for _ in range(400):
        table = rng.choice(tables)
        roll = rng.random()
        statements = []
        if roll < 0.4:
            statements.append(
                statement(
                    f"INSERT INTO {table} (n, s) VALUES (?, ?)",
                    rng.randint(0, 50),
                    "x" * rng.randint(0, 20),
                )
            )
        elif roll < 0.6:
            statements.append(
                statement(f"UPDATE {table} SET n = n + 1 WHERE n % ? = 0", rng.randint(2, 5))
            )
        elif roll < 0.75:
            statements.append(statement(f"DELETE FROM {table} WHERE n = ?", rng.randint(0, 50)))
        elif roll < 0.8 and len(tables) < 5:
            name = f"w{9 - len(tables)}"  # created in an order unlike the names
            tables.append(name)
            statements.append(
                statement(
                    f"CREATE TABLE {name} (id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER, s TEXT)"
                )
            )
            statements.append(statement(f"INSERT INTO {name} (n, s) SELECT n, s FROM {table}"))
        elif roll < 0.85:
            statements.append(statement(f"CREATE INDEX IF NOT EXISTS {table}_n ON {table} (n)"))
        else:  # a batch that fails half way: nothing of it stays
            statements.append(statement(f"INSERT INTO {table} (n) VALUES (1)"))
            statements.append(statement("INSERT INTO missing VALUES (1)"))
        try:
            pair.write(*statements)
        except SqlError:
            assert "missing" in statements[-1].sql
    pair.same()
