"""The replication stream a subscriber receives from `Subscribe(from_seq)`.

Resume by sequence: entries from `from_seq` on, many per message under load; the head
seq and origin time while idle (the subscriber's staleness bound); and a full snapshot
first when `from_seq` is older than the retained log (or ahead of the origin, which
only a wiped origin can cause), never silence.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable

from edge.v1 import origin_pb2
from edgepop import ticks
from edgepop.kvapi import chunked
from edgepop.kvstore import KvStore
from origin_node.writelog import WriteLog

BATCH_ENTRIES_MAX = 2000
BATCH_BYTES_MAX = 4 * 1024 * 1024
# An idle stream's heartbeat: the precision of an idle PoP's staleness bound (lag reads
# one-way delay + up to this) against 34 processes on 2 cores each woken this often
# (at 0.1 s the heartbeats were most of an idle cluster's CPU; at 0.25 s, 40% of an idle
# PoP's wake-ups). Writes never wait on it: under load every batch carries the head.
STREAM_HEARTBEAT_INTERVAL_S_DEFAULT = 0.5
# Encoded log ranges kept for subscribers at the same position (they usually are).
ENCODED_RANGES_MAX = 256
_ENTRY_TAG = b"\x0a"  # SubscribeResponse.entries: field 1, length-delimited
_HEAD_TAG = b"\x10"  # head_seq: field 2, varint
_TIME_TAG = b"\x19"  # origin_time: field 3, 64-bit
_DOUBLE = struct.Struct("<d")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_entries(raw_entries: list[bytes]) -> bytes:
    """The `entries` field of a SubscribeResponse, from stored (serialized) LogEntries."""
    return b"".join(_ENTRY_TAG + _varint(len(raw)) + raw for raw in raw_entries)


def encode_position(head_seq: int, origin_time: float) -> bytes:
    """The `head_seq` and `origin_time` fields of a SubscribeResponse."""
    return _HEAD_TAG + _varint(head_seq) + _TIME_TAG + _DOUBLE.pack(origin_time)


class HeadWatch:
    """Lets streams sleep until the head seq moves past the one they have sent.

    Each waiting stream holds a bare future and a timer handle: waking every subscriber
    on a commit, or each at its heartbeat, costs no task (asyncio.wait_for would make
    and cancel one per wait, per subscriber).
    """

    def __init__(self, head_seq: int) -> None:
        self.head_seq = head_seq
        self.closing = False
        self._waiters: set[asyncio.Future[None]] = set()

    def close(self) -> None:
        """Wake every stream for good: the origin is draining."""
        self.closing = True
        self._wake_all()

    def advance(self, head_seq: int) -> None:
        if head_seq > self.head_seq:
            self.head_seq = head_seq
            self._wake_all()

    def _wake_all(self) -> None:
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            _wake(waiter)

    async def wait_beyond(self, seq: int, timeout: float) -> None:
        """Return once the head is past `seq`, the origin drains, or `timeout` passed."""
        if self.head_seq > seq or self.closing:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.add(waiter)
        timer = loop.call_later(timeout, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiters.discard(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class ReplicationStream:
    def __init__(
        self,
        store: KvStore,
        log: WriteLog,
        head: HeadWatch,
        heartbeat_interval_s: float = STREAM_HEARTBEAT_INTERVAL_S_DEFAULT,
        sql_images: Callable[[], AsyncIterator[origin_pb2.SqlImagePiece]] | None = None,
    ) -> None:
        """`sql_images`: the SQL databases' images, for snapshots."""
        self.sql_images = sql_images
        self.store = store
        self.log = log
        self.head = head
        self.heartbeat_interval_s = heartbeat_interval_s
        # from_seq -> (last seq, encoded entries): shared by every subscriber at from_seq.
        self._ranges: OrderedDict[int, tuple[int, bytes]] = OrderedDict()

    def _encoded_range(self, txn: object, from_seq: int) -> tuple[int, bytes] | None:
        cached = self._ranges.get(from_seq)
        if cached is not None:
            self._ranges.move_to_end(from_seq)
            return cached
        raw = self.log.read_raw(txn, from_seq, BATCH_ENTRIES_MAX, BATCH_BYTES_MAX)
        if not raw:
            return None
        encoded = (from_seq + len(raw) - 1, encode_entries(raw))
        self._ranges[from_seq] = encoded
        if len(self._ranges) > ENCODED_RANGES_MAX:
            self._ranges.popitem(last=False)
        return encoded

    async def messages(self, from_seq: int) -> AsyncIterator[origin_pb2.SubscribeResponse | bytes]:
        """Stream messages; batches of entries come pre-encoded (bytes), the rest as messages."""
        next_seq = max(from_seq, 1)
        with self.store.storage.read() as txn:
            head, first = self.log.positions(txn)
        # from_seq 0: the subscriber holds nothing it can vouch for (a possibly torn
        # replica it discarded): a snapshot first, whatever the log still holds.
        if from_seq == 0 or next_seq < first or next_seq > head + 1:
            async for message in self.snapshot():
                yield message
                if message.snapshot.last:
                    next_seq = message.snapshot.snapshot_seq + 1
        while not self.head.closing:
            # Taken before the read: every write committed by then is in this read.
            origin_time = time.time()
            with self.store.storage.read() as txn:
                head, first = self.log.positions(txn)
                batch = None if next_seq < first else self._encoded_range(txn, next_seq)
            if next_seq < first:
                # Fell behind the truncation point while connected: start over.
                async for message in self.snapshot():
                    yield message
                    if message.snapshot.last:
                        next_seq = message.snapshot.snapshot_seq + 1
                continue
            if batch is not None:
                last_seq, encoded = batch
                next_seq = last_seq + 1
                yield encoded + encode_position(head, origin_time)
                if next_seq <= head:
                    continue  # more is pending: keep sending
            else:
                yield origin_pb2.SubscribeResponse(head_seq=head, origin_time=origin_time)
            # Idle, every stream's heartbeat goes in one pass (edgepop.ticks).
            await self.head.wait_beyond(head, ticks.until_next_tick(self.heartbeat_interval_s))

    async def snapshot(self) -> AsyncIterator[origin_pb2.SubscribeResponse]:
        """The whole store at one seq, in parts, from one read transaction."""
        origin_time = time.time()
        with self.store.storage.read() as txn:
            snapshot_seq, _ = self.log.positions(txn)
            first = True
            for chunk in chunked(self.store.iter_records(txn)):
                part = origin_pb2.SnapshotPart(
                    snapshot_seq=snapshot_seq,
                    records=[record.to_pb() for record in chunk],
                    first=first,
                )
                first = False
                yield origin_pb2.SubscribeResponse(
                    head_seq=snapshot_seq, origin_time=origin_time, snapshot=part
                )
        if self.sql_images is not None:
            # After snapshot_seq was fixed: each image holds at least every commit of its
            # database up to it (SqlPrimaries.images).
            async for piece in self.sql_images():
                part = origin_pb2.SnapshotPart(
                    snapshot_seq=snapshot_seq, sql_images=[piece], first=first
                )
                first = False
                yield origin_pb2.SubscribeResponse(
                    head_seq=snapshot_seq, origin_time=origin_time, snapshot=part
                )
        yield origin_pb2.SubscribeResponse(
            head_seq=snapshot_seq,
            origin_time=origin_time,
            snapshot=origin_pb2.SnapshotPart(snapshot_seq=snapshot_seq, first=first, last=True),
        )
