"""A snapshot's swap of the SQL replicas against queries arriving while it runs.

The swap (SqlReplicas.replace_all) closes every database and moves the files on the read
thread. A query that opened or picked a database on the loop meanwhile could hold one
closed by the swap, or opened on the old file (a replica that then never saw another
write). Every access goes through the read thread, behind the swap.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

from edge.v1 import sql_pb2
from edgepop import sqldb
from edgepop.metrics import PopMetrics
from pop_node.sql import SqlReplicas


def _replicas(directory: Path) -> SqlReplicas:
    pop = SimpleNamespace(name="pop-1", region="london", metrics=PopMetrics("pop-1", "london"))
    return SqlReplicas(pop, directory)  # type: ignore[arg-type]


def _image(path: Path, rows: list[str], seq: int) -> None:
    """A database file as a primary leaves it, its last commit logged as `seq`."""
    primary = sqldb.Database(path, primary=True)
    statements = ["CREATE TABLE t (v TEXT)", *(f"INSERT INTO t VALUES ('{row}')" for row in rows)]
    try:
        for commit_seq, statement in enumerate(statements, start=seq - len(statements) + 1):
            primary.execute([sql_pb2.SqlStatement(sql=statement)])
            primary.commit(commit_seq)
    finally:
        primary.close()


def test_a_dump_asked_for_during_a_swap_reads_the_installed_database(tmp_path: Path) -> None:
    replicas = _replicas(tmp_path / "sql")
    _image(replicas.databases.path("db"), ["old"], seq=2)
    staged = tmp_path / "sql.incoming"
    staged.mkdir()
    _image(staged / f"db{sqldb.FILE_SUFFIX}", ["old", "new"], seq=9)

    async def scenario() -> tuple[sql_pb2.SqlDumpResponse, list[sql_pb2.SqlDatabase]]:
        before = await replicas.dump("db")  # the old replica is open
        assert "new" not in before.dump
        # Hold the read thread, so the swap waits behind it while the dump is asked for.
        held = threading.Event()
        loop = asyncio.get_running_loop()
        blocker = loop.run_in_executor(replicas._reads, held.wait)
        try:
            swap = asyncio.ensure_future(replicas.replace_all(staged))
            await asyncio.sleep(0)
            dump = asyncio.ensure_future(replicas.dump("db"))
            catalog = asyncio.ensure_future(replicas.catalog())
            await asyncio.sleep(0)
        finally:
            held.set()
        await blocker
        await swap
        return await dump, await catalog

    try:
        after, catalog = asyncio.run(scenario())
        assert "'new'" in after.dump and after.applied_seq == 9
        assert [database.name for database in catalog] == ["db"]
    finally:
        replicas.close()


def test_a_database_is_opened_once_however_many_threads_ask(tmp_path: Path) -> None:
    databases = sqldb.Databases(tmp_path, primary=False)
    names = [f"db{index}" for index in range(10)]
    opened: dict[str, set[int]] = {name: set() for name in names}
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def open_them() -> None:
        for name in names:
            start.wait(timeout=10)
            try:
                opened[name].add(id(databases.create(name)))
            except Exception as error:  # two writers opening at once: "database is locked"
                failures.append(error)

    threads = [threading.Thread(target=open_them) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert {name: len(ids) for name, ids in opened.items()} == dict.fromkeys(names, 1)
    finally:
        databases.close()
