"""One live Durable Object on its owner: input gate, storage view, output gate, sessions.

Input gate: an asyncio.Lock (FIFO) held for a whole call, so calls run one at a time in
arrival order even across awaits. Writes of a call go to a call buffer; when the call
returns they become the object's *pending* writes (visible to the next call at once) and
are submitted for commit; the gate opens; the reply waits until the commit holding them
— and every earlier one — is durable on this node and the standby (output gate). So a
hot object runs call after call while commits, each carrying many calls, are in flight:
it is not capped at one fsync per call. Messages to sessions wait at the same gate.

A failed commit breaks the instance: pending writes are gone with it, every waiting call
fails, and the next call starts a fresh instance from durable storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from edgepop.durable import (
    STORAGE_KEYS_PER_CALL_MAX,
    DurableObject,
    ObjectState,
    Session,
    Storage,
)
from edgepop.errors import EdgeError, InvalidArgumentError, OverloadedError, UnavailableError
from edgepop.websocket import CloseEvent, WebSocket, WebSocketRequestResponsePair
from pop_node.objects.sql_storage import SqlStorage, SqlStorageError
from pop_node.objects.store import (
    ALARM_KEY,
    INTERNAL_PREFIX,
    OBJECT_KEY_BYTES_MAX,
    OBJECT_VALUE_BYTES_MAX,
    Write,
    decode_alarm,
    encode_alarm,
    okey,
)

if TYPE_CHECKING:
    from pop_node.objects.host import ObjectHost

log = logging.getLogger(__name__)

T = TypeVar("T")

# Calls waiting at one object's input gate before new ones are refused.
QUEUE_DEPTH_MAX = 256
OVERLOADED_MESSAGE = "Durable Object is overloaded. Too many requests queued."
# Request ids remembered per object, so a retried call is answered, not run again.
REQUEST_IDS_MAX = 512
REQUEST_PREFIX = INTERNAL_PREFIX + b"req:"
REMEMBERED_RESULT_BYTES_MAX = 16 * 1024
SESSION_QUEUE_MAX = 10_000
# Cloudflare's bounds on hibernatable WebSockets.
WEBSOCKETS_MAX = 32_768
WEBSOCKET_TAGS_MAX = 10
WEBSOCKET_TAG_CHARS_MAX = 256


class RemoteError(EdgeError):
    """An exception raised by the object's own code, passed to the caller (marked remote)."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"remote {error_type}: {message}")
        self.error_type = error_type


class InstanceBrokenError(UnavailableError):
    """The instance lost a commit or its ownership; the caller may retry (a new instance)."""


def _encode_value(key: str, value: Any) -> bytes:
    try:
        raw = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise InvalidArgumentError(f"value of {key!r} is not JSON data: {error}") from error
    if len(raw) > OBJECT_VALUE_BYTES_MAX:
        raise InvalidArgumentError(
            f"value of {key!r} is {len(raw)} bytes; the limit is {OBJECT_VALUE_BYTES_MAX}"
            " (OBJECT_VALUE_BYTES_MAX)"
        )
    return raw


def _encode_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise InvalidArgumentError("storage keys are non-empty strings")
    raw = key.encode()
    if raw.startswith(INTERNAL_PREFIX):
        raise InvalidArgumentError("storage keys must not start with NUL")
    if len(raw) > OBJECT_KEY_BYTES_MAX:
        raise InvalidArgumentError(
            f"storage key is {len(raw)} bytes; the limit is {OBJECT_KEY_BYTES_MAX}"
            " (OBJECT_KEY_BYTES_MAX)"
        )
    return raw


def _check_batch(count: int) -> None:
    if count > STORAGE_KEYS_PER_CALL_MAX:
        raise InvalidArgumentError(
            f"at most {STORAGE_KEYS_PER_CALL_MAX} keys per storage operation; got {count}"
        )


class InstanceStorage(Storage):
    """Reads see the current call's writes, then pending writes, then LMDB."""

    def __init__(self, instance: ObjectInstance) -> None:
        self._instance = instance

    def _writes(self) -> dict[bytes, bytes | None]:
        buffer = self._instance.call_buffer
        if buffer is None:
            raise RuntimeError("storage is used outside a call of this object")
        return buffer

    def _read(self, key: bytes) -> bytes | None:
        return self._instance.read(key)

    # Storage is synchronous underneath (reads from memory and LMDB, writes to the call's
    # buffer): the `*_now` forms serve Cloudflare's synchronous `ctx.storage.kv`.

    def get_now(self, key: str | Sequence[str]) -> Any:
        if isinstance(key, str):
            raw = self._read(_encode_key(key))
            return None if raw is None else json.loads(raw)
        keys = list(key)
        _check_batch(len(keys))
        found = {}
        for name in keys:
            raw = self._read(_encode_key(name))
            if raw is not None:
                found[name] = json.loads(raw)
        return found

    def put_now(self, key: str | dict[str, Any], value: Any = None) -> None:
        entries = {key: value} if isinstance(key, str) else dict(key)
        _check_batch(len(entries))
        encoded = {_encode_key(name): _encode_value(name, item) for name, item in entries.items()}
        self._writes().update(encoded)

    def delete_now(self, key: str | Sequence[str]) -> bool | int:
        keys = [key] if isinstance(key, str) else list(key)
        _check_batch(len(keys))
        writes = self._writes()
        existed = 0
        for name in keys:
            raw_key = _encode_key(name)
            if self._read(raw_key) is not None:
                existed += 1
            writes[raw_key] = None
        return bool(existed) if isinstance(key, str) else existed

    def list_now(
        self,
        *,
        prefix: str = "",
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        items = self._instance.scan(
            prefix=prefix.encode(),
            start=start.encode() if start is not None else None,
            end=end.encode() if end is not None else None,
            reverse=reverse,
            limit=limit,
        )
        return {key.decode(): json.loads(value) for key, value in items}

    async def get(self, key: str | Sequence[str]) -> Any:
        return self.get_now(key)

    async def put(self, key: str | dict[str, Any], value: Any = None) -> None:
        self.put_now(key, value)

    async def delete(self, key: str | Sequence[str]) -> bool | int:
        return self.delete_now(key)

    async def list(self, **options: Any) -> dict[str, Any]:
        return self.list_now(**options)

    async def delete_all(self) -> None:
        writes = self._writes()
        for key, _ in self._instance.scan(prefix=b"", start=None, end=None, reverse=False):
            writes[key] = None
        writes[ALARM_KEY] = None

    @property
    def sql(self) -> SqlStorage:
        """The object's SQL database (classes in wrangler's `new_sqlite_classes`)."""
        if self._instance.sql is None:
            raise RuntimeError(
                "storage.sql is only for SQLite-backed classes (new_sqlite_classes in "
                "the migrations of wrangler.jsonc)"
            )
        return self._instance.sql

    def transactionSync(self, body: Callable[[], T]) -> T:
        """Run `body` atomically: if it raises, none of its writes (SQL or key-value) stay."""
        instance = self._instance
        saved_writes = dict(self._writes())
        saved_outbox = list(instance.outbox)
        try:
            if instance.sql is None:
                return body()
            return instance.sql.transaction_sync(body)
        except BaseException:
            instance.call_buffer = saved_writes
            instance.outbox = saved_outbox
            raise

    transaction_sync = transactionSync

    async def transaction(self, body: Callable[[Storage], Awaitable[T]]) -> T:
        instance = self._instance
        saved_writes = dict(self._writes())
        saved_outbox = list(instance.outbox)
        try:
            return await body(self)
        except BaseException:
            instance.call_buffer = saved_writes
            instance.outbox = saved_outbox
            raise

    async def get_alarm(self) -> float | None:
        raw = self._read(ALARM_KEY)
        return None if raw is None else decode_alarm(raw)

    async def set_alarm(self, at: float) -> None:
        self._writes()[ALARM_KEY] = encode_alarm(float(at))

    async def delete_alarm(self) -> None:
        self._writes()[ALARM_KEY] = None


class SessionChannel(Session):
    """A connected client; messages are released once the call that sent them is durable."""

    def __init__(self, instance: ObjectInstance) -> None:
        self.id = uuid.uuid4().hex
        self._instance = instance
        self.queue: asyncio.Queue[tuple[int, str | bytes | CloseEvent] | None] = asyncio.Queue(
            SESSION_QUEUE_MAX
        )
        self.closed_reason = ""

    def send(self, data: str | bytes | CloseEvent) -> None:
        """Queue a message (for a WebSocket session: a frame, or its close)."""
        if self.closed_reason:
            return
        instance = self._instance
        if instance.call_buffer is not None:
            instance.outbox.append((self, data))
        else:
            self.enqueue(instance.seq, data)

    def enqueue(self, required_seq: int, data: str | bytes | CloseEvent) -> None:
        try:
            self.queue.put_nowait((required_seq, data))
        except asyncio.QueueFull:
            self.close("session send queue is full")

    def close(self, reason: str = "closed by the object") -> None:
        if self.closed_reason:
            return
        self.closed_reason = reason
        self._instance.sessions.pop(self.id, None)
        # The end marker may be dropped if the queue is full: the reason is still set.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)


def hibernation_due(
    *, idle_s: float, after_s: float, busy: bool, hibernatable_sockets: int, sessions: int
) -> bool:
    """Cloudflare's rule, as far as it is visible here: an object hibernates when it has
    been `after_s` without an event (0: never), runs and awaits nothing (no event at its
    gate, no commit pending), and every connection it has is a hibernatable WebSocket
    (`ctx.acceptWebSocket`; each has one session: any other session, a plain one or a
    socket the object serves itself with `accept()`, keeps it in memory). An object with
    no connection at all is not hibernating but idle, and stays."""
    return (
        after_s > 0
        and idle_s >= after_s
        and not busy
        and hibernatable_sockets > 0
        and sessions <= hibernatable_sockets
    )


def eviction_due(*, idle_s: float, after_s: float, busy: bool, sessions: int) -> bool:
    """Cloudflare's other rule: an object with no connection at all, idle for 70-140 s
    (`after_s`; 0: never), is evicted from memory; the next event constructs it again.
    A connection of any kind keeps it (hibernatable sockets hibernate it instead)."""
    return after_s > 0 and idle_s >= after_s and not busy and sessions == 0


class InstanceState(ObjectState):
    def __init__(self, instance: ObjectInstance) -> None:
        self._instance = instance
        self.id = instance.object_id.hex()
        self.namespace = instance.namespace
        self.storage = InstanceStorage(instance)

    async def block_concurrency_while(self, body: Callable[[], Awaitable[T]]) -> T:
        # Calls already hold the input gate for their whole run; setup runs under it too.
        return await body()

    def sessions(self) -> list[Session]:
        return list(self._instance.sessions.values())

    # Cloudflare's hibernatable WebSockets (`ctx.acceptWebSocket`): the instance keeps them.

    def accept_websocket(self, ws: WebSocket, tags: Sequence[str] = ()) -> None:
        sockets = self._instance.websockets
        if not isinstance(ws, WebSocket) or ws.accepted:
            raise TypeError("acceptWebSocket takes the server end of a new WebSocketPair")
        if len(sockets) >= WEBSOCKETS_MAX:
            raise RuntimeError(f"an object holds at most {WEBSOCKETS_MAX} WebSockets")
        checked = [str(tag) for tag in tags]
        if len(checked) > WEBSOCKET_TAGS_MAX or any(
            not tag or len(tag) > WEBSOCKET_TAG_CHARS_MAX for tag in checked
        ):
            raise ValueError(
                f"at most {WEBSOCKET_TAGS_MAX} tags, each 1 to {WEBSOCKET_TAG_CHARS_MAX} chars"
            )
        sockets[ws] = checked

    def websockets(self, tag: str | None = None) -> list[WebSocket]:
        return [
            ws
            for ws, tags in self._instance.websockets.items()
            if ws.readyState == WebSocket.OPEN and (tag is None or tag in tags)
        ]

    def websocket_tags(self, ws: WebSocket) -> list[str]:
        return list(self._instance.websockets.get(ws, []))

    def set_websocket_auto_response(self, pair: WebSocketRequestResponsePair | None) -> None:
        self._instance.auto_response = pair

    def websocket_auto_response(self) -> WebSocketRequestResponsePair | None:
        return self._instance.auto_response


class ObjectInstance:
    def __init__(
        self,
        host: ObjectHost,
        namespace: str,
        object_id: bytes,
        cls: type[DurableObject],
        *,
        epoch: int,
        seq: int,
        standby: str,
        standby_address: str,
        lease_generation: int,
        sqlite: bool = False,
    ) -> None:
        """`sqlite`: the class is SQLite-backed (`ctx.storage.sql`)."""
        self.host = host
        self.namespace = namespace
        self.object_id = object_id
        self.okey = okey(namespace, object_id)
        self.cls = cls
        self.epoch = epoch
        # Commits: `seq` is the newest submitted, `durable_seq` the newest on disk here and
        # at the standby. Pending writes carry the seq of the commit that holds them.
        self.seq = seq
        self.durable_seq = seq
        self.pending: dict[bytes, tuple[int, bytes | None]] = {}
        self.standby = standby
        self.standby_address = standby_address
        self.lease_generation = lease_generation
        self.gate = asyncio.Lock()
        self.waiting = 0
        self.call_buffer: dict[bytes, bytes | None] | None = None
        self.outbox: list[tuple[SessionChannel, str | bytes | CloseEvent]] = []
        self.sessions: dict[str, SessionChannel] = {}
        # Server ends accepted with `ctx.acceptWebSocket`, with their tags.
        self.websockets: dict[WebSocket, list[str]] = {}
        self.auto_response: WebSocketRequestResponsePair | None = None
        self.broken: str = ""
        self.request_ids: list[tuple[int, bytes]] = []
        # request id -> (result JSON, epoch, node) of the call's first and only run.
        self.recent_requests: OrderedDict[str, tuple[str, int, str]] = OrderedDict()
        self._durable = asyncio.Event()
        self.sql = SqlStorage(self.read_internal) if sqlite else None
        self.state = InstanceState(self)
        # None while hibernated or evicted: the next event constructs the class again and
        # runs its `setup` first (`_needs_setup`), as Cloudflare runs the constructor.
        self._obj: DurableObject | None = self._construct()
        self._needs_setup = False
        self.last_event_at = time.monotonic()
        self.hibernations = 0
        self.idle_evictions = 0
        self.alarm_task: asyncio.Task[None] | None = None
        self.created_at = time.monotonic()
        # Calls run here since activation (Status reports it; the console makes a rate).
        self.calls = 0

    # -- the object, and hibernation ---------------------------------------------------------

    def _construct(self) -> DurableObject:
        # A Cloudflare-style class takes its `ctx` (workers.DurableObject.context_for).
        context_for = getattr(self.cls, "context_for", None)
        context = context_for(self.state) if context_for is not None else self.state
        return self.cls(context, self.host.env_for(self.namespace))

    @property
    def obj(self) -> DurableObject:
        """The object; constructed again on first use after it hibernated or was evicted."""
        if self._obj is None:
            self._obj = self._construct()
            self._needs_setup = True
        return self._obj

    @obj.setter
    def obj(self, replacement: DurableObject) -> None:
        self._obj = replacement
        self._needs_setup = False

    @property
    def hibernated(self) -> bool:
        return self._obj is None

    def _busy_or_away(self) -> bool:
        """Out of memory already, or with an event or a commit under way."""
        return (
            self._obj is None
            or bool(self.broken)
            or self.gate.locked()
            or self.waiting > 0
            or bool(self.pending)
            or self.durable_seq < self.seq
        )

    def hibernate_if_idle(self, now: float, after_s: float) -> bool:
        """Leave memory (the object, not its sockets, storage or epoch) when Cloudflare
        would hibernate it; True when it did."""
        if not hibernation_due(
            idle_s=now - self.last_event_at,
            after_s=after_s,
            busy=self._busy_or_away(),
            hibernatable_sockets=len(self.websockets),
            sessions=len(self.sessions),
        ):
            return False
        self._obj = None
        self.hibernations += 1
        return True

    def evict_if_idle(self, now: float, after_s: float) -> bool:
        """Leave memory (the object; its storage, epoch, standby and alarm stay) when
        Cloudflare would evict it for being idle; True when it did."""
        if not eviction_due(
            idle_s=now - self.last_event_at,
            after_s=after_s,
            busy=self._busy_or_away(),
            sessions=len(self.sessions),
        ):
            return False
        self._obj = None
        self.idle_evictions += 1
        return True

    def _waking(self, handler: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
        """`handler`, after the object is constructed again and set up (in the same run
        of the gate: no other event sees it half awake)."""

        async def woken() -> Any:
            obj = self.obj
            if self._needs_setup:
                await obj.setup()
                self._needs_setup = False
            return await handler()

        return woken

    # -- storage view ----------------------------------------------------------------------

    def read(self, key: bytes) -> bytes | None:
        if self.call_buffer is not None and key in self.call_buffer:
            return self.call_buffer[key]
        pending = self.pending.get(key)
        if pending is not None:
            return pending[1]
        with self.host.storage.read() as txn:
            return self.host.store.get(txn, self.okey, key)

    def read_internal(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Internal keys under `prefix` (SQL rows), merging durable, pending and call writes."""
        overrides: dict[bytes, bytes | None] = {k: v for k, (_, v) in self.pending.items()}
        if self.call_buffer is not None:
            overrides.update(self.call_buffer)
        merged: dict[bytes, bytes | None] = {}
        with self.host.storage.read() as txn:
            end = prefix[:-1] + bytes([prefix[-1] + 1])
            merged.update(self.host.store.scan(txn, self.okey, start=prefix, end=end))
        for key, override in overrides.items():
            if key.startswith(prefix):
                merged[key] = override
        return sorted((k, v) for k, v in merged.items() if v is not None)

    def scan(
        self,
        *,
        prefix: bytes,
        start: bytes | None,
        end: bytes | None,
        reverse: bool,
        limit: int | None = None,
    ) -> list[tuple[bytes, bytes]]:
        """User keys (never internal ones) in range, merging durable, pending and call writes."""
        low = max(prefix, start) if start is not None else prefix
        # Internal keys start with NUL: every user key sorts at or after 0x01.
        low = max(low, b"\x01")
        overrides: dict[bytes, bytes | None] = {k: v for k, (_, v) in self.pending.items()}
        if self.call_buffer is not None:
            overrides.update(self.call_buffer)
        merged: dict[bytes, bytes | None] = {}
        with self.host.storage.read() as txn:
            for key, value in self.host.store.scan(txn, self.okey, start=low, end=end):
                if not key.startswith(prefix):
                    if key > prefix:
                        break
                    continue
                merged[key] = value
        for key, override in overrides.items():
            if key.startswith(INTERNAL_PREFIX) or not key.startswith(prefix) or key < low:
                continue
            if end is not None and key >= end:
                continue
            merged[key] = override
        live = sorted(((k, v) for k, v in merged.items() if v is not None), reverse=reverse)
        return live if limit is None else live[:limit]

    # -- calls -----------------------------------------------------------------------------

    def check_serving(self) -> None:
        if self.broken:
            raise InstanceBrokenError(f"object instance stopped: {self.broken}")
        if not self.host.lease_current(self.lease_generation):
            raise InstanceBrokenError("this node's lease on its objects lapsed")

    async def execute(
        self,
        handler: Callable[[], Awaitable[Any]],
        *,
        request_id: str = "",
    ) -> tuple[str, int, str]:
        """Run one event through the gates; returns (result JSON, epoch, node) once durable.

        A retried request id is answered as its first run was: that run's result, and the
        epoch and node it ran at (which may be an earlier owner's, before a failover).
        """
        if self.waiting >= QUEUE_DEPTH_MAX:
            raise OverloadedError(OVERLOADED_MESSAGE)
        self.waiting += 1
        self.host.metrics_queue_depth(+1)
        try:
            await self.gate.acquire()
        finally:
            self.waiting -= 1
            self.host.metrics_queue_depth(-1)
        self.last_event_at = time.monotonic()
        try:
            self.check_serving()
            if self._obj is None or self._needs_setup:
                handler = self._waking(handler)
            request_key = REQUEST_PREFIX + request_id.encode() if request_id else b""
            recent = self.recent_requests.get(request_id) if request_id else None
            cached = self.read(request_key) if request_key and recent is None else None
            node = self.host.node_name
            if recent is not None:
                result_json, epoch, node = recent
            elif cached is not None:
                # A retry of a call already run: the first answer, never a second run.
                answer = json.loads(cached)
                result_json, epoch = str(answer["result"]), int(answer["epoch"])
                node = str(answer.get("node", ""))
            else:
                result_json = await self._run(handler)
                epoch = self.epoch
                if request_id:
                    # Remembered here for retries to this instance; and durably (replicated
                    # with the call's writes) only when the call changed something, so a
                    # read costs no commit.
                    self.recent_requests[request_id] = (result_json, epoch, node)
                    if len(self.recent_requests) > REQUEST_IDS_MAX:
                        self.recent_requests.popitem(last=False)
                    if self.call_buffer or self.outbox:
                        self._remember_request(request_key, result_json)
            required = self._submit_call()
        except BaseException:
            self.call_buffer = None
            self.outbox = []
            raise
        finally:
            self.last_event_at = time.monotonic()
            self.gate.release()
        await self.wait_durable(required)
        return result_json, epoch, node

    async def exclusive(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body` between two calls, once every earlier commit is durable: no call
        runs meanwhile and nothing is pending, so durable storage is the whole object."""
        await self.gate.acquire()
        try:
            self.check_serving()
            await self.wait_durable(self.seq)
            await body()
        finally:
            self.gate.release()

    async def _run(self, handler: Callable[[], Awaitable[Any]]) -> str:
        self.call_buffer = {}
        self.outbox = []
        try:
            try:
                result = await handler()
            except EdgeError:
                raise
            except Exception as error:
                raise RemoteError(type(error).__name__, str(error)) from error
            try:
                result_json = json.dumps(result, separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as error:
                raise RemoteError("TypeError", f"result is not JSON data: {error}") from error
            if self.sql is not None:
                try:
                    # The call's SQL becomes its writes (one per changed row).
                    self.sql.end_call(self.call_buffer)
                except SqlStorageError as error:
                    raise RemoteError("Error", error.message) from error
        except BaseException:
            if self.sql is not None:
                self.sql.abort_call()
            raise
        return result_json

    def _remember_request(self, request_key: bytes, result_json: str) -> None:
        assert self.call_buffer is not None
        if len(result_json) > REMEMBERED_RESULT_BYTES_MAX:
            # Too large to keep for every call: a retry learns it ran but not its result.
            result_json = json.dumps({"error": "the call ran; its result was too large to keep"})
        self.call_buffer[request_key] = json.dumps(
            {
                "result": result_json,
                "epoch": self.epoch,
                "node": self.host.node_name,
                "seq": self.seq + 1,
            }
        ).encode()
        self.request_ids.append((self.seq + 1, request_key))
        while len(self.request_ids) > REQUEST_IDS_MAX:
            _, oldest = self.request_ids.pop(0)
            self.call_buffer[oldest] = None

    def _submit_call(self) -> int:
        """Turn the call's writes into a commit; queue its messages. Returns the seq to await."""
        writes = self.call_buffer or {}
        self.call_buffer = None
        if writes:
            self.seq += 1
            for key, value in writes.items():
                self.pending[key] = (self.seq, value)
            self.host.committer.submit(self, self.seq, list(writes.items()))
            if ALARM_KEY in writes:
                self.host.schedule_alarm(self, writes[ALARM_KEY])
        required = self.seq
        for session, data in self.outbox:
            session.enqueue(required, data)
        self.outbox = []
        return required

    async def wait_durable(self, seq: int) -> None:
        while self.durable_seq < seq:
            if self.broken:
                raise InstanceBrokenError(f"object instance stopped: {self.broken}")
            event = self._durable
            await event.wait()
        if self.broken and self.durable_seq < seq:
            raise InstanceBrokenError(f"object instance stopped: {self.broken}")

    def mark_durable(self, seq: int) -> None:
        if seq <= self.durable_seq:
            return
        self.durable_seq = seq
        for key in [k for k, (s, _) in self.pending.items() if s <= seq]:
            del self.pending[key]
        self._wake()

    def mark_broken(self, reason: str) -> None:
        if self.broken:
            return
        self.broken = reason
        self.pending.clear()
        if self.sql is not None:
            self.sql.forget()  # it may hold what never became durable
        for session in list(self.sessions.values()):
            session.close(reason)
        if self.alarm_task is not None:
            self.alarm_task.cancel()
        self._wake()

    def _wake(self) -> None:
        self._durable.set()
        self._durable = asyncio.Event()

    # -- sessions --------------------------------------------------------------------------

    def open_session(self) -> SessionChannel:
        session = SessionChannel(self)
        self.sessions[session.id] = session
        return session

    async def session_messages(self, session: SessionChannel) -> Any:
        """Messages for one session, each released once durable (an async iterator)."""
        while True:
            item = await session.queue.get()
            if item is None:
                return
            required, data = item
            await self.wait_durable(required)
            yield data

    def load_request_ids(self, keys: list[tuple[int, bytes]]) -> None:
        self.request_ids = sorted(keys)

    def alarm_handler(self) -> Callable[[], Awaitable[Any]]:
        return self.obj.alarm

    def pending_writes(self) -> Sequence[Write]:
        return [(key, value) for key, (_, value) in self.pending.items()]
