"""The replication stream a subscriber receives from `Subscribe(from_seq)`.

Resume by sequence: entries from `from_seq` on, many per message under load; the head
seq and origin time while idle (the subscriber's staleness bound); and a full snapshot
first when `from_seq` is older than the retained log (or ahead of the origin, which
only a wiped origin can cause), never silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from edge.v1 import origin_pb2
from edgepop.kvapi import chunked
from edgepop.kvstore import KvStore
from origin_node.writelog import WriteLog

BATCH_ENTRIES_MAX = 2000
BATCH_BYTES_MAX = 4 * 1024 * 1024
STREAM_HEARTBEAT_INTERVAL_S_DEFAULT = 0.1


class HeadWatch:
    """Lets streams sleep until the head seq moves past the one they have sent."""

    def __init__(self, head_seq: int) -> None:
        self.head_seq = head_seq
        self._moved = asyncio.Event()

    def advance(self, head_seq: int) -> None:
        if head_seq > self.head_seq:
            self.head_seq = head_seq
            self._moved.set()
            self._moved = asyncio.Event()

    async def wait_beyond(self, seq: int, timeout: float) -> None:
        if self.head_seq > seq:
            return
        event = self._moved
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class ReplicationStream:
    def __init__(
        self,
        store: KvStore,
        log: WriteLog,
        head: HeadWatch,
        heartbeat_interval_s: float = STREAM_HEARTBEAT_INTERVAL_S_DEFAULT,
    ) -> None:
        self.store = store
        self.log = log
        self.head = head
        self.heartbeat_interval_s = heartbeat_interval_s

    async def messages(self, from_seq: int) -> AsyncIterator[origin_pb2.SubscribeResponse]:
        next_seq = max(from_seq, 1)
        with self.store.storage.read() as txn:
            head, first = self.log.positions(txn)
        if next_seq < first or next_seq > head + 1:
            async for message in self.snapshot():
                yield message
                if message.snapshot.last:
                    next_seq = message.snapshot.snapshot_seq + 1
        while True:
            # Taken before the read: every write committed by then is in this read.
            origin_time = time.time()
            with self.store.storage.read() as txn:
                head, first = self.log.positions(txn)
                if next_seq < first:
                    # Fell behind the truncation point while connected: start over.
                    entries = []
                else:
                    entries = self.log.read(txn, next_seq, BATCH_ENTRIES_MAX, BATCH_BYTES_MAX)
            if next_seq < first:
                async for message in self.snapshot():
                    yield message
                    if message.snapshot.last:
                        next_seq = message.snapshot.snapshot_seq + 1
                continue
            if entries:
                next_seq = entries[-1].seq + 1
                yield origin_pb2.SubscribeResponse(
                    entries=entries, head_seq=head, origin_time=origin_time
                )
                if next_seq <= head:
                    continue  # more is pending: keep sending
            else:
                yield origin_pb2.SubscribeResponse(head_seq=head, origin_time=origin_time)
            await self.head.wait_beyond(head, self.heartbeat_interval_s)

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
            yield origin_pb2.SubscribeResponse(
                head_seq=snapshot_seq,
                origin_time=origin_time,
                snapshot=origin_pb2.SnapshotPart(snapshot_seq=snapshot_seq, first=first, last=True),
            )
