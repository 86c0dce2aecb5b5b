"""ASGI apps (FastAPI, Starlette, ...) as workers: Cloudflare's `workers.asgi`, for CPython.

    from fastapi import FastAPI, Request
    from workers import WorkerEntrypoint
    import asgi  # or: from workers import asgi

    app = FastAPI()

    @app.get("/")
    async def root(request: Request):
        return {"colo": request.scope["env"].COLO}

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return await asgi.fetch(app, request.js_object, self.env)

`fetch` runs one HTTP request through the app (ASGI 3.0); the scope carries the worker's
bindings as `scope["env"]` (FastAPI: a parameter `env=asgi.env`). The app's lifespan
startup runs once per app in a PoP process, before its first request, as an ASGI server
runs it (Cloudflare runs it around every request); its state is copied into each
request's scope. A response sent in parts (`more_body`) streams to the client; work the
app does after its response (background tasks) continues under `ctx.waitUntil`.
`websocket` serves an ASGI WebSocket endpoint over a `WebSocketPair`; `entrypoint(app)`
is a ready `Default` class doing both.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from edgepop.websocket import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, WebSocketPair
from edgepop.worker_api import Request, Response, current_context
from workers._entrypoints import WorkerEntrypoint

log = logging.getLogger("worker.asgi")

ASGI = {"version": "3.0", "spec_version": "2.3"}
Message = MutableMapping[str, Any]
App = Callable[..., Awaitable[None]]

# Tasks that outlive the code that started them (kept referenced until done).
_background: set[asyncio.Future[Any]] = set()


def _hold(task: asyncio.Future[Any]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


def _keep(task: asyncio.Future[Any]) -> None:
    """Hold a task that outlives its request, under the request's `ctx.waitUntil`."""
    _hold(task)
    context = current_context()
    if context is not None:
        context.wait_until(asyncio.shield(task))


def request_to_scope(
    request: Request, env: Any, *, websocket: bool = False, state: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ASGI connection scope of `request` (HTTP, or WebSocket with `websocket`)."""
    url = urlsplit(request.url)
    scheme = url.scheme or "http"
    if websocket:
        scheme = "wss" if scheme == "https" else "ws"
    port = url.port or (443 if scheme in ("https", "wss") else 80)
    scope: dict[str, Any] = {
        "type": "websocket" if websocket else "http",
        "asgi": ASGI,
        "http_version": "1.1",
        "method": request.method,
        "scheme": scheme,
        "path": unquote(url.path or "/"),
        "raw_path": (url.path or "/").encode(),
        "query_string": url.query.encode(),
        "root_path": "",
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in request.headers.items()
        ],
        "client": None,
        "server": (url.hostname or "", port),
        "env": env,
    }
    if state is not None:
        scope["state"] = dict(state)  # ASGI: a shallow copy per request
    return scope


class _Lifespan:
    """One app's lifespan in this process: started once, state kept for its requests."""

    def __init__(self, app: App) -> None:
        self.state: dict[str, Any] = {}
        self._app = app
        self._started: asyncio.Future[None] | None = None
        self._supported = False

    async def ready(self) -> dict[str, Any] | None:
        """The lifespan state once startup completed (None: the app has no lifespan)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            _hold(asyncio.ensure_future(self._run(self._started)))
        await self._started
        return self.state if self._supported else None

    async def _run(self, started: asyncio.Future[None]) -> None:
        events: asyncio.Queue[Message] = asyncio.Queue()
        events.put_nowait({"type": "lifespan.startup"})

        async def send(message: Message) -> None:
            kind = message["type"]
            if kind == "lifespan.startup.complete":
                self._supported = True
                if not started.done():
                    started.set_result(None)
            elif kind == "lifespan.startup.failed" and not started.done():
                reason = message.get("message") or "ASGI lifespan startup failed"
                started.set_exception(RuntimeError(reason))

        try:
            await self._app(
                {"type": "lifespan", "asgi": ASGI, "state": self.state}, events.get, send
            )
        except Exception as error:
            # ASGI: an app that raises before completing startup has no lifespan support.
            log.debug("ASGI app without lifespan (%s)", error)
        if not started.done():
            started.set_result(None)


_LIFESPANS: dict[int, tuple[App, _Lifespan]] = {}


async def _lifespan_state(app: App) -> dict[str, Any] | None:
    found = _LIFESPANS.get(id(app))
    if found is None or found[0] is not app:
        found = _LIFESPANS[id(app)] = (app, _Lifespan(app))
    return await found[1].ready()


async def fetch(app: App, request: Request, env: Any, ctx: Any = None, **_: Any) -> Response:
    """Run `request` through the ASGI app; its response (streamed if the app streams)."""
    state = await _lifespan_state(app)
    scope = request_to_scope(request, env, state=state)
    body = await request.bytes()
    request_sent = False
    finished = asyncio.Event()
    start: Message = {}
    buffered = bytearray()
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
    # Resolves when the response's form is known: True = streamed, False = complete.
    streamed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def receive() -> Message:
        nonlocal request_sent
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            start.update(message)
            return
        if kind != "http.response.body":
            return
        if not start:
            raise RuntimeError("ASGI: http.response.body before http.response.start")
        data = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if streamed.done():
            await chunks.put(data)
            if not more:
                await chunks.put(None)
                finished.set()
        elif more:
            streamed.set_result(True)
            await chunks.put(data)
        else:
            buffered.extend(data)
            streamed.set_result(False)
            finished.set()

    running: asyncio.Future[None] = asyncio.ensure_future(app(scope, receive, send))
    waited: list[asyncio.Future[Any]] = [running, streamed]
    await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    if not streamed.done():
        finished.set()
        streamed.cancel()
        running.result()  # the app's own exception, if it raised
        raise RuntimeError("the ASGI app returned without sending a response")
    status = int(start["status"])
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in start.get("headers", [])
    ]
    if not running.done():
        _keep(running)  # e.g. background tasks after the response
    if not streamed.result():
        return Response(bytes(buffered), status=status, headers=headers)

    async def stream() -> AsyncIterator[bytes]:
        while (chunk := await chunks.get()) is not None:
            yield chunk

    return Response(stream(), status=status, headers=headers)


async def websocket(app: App, request: Request, env: Any = None) -> Response:
    """Serve the app's WebSocket endpoint for an upgrade request: a 101 with the client end."""
    client, server = WebSocketPair.new().object_values()
    server.accept()
    events: asyncio.Queue[Message] = asyncio.Queue()
    events.put_nowait({"type": "websocket.connect"})

    def on_message(event: Any) -> None:
        key = "text" if isinstance(event.data, str) else "bytes"
        events.put_nowait({"type": "websocket.receive", key: event.data})

    def on_close(event: Any) -> None:
        events.put_nowait(
            {"type": "websocket.disconnect", "code": event.code, "reason": event.reason}
        )

    server.addEventListener("message", on_message)
    server.addEventListener("close", on_close)
    closed_by_app = False

    async def send(message: Message) -> None:
        nonlocal closed_by_app
        kind = message["type"]
        if kind == "websocket.send":
            if message.get("bytes") is not None:
                server.send(bytes(message["bytes"]))
            elif message.get("text") is not None:
                server.send(message["text"])
        elif kind == "websocket.close":
            closed_by_app = True
            server.close_unchecked(
                int(message.get("code", CLOSE_NORMAL)), message.get("reason") or ""
            )
        # websocket.accept: the pair is accepted already (before the 101 leaves).

    state = await _lifespan_state(app)
    scope = request_to_scope(request, env if env is not None else {}, websocket=True, state=state)
    task = asyncio.ensure_future(app(scope, events.get, send))

    def finished(done: asyncio.Future[Any]) -> None:
        if not closed_by_app:
            failed = not done.cancelled() and done.exception() is not None
            server.close_unchecked(CLOSE_INTERNAL_ERROR if failed else CLOSE_NORMAL, "")

    task.add_done_callback(finished)
    _keep(task)
    return Response(None, status=101, web_socket=client)


def entrypoint(app: App, **_: Any) -> type[WorkerEntrypoint]:
    """A `Default` worker class serving `app`: HTTP through `fetch`, upgrades through
    `websocket`."""

    class Default(WorkerEntrypoint):
        async def fetch(self, request: Request) -> Response:
            if (request.headers.get("Upgrade") or "").lower() == "websocket":
                return await websocket(app, request, self.env)
            return await fetch(app, request, self.env, self.ctx)

    return Default


def __getattr__(name: str) -> Any:
    # `env=asgi.env` in a FastAPI endpoint's parameters: the worker's bindings.
    if name == "env":
        from fastapi import Depends  # type: ignore[import-not-found]
        from fastapi import Request as FastApiRequest

        async def bindings(request: FastApiRequest) -> Any:
            return request.scope["env"]

        return Depends(bindings)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
