"""Cloudflare's entry point classes over edgepop's runtime.

`WorkerEntrypoint` is built per request with `(ctx, env)`, as Cloudflare does. A
`DurableObject` is edgepop's (`edgepop.durable`): the host builds it with the object's
state, and it sees that state as Cloudflare's `ctx`: `ctx.storage` with Cloudflare's
method names and units (alarms in milliseconds), `ctx.id` as an id object.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from edgepop import durable
from edgepop.objectid import DurableObjectId
from edgepop.worker_api import ExecutionContext

T = TypeVar("T")


class WorkerEntrypoint:
    """Base of a worker's `Default` class: `fetch(self, request)`, `self.env`, `self.ctx`."""

    def __init__(self, ctx: ExecutionContext, env: Any) -> None:
        self.ctx = ctx
        self.env = env


class WorkflowEntrypoint(WorkerEntrypoint):
    """Cloudflare Workflows are not emulated: a class may be defined, not run."""


def handler(func: Callable[..., T]) -> Callable[..., T]:
    """Cloudflare's decorator for module-level `on_fetch`; the loader needs no wrapping."""
    return func


class _Rollback(Exception):
    """Raised inside `transaction` after `txn.rollback()`: discards the closure's writes."""


class DurableObjectStorage:
    """`ctx.storage`: edgepop's object storage under Cloudflare's names."""

    def __init__(self, storage: durable.Storage) -> None:
        self._storage = storage
        self._rolled_back = False

    async def get(self, key: str | Sequence[str], options: Any = None) -> Any:
        return await self._storage.get(key)

    async def put(self, key: str | dict[str, Any], value: Any = None, options: Any = None) -> None:
        if isinstance(key, dict):
            await self._storage.put(key)
        else:
            await self._storage.put(key, value)

    async def delete(self, key: str | Sequence[str], options: Any = None) -> bool | int:
        return await self._storage.delete(key)

    async def list(self, options: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Keys in order; options `prefix`, `start`, `startAfter`, `end`, `reverse`, `limit`."""
        return _listed(await self._storage.list(**_list_range(options, kwargs)), options, kwargs)

    async def deleteAll(self, options: Any = None) -> None:
        await self._storage.delete_all()

    delete_all = deleteAll

    async def getAlarm(self, options: Any = None) -> int | None:
        """The alarm time in milliseconds since the epoch (Cloudflare's unit), or None."""
        at = await self._storage.get_alarm()
        return None if at is None else round(at * 1000)

    async def setAlarm(
        self, scheduled_time: float | datetime.datetime, options: Any = None
    ) -> None:
        if isinstance(scheduled_time, datetime.datetime):
            at_s = scheduled_time.timestamp()
        else:
            at_s = float(scheduled_time) / 1000.0
        await self._storage.set_alarm(at_s)

    async def deleteAlarm(self, options: Any = None) -> None:
        await self._storage.delete_alarm()

    async def transaction(self, closure: Callable[[Any], Awaitable[T]]) -> T | None:
        """Run `closure(txn)`; a raise or `txn.rollback()` discards its writes."""
        outer = self

        async def body(storage: durable.Storage) -> T:
            txn = DurableObjectStorage(storage)
            result = await closure(txn)
            if txn._rolled_back:
                raise _Rollback()
            return result

        try:
            return await outer._storage.transaction(body)
        except _Rollback:
            return None

    def rollback(self) -> None:
        """In a `transaction` closure: discard its writes when it returns."""
        self._rolled_back = True

    async def sync(self) -> None:
        """Writes are durable when the call's reply leaves (the output gate): nothing to wait."""

    @property
    def sql(self) -> Any:
        """The SQL database of a SQLite-backed class (`new_sqlite_classes`)."""
        return self._storage.sql

    @property
    def kv(self) -> SyncKvStorage:
        """The synchronous key-value API of SQLite-backed objects (`ctx.storage.kv`)."""
        return SyncKvStorage(self._storage)

    def transactionSync(self, closure: Callable[[], T]) -> T:
        """Run `closure()` atomically: if it raises, none of its writes stay."""
        result: T = self._storage.transactionSync(closure)  # type: ignore[attr-defined]
        return result


class SyncKvStorage:
    """`ctx.storage.kv`: get, put, delete and list without awaiting (same keys as the
    asynchronous API)."""

    def __init__(self, storage: durable.Storage) -> None:
        self._storage: Any = storage

    def get(self, key: str) -> Any:
        return self._storage.get_now(key)

    def put(self, key: str, value: Any) -> None:
        self._storage.put_now(key, value)

    def delete(self, key: str) -> bool:
        return bool(self._storage.delete_now(key))

    def list(self, options: dict[str, Any] | None = None, **kwargs: Any) -> list[list[Any]]:
        """[key, value] pairs in key order; options as the asynchronous `list`."""
        found = _listed(self._storage.list_now(**_list_range(options, kwargs)), options, kwargs)
        return [[key, value] for key, value in found.items()]


def _list_options(options: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    given = {**(options or {}), **kwargs}
    unknown = set(given) - {"prefix", "start", "startAfter", "end", "reverse", "limit"}
    if unknown:
        raise TypeError(f"storage.list: unknown option(s) {sorted(unknown)}")
    return given


def _list_range(options: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Cloudflare's list options as edgepop's storage takes them (startAfter: one more key,
    dropped by `_listed`)."""
    given = _list_options(options, kwargs)
    start_after = given.get("startAfter")
    limit = given.get("limit")
    return {
        "prefix": given.get("prefix", ""),
        "start": start_after if start_after is not None else given.get("start"),
        "end": given.get("end"),
        "reverse": bool(given.get("reverse", False)),
        "limit": None if limit is None else limit + (1 if start_after is not None else 0),
    }


def _listed(
    found: dict[str, Any], options: dict[str, Any] | None, kwargs: dict[str, Any]
) -> dict[str, Any]:
    given = _list_options(options, kwargs)
    start_after = given.get("startAfter")
    limit = given.get("limit")
    if start_after is not None:
        found.pop(start_after, None)
        if limit is not None:
            found = dict(list(found.items())[:limit])
    return found


class DurableObjectContext:
    """`self.ctx` of a Durable Object: its storage, id and concurrency controls."""

    def __init__(self, state: durable.ObjectState) -> None:
        self._state = state
        self.storage = DurableObjectStorage(state.storage)
        self.id = DurableObjectId(state.id)
        self._background: set[asyncio.Task[Any]] = set()

    async def blockConcurrencyWhile(self, body: Callable[[], Awaitable[T]]) -> T:
        return await self._state.block_concurrency_while(body)

    def waitUntil(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Hibernatable WebSockets: the runtime holds accepted sockets and calls the object's
    # `webSocketMessage(ws, message)` / `webSocketClose(ws, code, reason, wasClean)`.

    def acceptWebSocket(self, ws: Any, tags: Sequence[str] | None = None) -> None:
        self._state.accept_websocket(ws, tags or ())

    def getWebSockets(self, tag: str | None = None) -> list[Any]:
        return self._state.websockets(tag)

    def getTags(self, ws: Any) -> list[str]:
        return self._state.websocket_tags(ws)

    def setWebSocketAutoResponse(self, pair: Any = None) -> None:
        self._state.set_websocket_auto_response(pair)

    def getWebSocketAutoResponse(self) -> Any:
        return self._state.websocket_auto_response()

    def getWebSocketAutoResponseTimestamp(self, ws: Any) -> datetime.datetime | None:
        at_ms = getattr(ws, "auto_response_at_ms", None)
        if at_ms is None:
            return None
        return datetime.datetime.fromtimestamp(at_ms / 1000, tz=datetime.UTC)

    def setHibernatableWebSocketEventTimeout(self, timeout_ms: int | None = None) -> None:
        """Accepted for compatibility: handlers here run under the call deadline."""

    def getHibernatableWebSocketEventTimeout(self) -> int | None:
        return None

    def abort(self, reason: str | None = None) -> None:
        raise RuntimeError(reason or "Durable Object abort requested")


class DurableObject(durable.DurableObject):
    """Base of a Cloudflare-style Durable Object class: `self.ctx`, `self.env`."""

    # Not a user class: none of its methods is callable by RPC (edgepop.durable).
    platform_base = True

    def __init__(self, ctx: Any, env: Any) -> None:
        state = ctx._state if isinstance(ctx, DurableObjectContext) else ctx
        super().__init__(state, env)
        self.ctx = ctx if isinstance(ctx, DurableObjectContext) else DurableObjectContext(ctx)

    @classmethod
    def context_for(cls, state: durable.ObjectState) -> DurableObjectContext:
        """What the runtime passes as `ctx` to the class: the same object as `self.ctx`
        (a constructor that uses `ctx.storage` sees Cloudflare's API)."""
        return DurableObjectContext(state)
