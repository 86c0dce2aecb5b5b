"""The PoP's replication client: follow the origin's stream forever.

Subscribes from applied_seq + 1, applies each batch in one transaction with the new
applied_seq, installs a snapshot when the origin sends one, and reconnects with
tenacity backoff + jitter on any failure (a stream silent for longer than the idle
timeout counts as failed: a partition does not close TCP). Also keeps the staleness
bound: the origin time up to which this replica is known to hold every write.

A replica discarded at open because it may have been torn (edgepop.storage) subscribes
from 0 until its first entry or snapshot lands: it holds nothing it can vouch for, and 0
asks the origin for everything (a snapshot) rather than a position.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc

from edge.v1 import kv_pb2, origin_pb2
from edge.v1 import origin_pb2_grpc as origin_grpc
from edgepop import retry
from edgepop.kvstore import KvStore
from edgepop.metrics import PopMetrics, observe_ages
from edgepop.rpc import channel
from edgepop.storage import Storage
from pop_node import replica

log = logging.getLogger(__name__)

STREAM_IDLE_TIMEOUT_S_DEFAULT = 3.0
# Messages read ahead of the applier, and applied together at most.
INBOX_MESSAGES_MAX = 256
APPLY_MESSAGES_MAX = 64
# While messages wait to be applied (the reader may be blocked on a full inbox, which is
# not silence), the silence check looks again this many times per idle timeout.
SILENCE_CHECKS_PER_TIMEOUT = 10


class SnapshotSink(Protocol):
    """What takes a snapshot's other content (the SQL databases' images)."""

    def begin(self) -> None: ...

    def add(self, part: origin_pb2.SnapshotPart) -> None: ...

    async def install(self) -> None: ...


class StreamEnded(Exception):
    """The stream closed or went silent; reconnect."""


def silence_wait_s(heard_at: float, now: float, idle_timeout_s: float, backlog: bool) -> float:
    """Seconds until the stream may next have gone silent; 0 when it has now. Pure.

    Silent: nothing arrived for `idle_timeout_s` and nothing waits to be applied. So the
    check sleeps until the last message is that old (one timer per timeout, however
    often messages arrive, and never later than the timeout), and looks again a tenth of
    a timeout later while a backlog keeps the reader from receiving.
    """
    due = heard_at + idle_timeout_s - now
    if due > 0:
        return due
    if backlog:
        return idle_timeout_s / SILENCE_CHECKS_PER_TIMEOUT
    return 0.0


class ReplicationClient:
    def __init__(
        self,
        *,
        node: str,
        storage: Storage,
        store: KvStore,
        metrics: PopMetrics,
        origin_address: Callable[[], str],
        metadata: tuple[tuple[str, str], ...],
        on_applied: Callable[[int], None],
        idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S_DEFAULT,
        rebuild: bool = False,
        on_entries: Callable[[Sequence[kv_pb2.LogEntry]], None] | None = None,
        snapshot_sink: SnapshotSink | None = None,
    ) -> None:
        """`rebuild`: the replica was discarded (it may have been torn) and starts empty.
        `on_entries`: sees each batch before it commits (SQL databases replay theirs);
        `snapshot_sink`: takes what a snapshot carries beside KV records."""
        self.node = node
        self.storage = storage
        self.store = store
        self.metrics = metrics
        self.origin_address = origin_address
        self.metadata = metadata
        self.on_applied = on_applied
        self.on_entries = on_entries
        self.snapshot_sink = snapshot_sink
        self.idle_timeout_s = idle_timeout_s
        with storage.read() as txn:
            self.applied_seq, self.complete_as_of = replica.read_position(store, txn)
        self.origin_head_seq = self.applied_seq
        # Until the first entry or snapshot lands, subscribe from 0: "send me everything".
        self.rebuilding = rebuild
        self.connected = False
        self.started_at = time.time()
        self.applied_changed = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._channel_address = ""
        self._snapshot_txn: Any = None
        # Channels to a previous origin address, closed with this client.
        self._retired_channels: set[grpc.aio.Channel] = set()
        metrics.kv_applied_seq.set(self.applied_seq)
        metrics.set_lag_function(self.lag_seconds)

    def lag_seconds(self) -> float:
        """Now minus the origin time up to which every committed write is here."""
        known = self.complete_as_of or self.started_at
        return max(0.0, time.time() - known)

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until applied_seq >= seq; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.applied_seq < seq:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            event = self.applied_changed
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                return self.applied_seq >= seq
        return True

    # -- connection loop ---------------------------------------------------------------

    async def run(self) -> None:
        while True:
            async for attempt in retry.reconnect():
                with attempt:
                    await self._follow()

    async def _follow(self) -> None:
        """One subscription. Returns after progress (fresh backoff); raises otherwise.

        A reader task queues messages as they arrive; the applier takes everything queued
        and applies its entries in one transaction (on the loop: a replica's commit does
        not fsync), so a busy stream costs one commit per batch of messages, not per
        message.
        """
        stub = origin_grpc.OriginStub(self._origin_channel())
        from_seq = 0 if self.rebuilding else self.applied_seq + 1
        call = stub.Subscribe(
            origin_pb2.SubscribeRequest(node=self.node, from_seq=from_seq),
            metadata=self.metadata,
        )
        inbox: asyncio.Queue[Any] = asyncio.Queue(INBOX_MESSAGES_MAX)
        heard_at = time.monotonic()

        async def read() -> None:
            nonlocal heard_at
            try:
                while True:
                    message = await call.read()
                    heard_at = time.monotonic()
                    await inbox.put(message)
                    if message is grpc.aio.EOF:
                        return
            except grpc.aio.AioRpcError as error:
                await inbox.put(error)

        async def watch_silence() -> None:
            # One timer for the stream rather than one per message (see silence_wait_s).
            while True:
                backlog = not inbox.empty()
                wait = silence_wait_s(heard_at, time.monotonic(), self.idle_timeout_s, backlog)
                if wait == 0:
                    inbox.put_nowait(StreamEnded(f"no message for {self.idle_timeout_s} s"))
                    return
                await asyncio.sleep(wait)

        reader = asyncio.ensure_future(read())
        watchdog = asyncio.ensure_future(watch_silence())
        progressed = False
        try:
            while True:
                batch = [await inbox.get()]
                while not inbox.empty() and len(batch) < APPLY_MESSAGES_MAX:
                    batch.append(inbox.get_nowait())
                messages = []
                ended: BaseException | None = None
                for item in batch:
                    if item is grpc.aio.EOF:
                        ended = StreamEnded("the origin closed the stream")
                        break
                    if isinstance(item, BaseException):
                        ended = item
                        break
                    messages.append(item)
                if messages:
                    if not self.connected:
                        self.connected = True
                        self.metrics.kv_stream_connects.inc()
                        log.info(
                            "replicating from %s at seq %d",
                            self._channel_address,
                            self.applied_seq,
                        )
                    await self._handle_batch(messages)
                    progressed = True
                if ended is not None:
                    raise ended
        except (StreamEnded, grpc.aio.AioRpcError) as error:
            self.connected = False
            await self._abort_snapshot()
            if progressed:
                log.warning("replication stream lost (%s); reconnecting", _describe(error))
                return
            raise
        finally:
            self.connected = False
            reader.cancel()
            watchdog.cancel()
            call.cancel()

    def _origin_channel(self) -> grpc.aio.Channel:
        address = self.origin_address()
        if self._channel is None or address != self._channel_address:
            if self._channel is not None:
                self._retired_channels.add(self._channel)
            self._channel = channel(address)
            self._channel_address = address
        return self._channel

    # -- applying ----------------------------------------------------------------------

    async def _handle_batch(self, messages: list[origin_pb2.SubscribeResponse]) -> None:
        """Apply consecutive messages: runs of entries in one transaction, snapshots alone."""
        run: list[origin_pb2.SubscribeResponse] = []
        for message in messages:
            self.origin_head_seq = max(self.origin_head_seq, message.head_seq)
            if message.HasField("snapshot"):
                await self._apply_run(run)
                run = []
                await self._handle_snapshot(message)
            elif self._snapshot_txn is not None:
                # The snapshot's transaction holds LMDB's writer lock on the writer thread:
                # applying entries now would wait on it forever.
                raise StreamEnded("entries inside a snapshot")
            else:
                run.append(message)
        await self._apply_run(run)
        self.metrics.kv_origin_head_seq.set(self.origin_head_seq)

    async def _apply_run(self, run: list[origin_pb2.SubscribeResponse]) -> None:
        if not run:
            return
        entries = [entry for message in run for entry in message.entries]
        planned = entries[replica.plan_batch(self.applied_seq, [e.seq for e in entries])]
        last_seq = planned[-1].seq if planned else self.applied_seq
        # Never behind the bound already held: the stored one must not go back either.
        complete_as_of = max(
            self.complete_as_of,
            replica.complete_as_of(
                last_seq,
                [(m.head_seq, m.origin_time) for m in run],
                planned[-1].commit_time if planned else 0.0,
            ),
        )
        if planned:
            if self.on_entries is not None:
                self.on_entries(planned)
            applied = self.storage.write_inline(
                lambda txn: replica.apply_batch(self.store, txn, planned, complete_as_of)
            )
            observe_ages(self.metrics.kv_propagation, time.time(), [e.commit_time for e in planned])
            self.metrics.kv_applied_entries.inc(len(planned))
            self._advance(applied)
        self.complete_as_of = complete_as_of

    async def _handle_snapshot(self, message: origin_pb2.SubscribeResponse) -> None:
        part = message.snapshot
        env = self.storage.env
        if part.first:
            await self._abort_snapshot()
            log.info("installing a snapshot at seq %d", part.snapshot_seq)
            if self.snapshot_sink is not None:
                self.snapshot_sink.begin()

            def begin() -> Any:
                txn = env.begin(write=True)
                replica.begin_snapshot(self.store, txn)
                return txn

            self._snapshot_txn = await self.storage.run_on_writer(begin)
        txn = self._snapshot_txn
        if txn is None:
            raise StreamEnded("snapshot part without its first part")
        records = part.records
        await self.storage.run_on_writer(
            lambda: replica.apply_snapshot_part(self.store, txn, records)
        )
        if self.snapshot_sink is not None and part.sql_images:
            self.snapshot_sink.add(part)
        if part.last:
            if self.snapshot_sink is not None:
                # Before the KV replica commits: should the node stop in between, the
                # replica resumes below the images, and replay skips what they hold.
                await self.snapshot_sink.install()

            def finish() -> None:
                replica.finish_snapshot(self.store, txn, part.snapshot_seq, message.origin_time)
                txn.commit()

            await self.storage.run_on_writer(finish)
            self._snapshot_txn = None
            self.metrics.kv_snapshots.inc()
            self.complete_as_of = message.origin_time
            self._advance(part.snapshot_seq, snapshot=True)

    async def _abort_snapshot(self) -> None:
        txn, self._snapshot_txn = self._snapshot_txn, None
        if txn is not None:
            await self.storage.run_on_writer(txn.abort)

    def _advance(self, applied_seq: int, snapshot: bool = False) -> None:
        if applied_seq < self.applied_seq and not snapshot:
            raise AssertionError("applied_seq only grows")
        self.applied_seq = applied_seq
        self.rebuilding = False
        self.metrics.kv_applied_seq.set(applied_seq)
        self.on_applied(applied_seq)
        self.applied_changed.set()
        self.applied_changed = asyncio.Event()

    async def close(self) -> None:
        await self._abort_snapshot()
        for retired in (*self._retired_channels, self._channel):
            if retired is not None:
                await retired.close(grace=None)


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)
