"""The API edge functions (workers) are written against.

    from edgepop.worker_api import Request, Response, fetch

    async def fetch_handler(request: Request, env, ctx) -> Response: ...

A worker module defines `async def fetch(request, env, ctx)` (or, written for Cloudflare,
a `Default(workers.WorkerEntrypoint)` class: see `sdk/workers`). `env` carries its bindings
(KV namespaces, Durable Object namespaces, vars, secrets, analytics datasets); `ctx`
offers `wait_until` (`waitUntil`). Request and Response take Cloudflare's arguments too
(`Response(body, status, status_text, headers)`, `Response.redirect`, `request.bytes()`).
Module-level `fetch(...)` here makes a subrequest (to the origin,
through this PoP's HTTP cache); `caches.default` is that cache. Both act for the request
being handled (a context variable), so limits apply per request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

HeadersInit = Mapping[str, str] | Iterable[tuple[str, str]] | CIMultiDict[str] | None


def _headers(init: HeadersInit, *, take: bool = False) -> CIMultiDict[str]:
    """Headers as a CIMultiDict; with `take`, a CIMultiDict given is used, not copied."""
    if take and isinstance(init, CIMultiDict):
        return init
    headers: CIMultiDict[str] = CIMultiDict()
    if init is None:
        return headers
    items = init.items() if isinstance(init, Mapping | CIMultiDict | CIMultiDictProxy) else init
    for key, value in items:
        headers.add(key, str(value))
    return headers


class Request:
    """An incoming HTTP request (or one a worker builds for `fetch`)."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "GET",
        headers: HeadersInit = None,
        body: bytes | str | None = None,
        cf: Mapping[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.method = method.upper()
        self.headers = _headers(headers, take=True)
        self.body = body.encode() if isinstance(body, str) else (body or b"")
        self.cf: dict[str, Any] = dict(cf or {})

    @property
    def path(self) -> str:
        return urlsplit(self.url).path or "/"

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query))

    @property
    def host(self) -> str:
        return (urlsplit(self.url).hostname or "").lower()

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies as a browser sends them (RFC 6265 §5.4): one odd cookie spoils no other."""
        found: dict[str, str] = {}
        for header in self.headers.getall("Cookie", []):
            for pair in header.split(";"):
                name, separator, value = pair.partition("=")
                name = name.strip()
                if not separator or not name:
                    continue
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                found.setdefault(name, value)
        return found

    async def text(self) -> str:
        return self.body.decode()

    async def json(self) -> Any:
        return json.loads(self.body or b"null")

    async def bytes(self) -> bytes:
        return self.body

    def clone(self) -> Request:
        return self.with_url(self.url)

    @property
    def js_object(self) -> Request:
        """Cloudflare's ASGI adapter reads the JS request here; ours is the request itself."""
        return self

    def with_url(self, url: str) -> Request:
        """The same request for another URL (a rewrite)."""
        return Request(
            url, method=self.method, headers=self.headers.copy(), body=self.body, cf=self.cf
        )


class _ClassOrInstance:
    """One name, two methods: `on_class` when looked up on the class, else `on_instance`."""

    def __init__(self, on_class: str, on_instance: str) -> None:
        self.on_class = on_class
        self.on_instance = on_instance

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return getattr(owner, self.on_class)
        return getattr(instance, self.on_instance)


class Response:
    """An HTTP response; `body` may be bytes, text, or an async iterator of bytes (streaming)."""

    def __init__(
        self,
        body: bytes | str | AsyncIterator[bytes] | None = None,
        status: int | None = 200,
        status_text: str = "",
        headers: HeadersInit = None,
        web_socket: Any = None,
    ) -> None:
        # Cloudflare's order (body, status, status_text, headers); status None means 200.
        self.status = int(status) if status is not None else 200
        self.status_text = status_text
        self.web_socket = web_socket
        self.headers = _headers(headers)
        self._stream: AsyncIterator[bytes] | None = None
        if body is None:
            self.body = b""
        elif isinstance(body, bytes | str):
            self.body = body.encode() if isinstance(body, str) else body
            if isinstance(body, str) and "Content-Type" not in self.headers:
                self.headers["Content-Type"] = "text/plain; charset=utf-8"
        else:
            self.body = b""
            self._stream = body

    @classmethod
    def from_json(cls, data: Any, *, status: int = 200, headers: HeadersInit = None) -> Response:
        response = cls(json.dumps(data), status=status, headers=headers)
        response.headers["Content-Type"] = "application/json"
        return response

    # `Response.json(data)` makes a JSON response; `await response.json()` parses one (a
    # fetch's answer), as Cloudflare's SDK has both under one name.
    json = _ClassOrInstance("from_json", "json_body")

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"redirect status must be 301, 302, 303, 307 or 308, not {status}")
        return cls(None, status=status, headers={"Location": url})

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def streaming(self) -> bool:
        return self._stream is not None

    def chunks(self) -> AsyncIterator[bytes]:
        if self._stream is None:
            raise RuntimeError("not a streaming response")
        return self._stream

    async def read(self) -> bytes:
        if self._stream is not None:
            parts = [chunk async for chunk in self._stream]
            self.body, self._stream = b"".join(parts), None
        return self.body

    async def text(self) -> str:
        return (await self.read()).decode()

    async def json_body(self) -> Any:
        return json.loads(await self.read())

    async def bytes(self) -> bytes:
        """The whole body (Cloudflare's name; `read()` is the same)."""
        return await self.read()

    def copy(self) -> Response:
        """A new response with the same status, headers and (read) body."""
        if self._stream is not None:
            raise RuntimeError("read a streaming response before copying it")
        return Response(self.body, status=self.status, headers=self.headers.copy())


class JsDict(dict[str, Any]):
    """A dict whose keys also read as attributes (`row.quote`): what an object's RPC
    result is, as Cloudflare's conversion of a JavaScript object gives it."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


class JsException(Exception):
    """An error thrown by JavaScript, as Pyodide raises it in a Python Worker on Cloudflare
    (`pyodide.ffi.JsException`): `name` (the JS error's class) and `message`.

    edgepop has no JavaScript; its bindings raise subclasses of this where Cloudflare's
    would throw a JS error, so `except JsException` catches the same failures in both.
    Unlike Pyodide, whose `str()` puts the name first ("Error: D1_ERROR: ..."), `str()`
    is the message alone: code that matches on a message's prefix finds it at the start.
    """

    name = "Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class D1Error(JsException):
    """A D1 binding's error: the message starts with D1's prefix (D1_ERROR, D1_TYPE_ERROR,
    D1_COLUMN_NOTFOUND, D1_EXEC_ERROR), SQLite's failures end with their result code
    ("D1_ERROR: no such table: foo: SQLITE_ERROR"), as on Cloudflare."""


class KvConflictError(Exception):
    """A compare-and-set put (`put(..., only_if_seq=N)`) lost: the key moved on since
    version N was read, and nothing was written."""


class KVNamespace(Protocol):
    async def get(
        self, key: str, type: str = "text", *, consistency: str = "eventual", min_seq: int = 0
    ) -> Any: ...

    async def get_with_metadata(
        self, key: str, type: str = "text", *, consistency: str = "eventual", min_seq: int = 0
    ) -> dict[str, Any]: ...

    async def put(
        self,
        key: str,
        value: str | bytes,
        *,
        expiration: int = 0,
        expiration_ttl: int = 0,
        metadata: Any = None,
    ) -> int: ...

    async def delete(self, key: str) -> int: ...

    async def list(
        self, *, prefix: str = "", limit: int = 1000, cursor: str = ""
    ) -> dict[str, Any]: ...


class Cache(Protocol):
    async def match(self, request: Request | str) -> Response | None: ...

    async def put(self, request: Request | str, response: Response) -> None: ...

    async def delete(self, request: Request | str) -> bool: ...


class RequestScope(Protocol):
    """What the runtime provides for the request being handled."""

    async def fetch(self, request: Request) -> Response: ...

    @property
    def cache(self) -> Cache: ...

    @property
    def env(self) -> Any: ...

    @property
    def context(self) -> ExecutionContext: ...


current: ContextVar[RequestScope] = ContextVar("edgepop_request_scope")


def current_env() -> Any | None:
    """The bindings of the worker handling this request (None outside one)."""
    scope = current.get(None)
    return None if scope is None else scope.env


def current_context() -> ExecutionContext | None:
    """The `ctx` of the request being handled (None outside one)."""
    scope = current.get(None)
    return None if scope is None else scope.context


async def fetch(
    resource: Request | str,
    *,
    method: str = "GET",
    headers: HeadersInit = None,
    body: bytes | str | None = None,
) -> Response:
    """A subrequest from the worker (to the origin), counted against its limit."""
    request = (
        resource
        if isinstance(resource, Request)
        else Request(resource, method=method, headers=headers, body=body)
    )
    return await current.get().fetch(request)


class _Caches:
    @property
    def default(self) -> Cache:
        return current.get().cache


caches = _Caches()


class ScheduledController:
    """What a cron run's `scheduled(controller, env, ctx)` is given (Cloudflare's shape):
    the cron expression that fired and the scheduled time in ms since the epoch."""

    type = "scheduled"

    def __init__(self, cron: str, scheduled_time_ms: int) -> None:
        self.cron = cron
        self.scheduledTime = scheduled_time_ms
        self.retry = True

    def noRetry(self) -> None:
        """Cloudflare's hint not to retry a failed run; edgepop never retries one."""
        self.retry = False


class ExecutionContext:
    """`ctx`: work that may outlive the response."""

    def __init__(self) -> None:
        self.pending: list[Awaitable[Any]] = []
        self.props: dict[str, Any] = {}
        # D1 queries this invocation has made (D1 allows 1,000 per invocation).
        self.d1_queries = 0

    def wait_until(self, work: Awaitable[Any]) -> None:
        self.pending.append(work)

    waitUntil = wait_until  # Cloudflare's name

    def passThroughOnException(self) -> None:
        """Cloudflare forwards to the origin when the worker raises; edgepop answers 1101."""
