"""The Durable Object API that object classes are written against.

    class Counter(DurableObject):
        async def increment(self, by: int = 1) -> int:
            value = (await self.storage.get("value") or 0) + by
            await self.storage.put("value", value)
            return value

Every public coroutine method of a subclass is callable by name (`ObjectCall`). Calls
to one object run one at a time, in arrival order, across awaits (the input gate). All
storage writes of a call commit atomically and the reply — and any message the call
sends to sessions — leaves only once they are durable on the owner and its standby (the
output gate). An exception in a call discards its writes and reaches the caller as a
remote error; the object keeps working. Values are JSON-serialisable data.
"""

from __future__ import annotations

import abc
import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from edgepop.errors import InvalidArgumentError

T = TypeVar("T")

# Methods of the base class that are hooks, never callable by name.
HOOKS = frozenset(
    {
        "setup",
        "alarm",
        "on_connect",
        "on_message",
        "on_close",
        # Cloudflare's: `stub.fetch(request)` and the hibernatable WebSocket handlers.
        "fetch",
        "webSocketMessage",
        "webSocketClose",
        "webSocketError",
    }
)
STORAGE_KEYS_PER_CALL_MAX = 128


class Session(abc.ABC):
    """One connected client (an `ObjectConnect` stream)."""

    id: str

    @abc.abstractmethod
    def send(self, data: str) -> None:
        """Queue a message to this client (released after the current call is durable)."""

    @abc.abstractmethod
    def close(self, reason: str = "closed by the object") -> None:
        """End this session."""


class Storage(abc.ABC):
    """Transactional per-object storage (LMDB on the owner, copied to the standby)."""

    @abc.abstractmethod
    async def get(self, key: str | Sequence[str]) -> Any:
        """A value (None when missing), or a dict of the found keys for a list of keys."""

    @abc.abstractmethod
    async def put(self, key: str | dict[str, Any], value: Any = None) -> None:
        """Store one value, or every entry of a dict (up to 128)."""

    @abc.abstractmethod
    async def delete(self, key: str | Sequence[str]) -> bool | int:
        """Delete one key (True if it existed) or several (how many existed)."""

    @abc.abstractmethod
    async def list(
        self,
        *,
        prefix: str = "",
        start: str | None = None,
        end: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """Keys in [start, end) with `prefix`, in key order (or reversed), as a dict."""

    @abc.abstractmethod
    async def delete_all(self) -> None:
        """Delete every key of this object (and its alarm)."""

    @abc.abstractmethod
    async def transaction(self, body: Callable[[Storage], Awaitable[T]]) -> T:
        """Run `body`; if it raises, its writes are rolled back (and the error re-raised)."""

    @abc.abstractmethod
    async def get_alarm(self) -> float | None:
        """The scheduled alarm time (unix seconds), or None."""

    @abc.abstractmethod
    async def set_alarm(self, at: float) -> None:
        """Call `alarm()` at `at` (at least once; retried with backoff if it raises)."""

    @abc.abstractmethod
    async def delete_alarm(self) -> None:
        """Cancel the alarm."""

    @property
    def sql(self) -> Any:
        """The object's SQL database (`exec(query, *bindings)`, Cloudflare's cursor), for
        SQLite-backed classes; runtimes without it refuse."""
        raise RuntimeError("this runtime has no SQL storage")


class ObjectState(abc.ABC):
    """What the runtime gives an object: identity, storage, sessions."""

    id: str
    namespace: str
    storage: Storage

    @abc.abstractmethod
    async def block_concurrency_while(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run `body` with no other event delivered to the object meanwhile."""

    @abc.abstractmethod
    def sessions(self) -> list[Session]:
        """The sessions connected now."""

    # Cloudflare's hibernatable WebSockets; runtimes without them refuse.

    def accept_websocket(self, ws: Any, tags: Sequence[str] = ()) -> None:
        raise NotImplementedError("this runtime has no WebSockets")

    def websockets(self, tag: str | None = None) -> list[Any]:
        return []

    def websocket_tags(self, ws: Any) -> list[str]:
        return []

    def set_websocket_auto_response(self, pair: Any) -> None:
        raise NotImplementedError("this runtime has no WebSockets")

    def websocket_auto_response(self) -> Any:
        return None

    def broadcast(self, data: str, exclude: Session | None = None) -> None:
        """Send `data` to every session (but `exclude`), in one order for everyone."""
        for session in self.sessions():
            if session is not exclude:
                session.send(data)


class DurableObject:
    """Base class of every Durable Object class."""

    def __init__(self, state: ObjectState, env: Any) -> None:
        self.state = state
        self.storage = state.storage
        self.env = env

    async def setup(self) -> None:
        """Run once when the instance starts, before any call (restore state here)."""

    async def alarm(self) -> None:
        """Called when the alarm set with `storage.set_alarm` fires."""

    async def on_connect(self, session: Session) -> None:
        """A client connected (`ObjectConnect`)."""

    async def on_message(self, session: Session, data: str) -> None:
        """A connected client sent `data`."""

    async def on_close(self, session: Session) -> None:
        """A client disconnected."""


def callable_methods(cls: type[DurableObject]) -> frozenset[str]:
    """The method names a client may call on `cls`: public coroutines of the subclass."""
    cached = _CALLABLE_METHODS.get(cls)  # looked up on every object call
    if cached is not None:
        return cached
    names = set()
    for klass in cls.__mro__:
        if klass is DurableObject or klass is object or vars(klass).get("platform_base"):
            continue  # a platform base (Cloudflare's `workers.DurableObject`) adds no method
        for name, member in vars(klass).items():
            if name.startswith("_") or name in HOOKS:
                continue
            if inspect.iscoroutinefunction(member):
                names.add(name)
    _CALLABLE_METHODS[cls] = frozenset(names)
    return _CALLABLE_METHODS[cls]


_CALLABLE_METHODS: dict[type, frozenset[str]] = {}


@dataclass(frozen=True)
class _Parameters:
    """A method's signature, and how many positional arguments alone always bind to it
    (`positional_min` to `positional_max`; min > max when some keyword is required)."""

    signature: inspect.Signature
    positional_min: int
    positional_max: float

    @classmethod
    def of(cls, method: Callable[..., Any]) -> _Parameters:
        signature = inspect.signature(method)
        low, high = 0, 0.0
        for parameter in list(signature.parameters.values())[1:]:  # after `self`
            if parameter.kind is parameter.VAR_POSITIONAL:
                high = math.inf
            elif parameter.kind is parameter.KEYWORD_ONLY:
                if parameter.default is parameter.empty:
                    low, high = 1, 0.0  # never alone: a keyword is required
                    break
            elif parameter.kind is not parameter.VAR_KEYWORD:
                high += 1
                if parameter.default is parameter.empty:
                    low += 1
        return cls(signature, low, high)


_PARAMETERS: dict[tuple[type[DurableObject], str], _Parameters] = {}


def check_call_arguments(
    cls: type[DurableObject], method: str, args: list[Any], kwargs: dict[str, Any]
) -> None:
    """INVALID_ARGUMENT when `args`/`kwargs` do not fit `cls.method` (binding arguments is
    the platform's job, not a failure of the object's code)."""
    key = (cls, method)
    parameters = _PARAMETERS.get(key)
    if parameters is None:
        parameters = _PARAMETERS[key] = _Parameters.of(getattr(cls, method))
    if not kwargs and parameters.positional_min <= len(args) <= parameters.positional_max:
        return  # the usual call, checked without binding (~5 us of Signature.bind)
    try:
        parameters.signature.bind(None, *args, **kwargs)  # None stands for `self`
    except TypeError as error:
        raise InvalidArgumentError(f"{cls.__name__}.{method}: {error}") from error
