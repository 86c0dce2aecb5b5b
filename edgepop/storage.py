"""An LMDB environment with one writer thread.

Reads run inline on the event loop: LMDB reads are memory-mapped and take microseconds,
so a thread hop would cost more than the read. Writes run on a single dedicated thread,
because LMDB allows one write transaction at a time and ties it to its thread; every
write transaction commits with fsync (sync=True) before its caller is answered. A small
durable write may commit on the event loop's thread instead (`write_small`): its fsync
blocks the loop for a few hundred microseconds, less than the hop to the writer thread
and back costs (two thread wake-ups, measured at ~0.5 ms of CPU per write on a 2-core VM).

A store opened with `durable=False` (a KV replica) commits without fsync. Such a store can
be torn only when the machine stops (power loss, kernel crash) while it is open: a
process crash leaves its commits in the OS page cache. So it records, in a small file
written with fsync, the kernel's boot id and whether it was closed cleanly (after a final
sync); on open, a store that was still open under another boot may be torn and is
discarded (`Storage.discarded_because`): its owner fetches the content again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from edgepop import buggify
from edgepop.errors import StorageFullError, StorageIOError

T = TypeVar("T")

MAP_SIZE_BYTES_DEFAULT = 4 * 1024**3
# Payloads up to this size commit on the calling thread in `write_small` (the loop blocks
# for one fsync plus a copy of at most this much); larger ones go to the writer thread.
INLINE_WRITE_BYTES_MAX = 64 * 1024
MAX_DBS = 32
MAX_READERS = 512
# Beside data.mdb: the boot id a non-durable store was opened under, and whether it was
# closed cleanly since.
SYNC_STATE_FILE_NAME = "sync-state.json"
LMDB_FILE_NAMES = ("data.mdb", "lock.mdb")
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
# Test-only: the boot id this process takes as the machine's, to simulate a reboot in a
# test with real processes. Never set it in a deployment: a wrong value either discards a
# sound replica or keeps a torn one.
BOOT_ID_ENV = "EDGEPOP_TEST_BOOT_ID"


def current_boot_id() -> str:
    """The kernel's boot id (new at every boot); "" where the kernel has none."""
    override = os.environ.get(BOOT_ID_ENV, "")
    if override:
        return override
    try:
        return BOOT_ID_FILE.read_text().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class SyncState:
    """How a non-durable store was left: opened under `boot_id`, `open` until a clean close."""

    boot_id: str
    open: bool


def torn_reason(state: SyncState | None, has_data: bool, boot_id: str) -> str:
    """Why a non-durable store may be torn ("" when it is sound). Pure.

    Only a machine stop can tear it, and only while it was open: a store left open under
    the current boot went through a process crash, which the page cache survives; one
    closed cleanly was synced last. A store with data but no record predates the record
    (or lost it), so nothing says it is sound.
    """
    if not has_data:
        return ""
    if state is None:
        return f"no {SYNC_STATE_FILE_NAME} says how it was closed"
    if state.open and state.boot_id != boot_id:
        return f"it was open when the machine stopped (boot {state.boot_id or '?'}, now {boot_id})"
    return ""


def read_sync_state(path: Path) -> SyncState | None:
    """The recorded state of the store in `path` (None: missing or unreadable)."""
    try:
        raw = json.loads((path / SYNC_STATE_FILE_NAME).read_text())
        return SyncState(boot_id=str(raw["boot_id"]), open=bool(raw["open"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_sync_state(path: Path, state: SyncState) -> None:
    """Record `state` durably: a temporary file, fsync, rename, fsync of the directory."""
    descriptor, temporary = tempfile.mkstemp(dir=path, prefix=f".{SYNC_STATE_FILE_NAME}.")
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(asdict(state), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path / SYNC_STATE_FILE_NAME)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def discard_lmdb(path: Path) -> None:
    """Delete the LMDB files in `path` (the store then opens empty)."""
    for name in LMDB_FILE_NAMES:
        with contextlib.suppress(FileNotFoundError):
            (path / name).unlink()


class Storage:
    def __init__(
        self, path: Path, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT, *, durable: bool = True
    ) -> None:
        """`durable=False` (KV replicas) commits without fsync; `flush()` syncs.

        A process crash loses nothing either way (committed pages are in the OS page
        cache). Only an OS crash can cost a non-durable store its last commits or its
        integrity — acceptable for a replica, whose content the origin can always send
        again, and it spares the disk one fsync per applied batch on every PoP, which
        otherwise slows the origin's own. So a non-durable store that may be torn (see
        `torn_reason`), or that LMDB finds corrupt, is discarded here and opens empty;
        `discarded_because` says why ("" when it was kept).
        """
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.durable = durable
        self.map_size_bytes = map_size_bytes
        self.discarded_because = ""
        self._boot_id = ""
        if durable:
            self.env = self._open_env()
        else:
            self._boot_id = current_boot_id()
            reason = torn_reason(
                read_sync_state(path), (path / LMDB_FILE_NAMES[0]).exists(), self._boot_id
            )
            if reason:
                discard_lmdb(path)
            # Recorded before LMDB touches the files: from now until a clean close, a
            # machine stop may tear them.
            write_sync_state(path, SyncState(boot_id=self._boot_id, open=True))
            try:
                self.env = self._open_env()
            except (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError) as error:
                reason = f"LMDB cannot open it ({error})"
                discard_lmdb(path)
                self.env = self._open_env()
            self.discarded_because = reason
        self._writer = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"lmdb-writer-{path.name}"
        )
        self._closed = False
        # LMDB's id of the newest transaction that `flush` has synced (0: none yet).
        self._flushed_txnid = 0
        # `read_latest`'s transaction, the thread it belongs to, and the mark of the last
        # commit before it began. Every commit this object makes or runs sets a new mark,
        # drawn from a counter whose next() the GIL keeps whole on any thread.
        self._latest: Any = None
        self._latest_thread = 0
        self._latest_mark = -1
        self._marks = itertools.count()
        self._commit_mark = next(self._marks)

    def _open_env(self) -> Any:
        # The planted bug `no-fsync` (test-only, edgepop.buggify) commits a durable store
        # without sync, so that the power-loss test is seen to catch it.
        synced = self.durable and not buggify.enabled(buggify.NO_FSYNC)
        return lmdb.open(
            str(self.path),
            map_size=self.map_size_bytes,
            max_dbs=MAX_DBS,
            max_readers=MAX_READERS,
            sync=synced,
            metasync=synced,
            readahead=False,
        )

    def db(self, name: str, *, dupsort: bool = False, txn: Any = None) -> Any:
        """A named sub-database, created if missing (inside `txn` when one is open on this
        thread: LMDB would otherwise wait for the writer lock it holds)."""
        return self.env.open_db(name.encode(), txn=txn, dupsort=dupsort, create=True)

    def read(self) -> Any:
        """A read transaction for use in a `with` block (inline, on the caller's thread)."""
        return self.env.begin(buffers=False)

    def read_latest(self) -> Any:
        """A read transaction of the newest commit, kept from one call to the next (not
        in a `with` block: it stays open).

        For the hot local reads of one thread (a PoP's event loop), used between two
        awaits, never across one: beginning and ending a transaction per read costs as
        much as the read (each a call that releases the GIL). It is begun again after any
        commit this object made or ran (`_committed`), and ended at once by a commit on
        its own thread, so that a replica applying batches inline never keeps old pages
        from reuse. Bound: a commit that another thread makes is seen once `_committed`
        marks it (for `write` and `run_on_writer`, before their await returns) — as a
        transaction begun an instant before that commit would not see it either.
        """
        thread = threading.get_ident()
        txn = self._latest
        if txn is not None and self._latest_thread == thread:
            if self._latest_mark == self._commit_mark:
                return txn
            txn.abort()
        # The mark is read before the transaction begins: a commit in between makes the
        # transaction look older than it is (begun again next time), never newer.
        mark = self._commit_mark
        self._latest = txn = self.env.begin(buffers=False)
        self._latest_thread = thread
        self._latest_mark = mark
        return txn

    def _committed(self) -> None:
        """Mark a commit; a kept read transaction of this thread ends now."""
        self._commit_mark = next(self._marks)
        if self._latest is not None and self._latest_thread == threading.get_ident():
            self._latest.abort()
            self._latest = None

    def write_sync(self, work: Callable[[Any], T]) -> T:
        """Run `work(txn)` in one write transaction and commit it (blocking).

        A commit the disk refuses raises StorageIOError (UNAVAILABLE, with LMDB's reason),
        not an internal error: LMDB aborts the transaction, so nothing of it is visible,
        and the next commit may succeed (its pages are written and synced again; the
        failed one's pages are free). Errors of `work` itself pass unchanged.
        """
        try:
            try:
                txn = self.env.begin(write=True)
            except lmdb.Error as error:  # e.g. MDB_PANIC after a failed meta page write
                raise StorageIOError(f"storage refused a write transaction ({error})") from error
            try:
                result = work(txn)
            except BaseException:
                txn.abort()
                raise
            try:
                txn.commit()
            except lmdb.MapFullError:
                raise
            except lmdb.Error as error:
                raise StorageIOError(
                    f"storage refused the commit ({error}): the write is not acknowledged; "
                    "reads still work"
                ) from error
        except lmdb.MapFullError as error:
            raise StorageFullError(
                "storage is full (LMDB map size reached): writes are refused, reads still work"
            ) from error
        self._committed()
        return result

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

    async def write_small(self, work: Callable[[Any], T], payload_bytes: int) -> T:
        """`write`, on the calling thread when the payload is small (`INLINE_WRITE_BYTES_MAX`).

        For latency-critical durable writes (a Durable Object's commit and its standby's
        copy): the two thread hops of `write` cost more than blocking the loop for the
        fsync. LMDB waits for its writer lock with the GIL released, so a transaction in
        flight on the writer thread only delays this one (no transaction there stays open
        across an await of this loop in a durable store).
        """
        if payload_bytes <= INLINE_WRITE_BYTES_MAX:
            return self.write_sync(work)
        return await self.write(work)

    async def run_on_writer(self, work: Callable[[], T]) -> T:
        """Run `work()` on the writer thread (for multi-step transactions it manages)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, work)
        finally:
            self._committed()  # `work` may have committed (a snapshot install does)

    async def flush(self) -> bool:
        """Force committed data to disk (for stores opened with durable=False); False when
        nothing was committed since the last flush, which then costs no sync.

        LMDB's own last transaction id tells, whatever path the commit took (a snapshot
        commits outside `write`). Read before the sync, so a commit racing with it is
        synced again next time.
        """
        txnid = self.env.info()["last_txnid"]
        if txnid == self._flushed_txnid:
            return False
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self.env.sync, True)
        except lmdb.Error as error:
            raise StorageIOError(f"storage refused to sync ({error})") from error
        self._flushed_txnid = txnid
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.shutdown(wait=True)
        if self._latest is not None:
            self._latest.abort()
            self._latest = None
        self.env.sync(True)
        self.env.close()
        if not self.durable:
            # Synced and closed: sound whatever happens to the machine from here.
            write_sync_state(self.path, SyncState(boot_id=self._boot_id, open=False))
