"""`workers.asgi` / `workers.wsgi` with small hand-written apps (no sockets, no FastAPI)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import asgi as top_level_asgi
from edgepop.websocket import CloseEvent, MessageEvent
from edgepop.worker_api import Request
from workers import asgi, wsgi


def make_app() -> tuple[Any, list[str]]:
    """An ASGI app with a lifespan that counts its startups and echoes what it is given."""
    startups: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            startups.append("up")
            scope["state"]["greeting"] = "hello"
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown never comes: a worker has no end
            return
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            while (event := await receive())["type"] == "websocket.receive":
                await send({"type": "websocket.send", "text": event["text"][::-1]})
            return
        message = await receive()
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"a", b"b", b"c"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/raise":
            raise ValueError("app failed")
        body = "|".join(
            [
                scope["state"]["greeting"],
                scope["env"]["NAME"],
                scope["method"],
                path,
                scope["query_string"].decode(),
                dict(scope["headers"])[b"x-one"].decode(),
                message["body"].decode(),
            ]
        )
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
                            (b"set-cookie", b"b=2")],
            }
        )  # fmt: skip
        await send({"type": "http.response.body", "body": body.encode()})

    return app, startups


def test_asgi_request_round_trip_with_env_state_and_repeated_headers() -> None:
    app, startups = make_app()

    async def run() -> None:
        for _ in range(2):
            request = Request(
                "https://api.example.com/p%20q?x=1",
                method="POST",
                headers={"X-One": "1"},
                body=b"payload",
            )
            response = await asgi.fetch(app, request.js_object, {"NAME": "env!"})
            assert response.status == 201
            assert response.body == b"hello|env!|POST|/p q|x=1|1|payload"
            assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]

    asyncio.run(run())
    assert startups == ["up"]  # once per app, not per request


def test_asgi_streams_a_response_sent_in_parts() -> None:
    app, _ = make_app()

    async def run() -> list[bytes]:
        response = await asgi.fetch(app, Request("http://h/stream"), {})
        assert response.streaming
        return [chunk async for chunk in response.chunks()]

    assert asyncio.run(run()) == [b"a", b"b", b"c", b""]


def test_asgi_app_error_reaches_the_worker() -> None:
    app, _ = make_app()
    with pytest.raises(ValueError, match="app failed"):
        asyncio.run(asgi.fetch(app, Request("http://h/raise"), {}))


def test_asgi_websocket_over_a_pair() -> None:
    app, _ = make_app()

    async def run() -> list[Any]:
        request = Request("http://h/ws", headers={"Upgrade": "websocket"})
        response = await top_level_asgi.websocket(app, request, {})
        assert response.status == 101
        client = response.web_socket
        events = client.events()
        client.send("abc")
        first = await anext(events)
        client.close(1000)
        return [first, *[event async for event in events]]

    assert asyncio.run(run()) == [MessageEvent("cba"), CloseEvent(1000, "", True)]


def test_wsgi_request_round_trip() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        start_response("202 Accepted", [("X-Env", environ["env"]["NAME"])])
        text = f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']} {environ['HTTP_X_ONE']} "
        return [text.encode(), body]

    request = Request("http://h/a?b=c", method="PUT", headers={"X-One": "1"}, body=b"data")
    response = asyncio.run(wsgi.fetch(app, request, {"NAME": "n"}))
    assert (response.status, response.headers["X-Env"], response.body) == (
        202,
        "n",
        b"PUT /a 1 data",
    )
