"""`edgectl console`: the cluster in a browser page, live.

An aiohttp app. `GET /` is the page (static files from this package: nothing is fetched
from the internet); `GET /api/state` is a snapshot with the sparklines' history;
`GET /events` streams a snapshot a second as server-sent events, plus each write the page
asked to watch. `POST /api/probe` runs `edgectl probe`. Actions are `POST /api/...` with
the cluster token as a bearer token (the URL the console prints carries it in its
fragment, which browsers never send): they make the same calls as `edgectl node`,
`edgectl net` and `edgectl kv put`. Read-only
views need no token while the console listens on loopback only.

The cluster is sampled only while a page is connected, so a console nobody looks at
costs the cluster nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edgectl.client import CliError
from edgectl.console import PORT_DEFAULT, geo
from edgectl.console.state import ConsoleModel
from edgepop.auth import TOKEN_FILE_NAME, read_token

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
SAMPLE_INTERVAL_S = 1.0
# The page's requests are small; anything larger is not the page.
REQUEST_BYTES_MAX = 64 * 1024
KEY_BYTES_MAX = 512
VALUE_BYTES_MAX = 64 * 1024
# The fault form's fields, each the text `edgectl net` takes (`100ms`, `20%`, `30s`).
FAULT_VALUES = ("delay", "jitter", "loss", "for")
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ConsoleConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = PORT_DEFAULT


class Console:
    """The app's state: the model, the page subscribers, the sampler task."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.token = read_token(config.data_dir / TOKEN_FILE_NAME)
        self.executor = futures.ThreadPoolExecutor(max_workers=24, thread_name_prefix="console")
        self.model = ConsoleModel(config.data_dir, self.executor)
        self.world = geo.world_map()
        self.subscribers: set[asyncio.Queue[tuple[str, Any]]] = set()
        self.latest: dict[str, Any] | None = None
        self._wake = asyncio.Event()
        self._sampler: asyncio.Task[None] | None = None
        # The model's calls are blocking and not made for concurrent use: one at a time.
        self._model_lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------------------

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self._model_lock:
                return function(*args)

        return await asyncio.get_running_loop().run_in_executor(self.executor, locked)

    def publish(self, event: str, data: Any) -> None:
        for queue in self.subscribers:
            queue.put_nowait((event, data))

    async def sample_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.subscribers:
                self._wake.clear()
                await self._wake.wait()
            started = loop.time()
            try:
                self.latest = await self.call(self.model.snapshot)
                self.publish("state", self.latest)
            except Exception as error:  # the cluster may be down: say so, keep trying
                log.debug("snapshot failed", exc_info=error)
                self.publish("problem", {"error": str(error)})
            await asyncio.sleep(max(0.0, SAMPLE_INTERVAL_S - (loop.time() - started)))

    async def start(self, _: web.Application) -> None:
        self._sampler = asyncio.create_task(self.sample_forever())

    async def stop(self, _: web.Application) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
        for queue in self.subscribers:
            queue.put_nowait(("end", None))
        self.model.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- access ------------------------------------------------------------------------

    def authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        given = given or request.query.get("token", "")
        return bool(given) and hmac.compare_digest(given, self.token)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every action needs the token; looking needs it too unless bound to loopback."""
        guarded = request.path.startswith("/api/") or request.path == "/events"
        open_look = request.method in ("GET", "HEAD") and is_loopback(self.config.host)
        if guarded and not open_look and not self.authorized(request):
            return _error(401, "UNAUTHENTICATED", "this needs the cluster token")
        try:
            return await handler(request)
        except CliError as error:
            return _error(HTTP_STATUS.get(error.code, 500), error.code, error.details)

    # -- pages -------------------------------------------------------------------------

    async def index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def world_map(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.world.to_json(), headers={"Cache-Control": "max-age=3600"})

    async def state(self, _: web.Request) -> web.StreamResponse:
        snapshot = self.latest or await self.call(self.model.snapshot)
        history = await self.call(self.model.history.to_json)
        return web.json_response({**snapshot, "history": history})

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.subscribers.add(queue)
        self._wake.set()
        try:
            if self.latest is not None:
                queue.put_nowait(("state", self.latest))
            while True:
                event, data = await queue.get()
                if event == "end":
                    break
                payload = json.dumps(data, separators=(",", ":"))
                await response.write(f"event: {event}\ndata: {payload}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.discard(queue)
        return response

    async def kv_list(self, request: web.Request) -> web.StreamResponse:
        pop = request.query.get("pop", "")
        namespace = request.query.get("namespace", "")
        if not pop or not namespace:
            raise CliError("INVALID_ARGUMENT", "pop and namespace are required")
        listing = await self.call(
            self.model.kv_list, pop, namespace, request.query.get("prefix", "")
        )
        return web.json_response(listing)

    async def probe(self, _: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self.executor, self.model.probe)
        return web.json_response({"regions": results})

    async def kv_versions(self, request: web.Request) -> web.StreamResponse:
        namespace = request.query.get("namespace", "")
        key = request.query.get("key", "")
        if not namespace or not key:
            raise CliError("INVALID_ARGUMENT", "namespace and key are required")
        return web.json_response(await self.call(self.model.kv_versions, namespace, key))

    async def sql_browse(self, request: web.Request) -> web.StreamResponse:
        pop = request.query.get("pop", "")
        if not pop:
            raise CliError("INVALID_ARGUMENT", "pop is required")
        browsed = await self.call(
            self.model.sql_browse,
            pop,
            request.query.get("database", ""),
            request.query.get("table", ""),
        )
        return web.json_response(browsed)

    # -- actions -----------------------------------------------------------------------

    async def node_action(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        name = request.match_info["name"]
        said = await self.call(self.model.node_action, name, _text(body, "action"))
        return web.json_response({"ok": True, "message": said})

    async def fault(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        values = {}
        for name in FAULT_VALUES:
            value = body.get(name, "")
            if not isinstance(value, str):
                raise CliError("INVALID_ARGUMENT", f"{name} must be text, as on the command line")
            values[name] = value
        faults = await self.call(
            self.model.fault,
            _text(body, "action"),
            _text(body, "from"),
            _text(body, "to"),
            values,
            bool(body.get("one_way", False)),
        )
        return web.json_response({"ok": True, "faults": faults})

    async def write(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        key, value = _text(body, "key"), _text(body, "value", allow_empty=True)
        if len(key.encode()) > KEY_BYTES_MAX or len(value.encode()) > VALUE_BYTES_MAX:
            raise CliError("INVALID_ARGUMENT", "key or value too large")
        loop = asyncio.get_running_loop()

        def on_visible(result: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self.publish, "visible", result)

        watched = await self.call(
            self.model.watch_write,
            _text(body, "region"),
            _text(body, "namespace"),
            key,
            value,
            on_visible,
        )
        self.publish("write", watched)
        return web.json_response(watched)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > REQUEST_BYTES_MAX:
        raise CliError("INVALID_ARGUMENT", "request body too large")
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CliError("INVALID_ARGUMENT", "the body must be JSON") from None
    if not isinstance(body, dict):
        raise CliError("INVALID_ARGUMENT", "the body must be a JSON object")
    return body


def _text(body: dict[str, Any], name: str, *, allow_empty: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (not value and not allow_empty):
        raise CliError("INVALID_ARGUMENT", f"{name} must be a non-empty string")
    return value


def build_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[console.guard], client_max_size=REQUEST_BYTES_MAX)
    app.router.add_get("/", console.index)
    app.router.add_get("/api/map", console.world_map)
    app.router.add_get("/api/state", console.state)
    app.router.add_get("/api/kv", console.kv_list)
    app.router.add_get("/api/kv/versions", console.kv_versions)
    app.router.add_get("/api/sql", console.sql_browse)
    app.router.add_get("/events", console.events)
    app.router.add_post("/api/nodes/{name}", console.node_action)
    app.router.add_post("/api/net", console.fault)
    app.router.add_post("/api/write", console.write)
    app.router.add_post("/api/probe", console.probe)
    app.router.add_static("/static/", STATIC_DIR)
    app.on_startup.append(console.start)
    app.on_shutdown.append(console.stop)
    return app


def console_url(config: ConsoleConfig, port: int, token: str) -> str:
    host = "127.0.0.1" if config.host in ("0.0.0.0", "") else config.host
    return f"http://{host}:{port}/#token={token}"


class ConsoleServer:
    """The console on its own thread and loop (beside `cluster up`'s live view)."""

    def __init__(self, config: ConsoleConfig) -> None:
        self.config = config
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    def start(self, timeout_s: float = 10.0) -> str:
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise CliError("DEADLINE_EXCEEDED", "the console did not start in time")
        if self._failure is not None:
            raise CliError("UNAVAILABLE", f"the console could not start: {self._failure}")
        return self.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:
            self._failure = error
        finally:
            self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        console = Console(self.config)
        self._runner = web.AppRunner(build_app(console), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = console_url(self.config, port, console.token)

    def stop(self) -> None:
        loop, runner = self._loop, self._runner
        if loop is None or runner is None or loop.is_closed():
            return
        cleanup = asyncio.run_coroutine_threadsafe(runner.cleanup(), loop)
        with contextlib.suppress(futures.TimeoutError, RuntimeError):
            cleanup.result(timeout=5.0)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
