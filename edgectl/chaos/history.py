"""What the clients of a fault run saw, and what the nemesis did: the checkers' input.

One `Op` per operation a client attempted (as porcupine records them: invoke and return
in one record). A client runs one operation at a time, so ops of one `process` never
overlap. Times are seconds since the run started, from one monotonic clock.

Status, as Jepsen names them:
- "ok": the operation happened, and `output` is what it returned.
- "fail": it certainly did not happen (refused before it could run: INVALID_ARGUMENT,
  a NOT_FOUND, a request that never left the client).
- "info": indeterminate: it may or may not have happened (a timeout, UNAVAILABLE after
  the request was sent, a connection lost mid-call). Its `complete_s` is when the client
  gave up; a checker treats it as possibly taking effect at any time after `invoke_s`.

`key` partitions the history (linearizability is checked per key, P-compositionality):
"do:<Namespace>/<name>" for a Durable Object, "kv:<namespace>/<key>" for a KV key,
"sql:<database>/<table>" for the SQL table the clients share.

A history is stored as JSON lines: one op per line, then the faults (one per line with
"fault": true), so a run can be checked again and its report rebuilt later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["ok", "fail", "info"]
STATUSES: tuple[Status, ...] = ("ok", "fail", "info")
_HEX_DIGITS = frozenset("0123456789abcdef")


def object_ref(namespace: str, name: str) -> str:
    """How a fault run names a Durable Object (its history key after "do:")."""
    return f"{namespace}/{name}"


def split_object_ref(ref: str) -> tuple[str, str]:
    """(namespace, name) of an `object_ref`."""
    namespace, slash, name = ref.partition("/")
    if not slash or not namespace or not name:
        raise ValueError(f"{ref!r} is not NAMESPACE/NAME")
    return namespace, name


def bookmark_seq(bookmark: Any) -> int | None:
    """The log seq a SQL bookmark names (16 hex digits, as edgepop.sqldb formats it);
    None for a malformed one, or none."""
    if not isinstance(bookmark, str) or len(bookmark) != 16:
        return None
    if any(digit not in _HEX_DIGITS for digit in bookmark):
        return None
    return int(bookmark, 16)


@dataclass
class Op:
    """One operation: what was asked, when, and what came back.

    `f` names the operation within its key's model:
    - Durable Object Counter: "increment" (output: the new value), "get" (output: value).
    - KV: "put" (input: the value written; meta["seq"]: the origin's seq), "delete"
      (meta["seq"]), "get" (output: the value or None; meta["consistency"]: "strong",
      "bookmark" or "eventual"; meta["min_seq"] for bookmark reads; meta["applied_seq"]).
    - SQL: "insert" (input: the row's tag; meta["bookmark"]: the one its answer carried,
      the write's seq), "read" (output: every tag, in row order; meta["min_bookmark"]:
      the session's bookmark it was sent with, "" for none; meta["bookmark"]: the one it
      returned; meta["primary"]: whether the primary served it).
    `meta` also carries what the reply said about where it ran: "node", "epoch" (Durable
    Objects), "code" (the gRPC status name of a failure), "request_id", "attempts".
    """

    id: int
    process: str
    key: str
    f: str
    invoke_s: float
    input: Any = None
    status: Status | None = None  # None while the call is in flight
    output: Any = None
    complete_s: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def indeterminate(self) -> bool:
        """May or may not have happened (an "info", or never completed at all)."""
        return self.status in ("info", None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Op:
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


@dataclass
class FaultEvent:
    """One fault the nemesis applied: `kind` (e.g. "kill-owner", "partition", "isolate",
    "delay", "kill-origin"), its targets, when it started and when it was healed (None:
    a fault with no duration, such as a kill whose restart is its own event)."""

    kind: str
    targets: list[str]
    start_s: float
    end_s: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fault": True, **asdict(self)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> FaultEvent:
        return cls(**{name: raw[name] for name in cls.__dataclass_fields__ if name in raw})


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    faults: list[FaultEvent] = field(default_factory=list)

    def by_key(self) -> dict[str, list[Op]]:
        grouped: dict[str, list[Op]] = {}
        for op in self.ops:
            grouped.setdefault(op.key, []).append(op)
        return grouped

    def counts(self) -> dict[str, int]:
        """Ops per status ("ok", "fail", "info"; never-completed ops count as "info")."""
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for op in self.ops:
            counts[op.status or "info"] += 1
        return counts

    def dump(self, path: Path) -> None:
        with path.open("w") as out:
            for line in _lines(self.ops, self.faults):
                out.write(line + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        with path.open() as lines:
            for line in lines:
                if not line.strip():
                    continue
                raw = json.loads(line)
                if raw.pop("fault", False):
                    history.faults.append(FaultEvent.from_json(raw))
                else:
                    history.ops.append(Op.from_json(raw))
        return history


def _lines(ops: Iterable[Op], faults: Iterable[FaultEvent]) -> Iterator[str]:
    for op in ops:
        yield json.dumps(op.to_json(), separators=(",", ":"), default=str)
    for fault in faults:
        yield json.dumps(fault.to_json(), separators=(",", ":"), default=str)
