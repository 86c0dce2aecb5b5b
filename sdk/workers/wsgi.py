"""WSGI apps (Flask, Bottle, ...) as workers: Cloudflare's `workers.wsgi`, for CPython.

    from flask import Flask
    from workers import WorkerEntrypoint, wsgi

    app = Flask(__name__)

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return await wsgi.fetch(app, request, self.env)

A WSGI app blocks, so it runs in a worker thread; the PoP's event loop keeps serving
meanwhile. The environ follows PEP 3333, with the worker's bindings as `environ["env"]`.
"""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from edgepop.worker_api import Request, Response

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def request_to_environ(request: Request, env: Any, body: bytes) -> dict[str, Any]:
    url = urlsplit(request.url)
    scheme = url.scheme or "http"
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # PEP 3333: native strings holding the bytes as latin-1.
        "PATH_INFO": unquote(url.path or "/").encode().decode("latin-1"),
        "QUERY_STRING": url.query,
        "SERVER_NAME": url.hostname or "",
        "SERVER_PORT": str(url.port or (443 if scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "env": env,
    }
    for name, value in request.headers.items():
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key != "CONTENT_LENGTH":
            header = f"HTTP_{key}"
            # Repeated headers join with a comma (RFC 9110 §5.3).
            environ[header] = f"{environ[header]},{value}" if header in environ else value
    return environ


def _run(app: WsgiApp, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    started: list[Any] = []
    written = bytearray()

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.extend  # the legacy `write` callable

    result = app(environ, start_response)
    try:
        for chunk in result:
            written.extend(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI app returned without calling start_response")
    status_line, headers = started
    return int(str(status_line).split(" ", 1)[0]), list(headers), bytes(written)


async def fetch(app: WsgiApp, request: Request, env: Any, ctx: Any = None, **_: Any) -> Response:
    """Run `request` through the WSGI app (in a thread); its response."""
    environ = request_to_environ(request, env, await request.bytes())
    status, headers, body = await asyncio.to_thread(_run, app, environ)
    return Response(body, status=status, headers=headers)
