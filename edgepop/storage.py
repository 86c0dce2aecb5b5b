"""An LMDB environment with one writer thread.

Reads run inline on the event loop: LMDB reads are memory-mapped and take microseconds,
so a thread hop would cost more than the read. Writes run on a single dedicated thread,
because LMDB allows one write transaction at a time and ties it to its thread; every
write transaction commits with fsync (sync=True) before its caller is answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from edgepop.errors import StorageFullError

T = TypeVar("T")

MAP_SIZE_BYTES_DEFAULT = 4 * 1024**3
MAX_DBS = 32
MAX_READERS = 512


class Storage:
    def __init__(
        self, path: Path, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT, *, durable: bool = True
    ) -> None:
        """`durable=False` (KV replicas) commits without fsync; `flush()` syncs.

        A process crash loses nothing either way (committed pages are in the OS page
        cache). Only an OS crash can cost a non-durable store its last commits or its
        integrity — acceptable for a replica, whose content the origin can always send
        again (wipe its data dir and it takes a snapshot), and it spares the disk one
        fsync per applied batch on every PoP, which otherwise slows the origin's own.
        """
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.durable = durable
        self.env = lmdb.open(
            str(path),
            map_size=map_size_bytes,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            sync=durable,
            metasync=durable,
            readahead=False,
        )
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"lmdb-writer-{path.name}"
        )
        self._closed = False

    def db(self, name: str, *, dupsort: bool = False) -> Any:
        return self.env.open_db(name.encode(), dupsort=dupsort, create=True)

    def read(self) -> Any:
        """A read transaction for use in a `with` block (inline, on the caller's thread)."""
        return self.env.begin(buffers=False)

    def write_sync(self, work: Callable[[Any], T]) -> T:
        """Run `work(txn)` in one write transaction and commit it (blocking)."""
        try:
            with self.env.begin(write=True) as txn:
                return work(txn)
        except lmdb.MapFullError as error:
            raise StorageFullError(
                "storage is full (LMDB map size reached): writes are refused, reads still work"
            ) from error

    def write_inline(self, work: Callable[[Any], T]) -> T:
        """Run `work(txn)` in one write transaction on the calling thread (the event loop).

        Only for non-durable stores and short work: a commit without fsync takes
        microseconds, less than the hop to the writer thread and back (a replica applies
        every batch this way). LMDB takes its writer lock with the GIL released, so a
        write in flight on the writer thread only delays this one — provided no
        transaction on the writer thread stays open across an await of this loop.
        """
        if self.durable:
            raise RuntimeError("an fsync'd commit must not block the event loop")
        return self.write_sync(work)

    async def write(self, work: Callable[[Any], T]) -> T:
        """Run `work(txn)` in one durable write transaction on the writer thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, self.write_sync, work)

    async def run_on_writer(self, work: Callable[[], T]) -> T:
        """Run `work()` on the writer thread (for multi-step transactions it manages)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, work)

    async def flush(self) -> None:
        """Force committed data to disk (for stores opened with durable=False)."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self.env.sync, True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        self.env.sync(True)
        self.env.close()
