"""`edgectl d1 …`: SQL databases, with wrangler's verbs (create, list, execute).

`execute` goes where a user in `--from REGION` would: to that region's PoP, which answers
from its replica when the session allows (`--first-unconstrained`, `--bookmark B`) and
from the primary at the origin otherwise (outside a session, `--first-primary`, and every
write). `--json` prints D1's result shape: one `{results, success, meta}` per statement,
the session's bookmark in `meta.bookmark`; a failure prints wrangler's error shape
(`{"error": {"text": "D1_ERROR: ...", ...}}`) and exits 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from edge.v1 import sql_pb2
from edgectl import views
from edgectl.client import CliError, EdgeClient
from edgepop import sqldb
from edgepop.errors import d1_message

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


def register_d1(commands: CommandSet) -> None:
    d1 = commands.group(
        "d1", "SQL databases (D1-style): a primary at the origin, a replica per PoP"
    )
    create = d1.add("create", cmd_create, "create a database (at the origin)", json_output=True)
    create.add_argument("name", metavar="NAME")
    d1.add("list", cmd_list, "the cluster's databases", json_output=True)
    register_migrations(d1)
    execute = d1.add(
        "execute",
        cmd_execute,
        "run SQL (statements separated by ';'); one result per statement",
        json_output=True,
    )
    execute.add_argument("name", metavar="NAME")
    sql = execute.add_mutually_exclusive_group(required=True)
    sql.add_argument("--command", metavar="SQL", help="the SQL to run")
    sql.add_argument("--file", type=Path, metavar="FILE", help="run the SQL in FILE")
    where = execute.add_mutually_exclusive_group()
    where.add_argument(
        "--from",
        dest="from_region",
        metavar="REGION",
        help="the caller's region: its nearest PoP takes the query and pays that RTT",
    )
    where.add_argument("--pop", metavar="NODE", help="send the query to this PoP")
    session = execute.add_mutually_exclusive_group()
    session.add_argument(
        "--bookmark",
        metavar="B",
        help="withSession(B): any copy at least as new as bookmark B answers reads",
    )
    session.add_argument(
        "--first-primary",
        action="store_true",
        help='withSession("first-primary"): reads start at the primary',
    )
    session.add_argument(
        "--first-unconstrained",
        action="store_true",
        help="withSession(): reads may be served by the local replica, however stale",
    )


MIGRATIONS_TABLE = "d1_migrations"  # wrangler's name and shape


def register_migrations(d1: CommandSet) -> None:
    migrations = d1.group("migrations", "schema migrations from a folder of .sql files")
    for verb, handler, help in (
        ("list", cmd_migrations_list, "the folder's migrations and whether each is applied"),
        (
            "apply",
            cmd_migrations_apply,
            "apply the folder's unapplied migrations in name order, each in one transaction "
            f"with its record in {MIGRATIONS_TABLE}",
        ),
    ):
        parser = migrations.add(verb, handler, help, json_output=True)
        parser.add_argument("name", metavar="NAME")
        parser.add_argument("directory", type=Path, metavar="DIR", help="e.g. migrations/")


def _migration_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise CliError("INVALID_ARGUMENT", f"{directory} is not a folder")
    return sorted(path for path in directory.iterdir() if path.suffix == ".sql")


def _applied_migrations(client: EdgeClient, name: str) -> set[str]:
    target = client.resolve(origin=True)
    setup = sql_pb2.SqlQueryRequest(
        database=name,
        statements=[
            sql_pb2.SqlStatement(
                sql=f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, "
                "applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)"
            ),
            sql_pb2.SqlStatement(sql=f"SELECT name FROM {MIGRATIONS_TABLE}"),
        ],
    )
    response = client.sql_query(target, setup).response
    return {str(row["name"]) for row in sqldb.result_dicts(response.results[-1])}


def cmd_migrations_list(args: argparse.Namespace) -> int:
    files = _migration_files(args.directory)
    with EdgeClient.for_args(args) as client:
        applied = _applied_migrations(client, args.name)
    rows = [{"name": path.name, "applied": path.name in applied} for path in files]
    if args.json:
        views.print_json(rows)
        return 0
    table = Table()
    table.add_column("migration")
    table.add_column("applied")
    for row in rows:
        table.add_row(str(row["name"]), "yes" if row["applied"] else "no")
    views.stdout.print(table)
    return 0


def cmd_migrations_apply(args: argparse.Namespace) -> int:
    files = _migration_files(args.directory)
    done: list[dict[str, Any]] = []
    with EdgeClient.for_args(args) as client:
        applied = _applied_migrations(client, args.name)
        target = client.resolve(origin=True)
        for path in files:
            if path.name in applied:
                continue
            statements = sqldb.split_statements(path.read_text())
            if len(statements) >= sqldb.STATEMENTS_PER_QUERY_MAX:
                raise CliError(
                    "INVALID_ARGUMENT",
                    f"{path.name}: {len(statements)} statements; a migration runs as one "
                    f"transaction of at most {sqldb.STATEMENTS_PER_QUERY_MAX - 1} "
                    "(STATEMENTS_PER_QUERY_MAX, one is its record)",
                )
            request = sql_pb2.SqlQueryRequest(
                database=args.name,
                statements=[
                    *(sql_pb2.SqlStatement(sql=sql) for sql in statements),
                    sql_pb2.SqlStatement(
                        sql=f"INSERT INTO {MIGRATIONS_TABLE} (name) VALUES (?)",
                        params=[sqldb.to_value(path.name)],
                    ),
                ],
            )
            try:
                response = client.sql_query(target, request).response
            except CliError as error:
                raise CliError(error.code, f"{path.name}: {error.details}") from None
            done.append({"name": path.name, "bookmark": response.bookmark})
            if not args.json:
                views.stdout.print(
                    f"applied {path.name} · bookmark {response.bookmark}", markup=False
                )
    if args.json:
        views.print_json(done)
    elif not done:
        views.stdout.print("no migrations to apply", markup=False)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    with EdgeClient.for_args(args) as client:
        target = client.resolve(origin=True)
        created = client.sql_create(target, args.name).response
    database = created.database
    if args.json:
        views.print_json({**_database_json(database), "bookmark": created.bookmark})
    else:
        views.stdout.print(
            f"created database {database.name} ({database.uuid}) at seq {database.created_seq}",
            markup=False,
        )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with EdgeClient.for_args(args) as client:
        target = client.resolve(origin=True)
        databases = client.sql_list(target).response.databases
    if args.json:
        views.print_json([_database_json(database) for database in databases])
        return 0
    table = Table()
    for column in ("name", "uuid", "created", "last commit seq"):
        table.add_column(column)
    for database in databases:
        table.add_row(
            database.name,
            database.uuid,
            views.fmt_expiration(int(database.created_at)),
            str(database.last_seq),
        )
    views.stdout.print(table)
    return 0


def _database_json(database: sql_pb2.SqlDatabase) -> dict[str, Any]:
    return {
        "name": database.name,
        "uuid": database.uuid,
        "created_seq": database.created_seq,
        "created_at": database.created_at,
        "last_seq": database.last_seq,
    }


def _session(args: argparse.Namespace) -> sql_pb2.SqlSession.ValueType:
    if args.bookmark:
        return sql_pb2.SQL_SESSION_BOOKMARK
    if args.first_primary:
        return sql_pb2.SQL_SESSION_FIRST_PRIMARY
    if args.first_unconstrained:
        return sql_pb2.SQL_SESSION_FIRST_UNCONSTRAINED
    return sql_pb2.SQL_SESSION_UNSPECIFIED


def d1_error_json(error: CliError) -> dict[str, Any]:
    """A failure as `wrangler d1 execute --json` prints one: `{"error": {text, notes, kind,
    name, code}}`, the text D1's message. `code` is the gRPC status name (wrangler's is
    Cloudflare's API code, which edgepop does not have)."""
    notes = [{"text": f"{error.code} from {error.where}"}] if error.where else []
    return {
        "error": {
            "text": d1_message(error.message),
            "notes": notes,
            "kind": "error",
            "name": "D1Error",
            "code": error.code,
        }
    }


def cmd_execute(args: argparse.Namespace) -> int:
    try:
        return _execute(args)
    except CliError as error:
        if not args.json:
            raise
        views.print_json(d1_error_json(error))
        views.error(f"{error.code}: {error.details}")
        return 1


def _execute(args: argparse.Namespace) -> int:
    if args.file is not None:
        try:
            text = args.file.read_text()
        except OSError as error:
            raise CliError("INVALID_ARGUMENT", f"cannot read {args.file}: {error}") from None
    else:
        text = args.command
    statements = sqldb.split_statements(text)
    if not statements:
        raise CliError("INVALID_ARGUMENT", "no SQL statement to run")
    session = _session(args)
    bookmark = args.bookmark or ""
    printed: list[dict[str, Any]] = []
    with EdgeClient.for_args(args) as client:
        target = client.resolve(from_region=args.from_region, pop=args.pop)
        # D1 takes at most STATEMENTS_PER_QUERY_MAX per batch: a longer file runs in
        # batches, each in the session of the one before (its bookmark).
        step = sqldb.STATEMENTS_PER_QUERY_MAX
        for first in range(0, len(statements), step):
            request = sql_pb2.SqlQueryRequest(
                database=args.name,
                statements=[
                    sql_pb2.SqlStatement(sql=sql) for sql in statements[first : first + step]
                ],
                session=session,
                bookmark=bookmark,
            )
            timed = client.sql_query(target, request)
            response = timed.response
            bookmark = response.bookmark
            if session != sql_pb2.SQL_SESSION_UNSPECIFIED:
                session = sql_pb2.SQL_SESSION_BOOKMARK
            for result in response.results:
                printed.append(_result_json(result, response.bookmark))
                if not args.json:
                    _print_result(result, response.bookmark)
            if not args.json:
                views.stderr.print(
                    f"{len(response.results)} statement(s) · {views.via(target, timed.latency_ms)}",
                    style="dim",
                    markup=False,
                )
    if args.json:
        views.print_json(printed)
    return 0


def _result_json(result: sql_pb2.SqlResult, bookmark: str) -> dict[str, Any]:
    meta = result.meta
    return {
        "results": [
            {name: _json_value(value) for name, value in row.items()}
            for row in sqldb.result_dicts(result)
        ],
        "success": True,
        "meta": {
            "served_by": meta.served_by,
            "served_by_region": meta.served_by_region,
            "served_by_primary": meta.served_by_primary,
            "duration": round(meta.duration_ms, 3),
            "changes": meta.changes,
            "last_row_id": meta.last_row_id,
            "changed_db": meta.changed_db,
            "size_after": meta.size_after,
            "rows_read": meta.rows_read,
            "rows_written": meta.rows_written,
            "bookmark": bookmark,
        },
    }


def _json_value(value: Any) -> Any:
    # D1 returns a blob as an array of byte values.
    return list(value) if isinstance(value, bytes) else value


def _print_result(result: sql_pb2.SqlResult, bookmark: str) -> None:
    meta = result.meta
    if result.columns:
        table = Table()
        for column in result.columns:
            table.add_column(column)
        for row in sqldb.result_dicts(result):
            table.add_row(
                *(repr(value) if isinstance(value, bytes) else str(value) for value in row.values())
            )
        views.stdout.print(table)
    where = "primary" if meta.served_by_primary else "replica"
    views.stdout.print(
        f"{where} {meta.served_by} ({meta.served_by_region}) · rows read {meta.rows_read}, "
        f"written {meta.rows_written} · {meta.duration_ms:.2f} ms · bookmark {bookmark}",
        markup=False,
    )
