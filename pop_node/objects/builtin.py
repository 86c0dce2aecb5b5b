"""The Durable Object classes every cluster has (the seed's use cases).

- Counter: exact counts (`increment(by)`, `get`).
- RateLimiter: the seed's sliding window, 100 requests per 60 s per key.
- DocumentSession: the seed's collaborative document: ops appended, persisted, broadcast
  to every session in one order; a reconnecting client gets what it missed.
- Lock: a distributed lock with a fencing token that only grows.
"""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from typing import Any

from edgepop.durable import DurableObject, ObjectState, Session
from edgepop.errors import InvalidArgumentError

RATE_LIMIT_DEFAULT = 100
RATE_WINDOW_S_DEFAULT = 60.0
RATE_WINDOW_S_MAX = 86_400.0
DOCUMENT_REPLAY_PAGE = 1000
LOCK_TTL_S_MAX = 3600.0


class Counter(DurableObject):
    async def increment(self, by: int = 1) -> int:
        value = int(await self.storage.get("value") or 0) + int(by)
        await self.storage.put("value", value)
        return value

    async def get(self) -> int:
        return int(await self.storage.get("value") or 0)


class SqlCounter(DurableObject):
    """The Counter on the object's SQL storage: a SQLite-backed class (as wrangler's
    `new_sqlite_classes` declares one), whose rows reach disk and the standby with the
    call, as the key-value storage's writes do."""

    _TABLE = (
        "CREATE TABLE IF NOT EXISTS counter "
        "(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL)"
    )

    async def increment(self, by: int = 1) -> int:
        sql = self.storage.sql
        sql.exec(self._TABLE)
        row = sql.exec(
            "INSERT INTO counter (id, value) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET value = value + excluded.value RETURNING value",
            int(by),
        ).one()
        return int(row["value"])

    async def get(self) -> int:
        sql = self.storage.sql
        sql.exec(self._TABLE)  # nothing changes once the table exists
        rows = sql.exec("SELECT value FROM counter WHERE id = 1").toArray()
        return int(rows[0]["value"]) if rows else 0


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RateLimiter(DurableObject):
    """Sliding window: at most `limit` allowed checks per `window_s` for each key."""

    async def check(
        self,
        key: str = "",
        limit: int = RATE_LIMIT_DEFAULT,
        window_s: float = RATE_WINDOW_S_DEFAULT,
    ) -> dict[str, Any]:
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise InvalidArgumentError(f"limit must be a whole number >= 1 (got {limit!r})")
        if not isinstance(window_s, int | float) or not 0 < window_s <= RATE_WINDOW_S_MAX:
            raise InvalidArgumentError(
                f"window_s must be within 0..{RATE_WINDOW_S_MAX:g} s (got {window_s!r})"
            )
        now = time.time()
        storage_key = f"timestamps:{key}"
        timestamps = [t for t in await self.storage.get(storage_key) or [] if t > now - window_s]
        if len(timestamps) >= limit:
            reset_at = timestamps[0] + window_s
            await self.storage.put(storage_key, timestamps)
            return {
                "allowed": False,
                "limit": limit,
                "remaining": 0,
                "retry_after_s": max(1, math.ceil(reset_at - now)),
                "reset_at": reset_at,
                "reset_at_iso": _iso(reset_at),
            }
        timestamps.append(now)
        await self.storage.put(storage_key, timestamps)
        reset_at = timestamps[0] + window_s
        return {
            "allowed": True,
            "limit": limit,
            "remaining": limit - len(timestamps),
            "retry_after_s": 0,
            "reset_at": reset_at,
            "reset_at_iso": _iso(reset_at),
        }


class DocumentSession(DurableObject):
    """Ops get consecutive seqs; every joined session sees every op, in seq order.

    Session protocol (JSON text): a client joins with {"type": "hello", "last_seen": N}
    (0 for a new client) and first receives every op after N, then every new op, in seq
    order without gaps or duplicates: the replay and the join happen in one call, so no
    op can slip in between. {"type": "op", "op": ...} appends one (and joins without a
    replay, if the session had not said hello). The object sends {"type": "op", "seq":
    N, "op": ...} to every joined session — the sender included: its own op coming back
    with a seq is the acknowledgement — once the op is durable.
    """

    def __init__(self, state: ObjectState, env: Any) -> None:
        super().__init__(state, env)
        self._joined: set[str] = set()

    async def _append(self, op: Any) -> int:
        seq = int(await self.storage.get("head") or 0) + 1
        await self.storage.put({"head": seq, f"op:{seq:012d}": op})
        message = json.dumps({"type": "op", "seq": seq, "op": op})
        for session in self.state.sessions():
            if session.id in self._joined:
                session.send(message)
        return seq

    async def apply(self, op: Any) -> int:
        """Append an op (from a plain call); returns its seq."""
        return await self._append(op)

    async def ops(self, since: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        found = await self.storage.list(prefix="op:", start=f"op:{since + 1:012d}", limit=limit)
        return [{"seq": int(key[3:]), "op": op} for key, op in found.items()]

    async def head(self) -> int:
        return int(await self.storage.get("head") or 0)

    async def on_message(self, session: Session, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            session.send(json.dumps({"type": "error", "error": "messages are JSON objects"}))
            return
        kind = message.get("type")
        if kind == "hello":
            since = int(message.get("last_seen", 0))
            while True:  # every op after `since`, in pages
                page = await self.ops(since, DOCUMENT_REPLAY_PAGE)
                for item in page:
                    session.send(json.dumps({"type": "op", **item}))
                if len(page) < DOCUMENT_REPLAY_PAGE:
                    break
                since = page[-1]["seq"]
            self._joined.add(session.id)
        elif kind == "op":
            self._joined.add(session.id)
            await self._append(message.get("op"))
        else:
            session.send(json.dumps({"type": "error", "error": f"unknown message type {kind!r}"}))

    async def on_close(self, session: Session) -> None:
        self._joined.discard(session.id)


class Lock(DurableObject):
    """A lease-style lock; every grant gets a fencing token larger than all before it."""

    async def acquire(self, holder: str, ttl_s: float = 30.0) -> dict[str, Any]:
        if not holder:
            raise ValueError("holder must be a non-empty string")
        ttl_s = min(max(float(ttl_s), 0.001), LOCK_TTL_S_MAX)
        now = time.time()
        current = await self.storage.get("lock")
        if current and current["expires_at"] > now and current["holder"] != holder:
            return {
                "granted": False,
                "holder": current["holder"],
                "retry_after_s": current["expires_at"] - now,
            }
        token = int(await self.storage.get("fence") or 0) + 1
        lock = {"holder": holder, "token": token, "expires_at": now + ttl_s}
        await self.storage.put({"fence": token, "lock": lock})
        return {"granted": True, "token": token, "expires_at": lock["expires_at"]}

    async def release(self, holder: str, token: int) -> dict[str, Any]:
        current = await self.storage.get("lock")
        if not current or current["holder"] != holder or current["token"] != int(token):
            return {"released": False}
        await self.storage.delete("lock")
        return {"released": True}

    async def status(self) -> dict[str, Any]:
        current = await self.storage.get("lock")
        fence = int(await self.storage.get("fence") or 0)
        if current and current["expires_at"] > time.time():
            return {"held": True, **current, "fence": fence}
        return {"held": False, "fence": fence}


BUILTIN_CLASSES: dict[str, type[DurableObject]] = {
    "Counter": Counter,
    "SqlCounter": SqlCounter,
    "RateLimiter": RateLimiter,
    "DocumentSession": DocumentSession,
    "Lock": Lock,
}
# The built-in classes that are SQLite-backed (`ctx.storage.sql`).
BUILTIN_SQLITE_CLASSES = frozenset({"SqlCounter"})
