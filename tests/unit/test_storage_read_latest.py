"""`Storage.read_latest`: a kept read transaction that every commit of the store, on any
thread and by any path, makes it begin again; one of its own thread's ends it at once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from edgepop.storage import Storage

MAP_SIZE_BYTES = 16 * 1024**2
KEY = b"k"


def _store(tmp_path: Path, durable: bool = False) -> Storage:
    return Storage(tmp_path / "store", MAP_SIZE_BYTES, durable=durable)


def _put(value: bytes) -> object:
    return lambda txn: txn.put(KEY, value)


def test_it_is_kept_until_a_commit_and_sees_every_commit_made_inline(tmp_path: Path) -> None:
    storage = _store(tmp_path)
    try:
        first = storage.read_latest()
        assert first.get(KEY) is None
        assert storage.read_latest() is first  # nothing committed: the same transaction
        storage.write_inline(_put(b"1"))
        second = storage.read_latest()
        assert second is not first and second.get(KEY) == b"1"
        storage.write_inline(_put(b"2"))
        assert storage.read_latest().get(KEY) == b"2"
    finally:
        storage.close()


def test_it_sees_commits_of_the_writer_thread_once_their_await_returns(tmp_path: Path) -> None:
    storage = _store(tmp_path, durable=True)

    async def scenario() -> list[bytes | None]:
        seen = [storage.read_latest().get(KEY)]
        await storage.write(_put(b"by-write"))
        seen.append(storage.read_latest().get(KEY))

        def manual() -> None:  # as a snapshot install: its own transaction, committed
            txn = storage.env.begin(write=True)
            txn.put(KEY, b"by-run-on-writer")
            txn.commit()

        await storage.run_on_writer(manual)
        seen.append(storage.read_latest().get(KEY))
        return seen

    try:
        assert asyncio.run(scenario()) == [None, b"by-write", b"by-run-on-writer"]
    finally:
        storage.close()


def test_a_commit_on_another_thread_is_seen_by_this_one(tmp_path: Path) -> None:
    storage = _store(tmp_path)
    try:
        assert storage.read_latest().get(KEY) is None
        writer = threading.Thread(target=storage.write_sync, args=(_put(b"other"),))
        writer.start()
        writer.join()
        assert storage.read_latest().get(KEY) == b"other"
    finally:
        storage.close()


def test_a_commit_on_its_own_thread_ends_it_so_no_old_pages_stay_pinned(tmp_path: Path) -> None:
    storage = _store(tmp_path)
    try:
        for index in range(200):
            assert storage.read_latest().get(KEY) == (
                None if index == 0 else bytes(2000) + str(index - 1).encode()
            )
            storage.write_inline(_put(bytes(2000) + str(index).encode()))
        # Each commit ended the kept reader: LMDB reused the pages freed before it (a
        # reader held through the 200 commits makes the file grow to ~500 pages).
        assert "no active readers" in storage.env.readers()
        assert storage.env.info()["last_pgno"] < 20
    finally:
        storage.close()
