"""`edgectl do`: Durable Objects from the command line (the commands are
`edgectl.commands.do`; this is what they call).

Pure parts: how the JSON argument of `do call` becomes `args_json`, which object a
command names (`NAME` or `--id HEX`), the short id shown in tables, and the JSON form of
a session message. `run_session` is the only I/O: one `ObjectConnect` stream fed from
`--send` texts or stdin lines, each server message handed to a callback as it arrives.

A session ends in one of three ways: the client's input ends (stdin at EOF, or every
`--send` text sent) and the object closes the session after the last reply; `--count N`
data messages arrived; or the object closes it (it moved: reconnect). A session waiting
for `--count` has a deadline (`--timeout`), an interactive one has none.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import grpc

from edge.v1 import objects_pb2
from edgectl.client import CliError, EdgeClient, Target

# Enough to tell objects apart in a table (48 bits); --json prints the whole id.
SHORT_ID_CHARS = 12


def short_id(object_id: str) -> str:
    return object_id[:SHORT_ID_CHARS]


def args_json(text: str | None) -> str:
    """`args_json` of a call: an array (positional) or object (keyword) as given.

    A bare JSON value is one positional argument (`increment 5` = `increment [5]`), so
    the wire carries the documented array/object forms only. No text: no arguments.
    """
    if text is None:
        return ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(
            "INVALID_ARGUMENT",
            f"arguments must be JSON (an array for positional, an object for keyword "
            f"arguments): {error}: {text!r}",
        ) from None
    if isinstance(value, list | dict):
        return text
    return json.dumps([value])


@dataclass(frozen=True)
class ObjectRef:
    """The object a command names: by `name` (id derived from it) or by `id` (64 hex)."""

    namespace: str
    name: str = ""
    id: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return f"{self.namespace}/{self.name}"
        return f"{self.namespace}#{short_id(self.id)}"


@dataclass(frozen=True)
class CallWords:
    """`do call CLASS NAME METHOD [JSON]` (or `CLASS --id HEX METHOD [JSON]`) parsed."""

    ref: ObjectRef
    method: str
    args_json: str


def parse_call(namespace: str, words: Sequence[str], object_id: str | None) -> CallWords:
    """Split the positional words after CLASS into the object, method and arguments."""
    if object_id is not None:
        if not 1 <= len(words) <= 2:
            raise CliError("INVALID_ARGUMENT", "with --id give METHOD [JSON] (no NAME)")
        ref = ObjectRef(namespace, id=object_id)
        method, *rest = words
    else:
        if not 2 <= len(words) <= 3:
            raise CliError(
                "INVALID_ARGUMENT", "give NAME METHOD [JSON] (or --id HEX METHOD [JSON])"
            )
        name, method, *rest = words
        ref = ObjectRef(namespace, name=name)
    return CallWords(ref, method, args_json(rest[0] if rest else None))


def object_ref(namespace: str, name: str | None, object_id: str | None) -> ObjectRef:
    """The object of `do connect`: NAME or --id HEX, exactly one."""
    if (name is None) == (object_id is None):
        raise CliError("INVALID_ARGUMENT", "give the object's NAME or --id HEX (one of them)")
    return ObjectRef(namespace, name=name or "", id=object_id or "")


def placement_json(placement: objects_pb2.Placement) -> dict[str, Any]:
    return {
        "namespace": placement.namespace,
        "id": placement.id,
        "owner": placement.owner,
        "standby": placement.standby,
        "epoch": placement.epoch,
    }


def message_json(message: objects_pb2.ObjectServerMessage) -> dict[str, Any]:
    """One server message of a session as a JSON object with a `type`."""
    kind = message.WhichOneof("kind")
    if kind == "opened":
        opened = message.opened
        return {
            "type": "opened",
            "node": opened.node,
            "epoch": opened.epoch,
            "id": opened.id,
            "session_id": opened.session_id,
        }
    if kind == "data":
        return {"type": "data", "data": message.data}
    if kind == "closed":
        return {"type": "closed", "reason": message.closed.reason}
    return {"type": "unknown"}


# -- sessions (I/O) --------------------------------------------------------------------


class Outbox:
    """The client side of a session stream: gRPC's thread takes messages as they come.

    Iterating blocks until the next message; `close()` ends the stream (the client's
    half-close), after which the object answers what it still owes and closes.
    """

    def __init__(self, first: objects_pb2.ObjectClientMessage) -> None:
        self._queue: queue.Queue[objects_pb2.ObjectClientMessage | None] = queue.Queue()
        self._queue.put(first)

    def send(self, text: str) -> None:
        self._queue.put(objects_pb2.ObjectClientMessage(data=text))

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self) -> Iterator[objects_pb2.ObjectClientMessage]:
        while True:
            message = self._queue.get()
            if message is None:
                return
            yield message


def _pump_lines(lines: IO[str], outbox: Outbox, close_at_eof: bool) -> None:
    """Send each input line as one data message (blank lines are skipped)."""
    for line in lines:
        text = line.rstrip("\r\n")
        if text:
            outbox.send(text)
    if close_at_eof:
        outbox.close()


@dataclass
class SessionResult:
    """How a session went: data messages received, how it ended, time to `opened`."""

    received: int = 0
    closed_reason: str | None = None
    open_ms: float | None = None


def run_session(
    client: EdgeClient,
    target: Target,
    ref: ObjectRef,
    *,
    location_hint: str = "",
    sends: Sequence[str] = (),
    count: int | None = None,
    timeout_s: float | None = None,
    on_message: Callable[[objects_pb2.ObjectServerMessage, SessionResult], None],
    stdin: IO[str] | None = None,
) -> SessionResult:
    """One ObjectConnect session; returns when it ends (see the module docstring).

    Input is `sends` when given, else `stdin` lines. Without `count` the end of input
    ends the session; with `count` the session stays open for replies and broadcasts
    until that many data messages arrived (or `timeout_s` passed: DEADLINE_EXCEEDED).
    """
    opening = objects_pb2.ObjectOpen(
        namespace=ref.namespace, name=ref.name, id=ref.id, location_hint=location_hint
    )
    outbox = Outbox(objects_pb2.ObjectClientMessage(open=opening))
    if sends:
        for text in sends:
            outbox.send(text)
        if count is None:
            outbox.close()
    else:
        reader = threading.Thread(
            target=_pump_lines,
            args=(stdin if stdin is not None else sys.stdin, outbox, count is None),
            name="edgectl-stdin",
            daemon=True,  # a blocked read of a terminal must not keep the process alive
        )
        reader.start()
    result = SessionResult()
    started = time.perf_counter()
    call = client.object_connect(target, iter(outbox), timeout_s if count is not None else None)
    try:
        for message in call:
            kind = message.WhichOneof("kind")
            if kind == "opened":
                result.open_ms = (time.perf_counter() - started) * 1000.0
            elif kind == "data":
                result.received += 1
            elif kind == "closed":
                result.closed_reason = message.closed.reason
            on_message(message, result)
            if count is not None and result.received >= count:
                break
    except grpc.RpcError as error:
        failure = CliError.from_rpc(error, target.name)
        if failure.code == "DEADLINE_EXCEEDED" and count is not None:
            raise CliError(
                "DEADLINE_EXCEEDED",
                f"{result.received} of {count} messages from {ref.label} in {timeout_s:g} s",
            ) from None
        raise failure from None
    finally:
        outbox.close()
        call.cancel()
    if count is not None and result.received < count:
        reason = result.closed_reason or "the stream ended"
        raise CliError(
            "UNAVAILABLE",
            f"session with {ref.label} closed after {result.received} of {count} "
            f"messages: {reason}",
        )
    return result
