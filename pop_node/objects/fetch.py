"""`stub.fetch(request)`: an HTTP request to a Durable Object's `fetch`, across PoPs.

Cloudflare lets a worker hand a request to an object (`await stub.fetch(request)`), and
the object answers with a Response, or with a 101 carrying one end of a WebSocketPair.
Here the request and response cross as JSON (bodies base64): a plain request is an
object call of the reserved method FETCH_METHOD (so it has a request id and runs once,
like any call); an upgrade opens a session (`ObjectConnect` with `fetch_json`) that then
carries the socket's frames.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from edgepop.errors import InvalidArgumentError
from edgepop.worker_api import Request, Response

# No class may define it (a leading underscore is never callable by name).
FETCH_METHOD = "__fetch__"


def encode_request(request: Request) -> str:
    return json.dumps(
        {
            "url": request.url,
            "method": request.method,
            "headers": list(request.headers.items()),
            "body": base64.b64encode(request.body).decode(),
            "cf": request.cf,
        },
        separators=(",", ":"),
    )


def decode_request(text: str) -> Request:
    try:
        fields = json.loads(text)
        return Request(
            str(fields["url"]),
            method=str(fields.get("method", "GET")),
            headers=[(str(k), str(v)) for k, v in fields.get("headers", [])],
            body=base64.b64decode(fields.get("body", "")),
            cf=dict(fields.get("cf") or {}),
        )
    except (ValueError, KeyError, TypeError) as error:
        raise InvalidArgumentError(f"fetch: malformed request ({error})") from error


async def encode_response(response: Any) -> dict[str, Any]:
    """The JSON form of what an object's `fetch` returned (refused if not a Response)."""
    if not isinstance(response, Response):
        raise TypeError(f"fetch returned {type(response).__name__}, not a Response")
    body = await response.read()
    return {
        "status": response.status,
        "status_text": response.status_text,
        "headers": list(response.headers.items()),
        "body": base64.b64encode(body).decode(),
        "web_socket": response.web_socket is not None,
    }


def decode_response(text: str) -> Response:
    fields = json.loads(text)
    return Response(
        base64.b64decode(fields.get("body", "")),
        status=int(fields.get("status", 200)),
        status_text=str(fields.get("status_text", "")),
        headers=[(str(k), str(v)) for k, v in fields.get("headers", [])],
    )


async def run_fetch(
    obj: Any, request: Request, *, upgrade: bool, answered: list[Response] | None = None
) -> dict[str, Any]:
    """Run the object's `fetch` (inside a call); its response's JSON form. The response
    itself goes to `answered` (a session needs its WebSocket)."""
    response = await obj.fetch(request)
    encoded = await encode_response(response)
    if response.web_socket is not None and not upgrade:
        raise TypeError("a WebSocket response answers only a request with Upgrade: websocket")
    if answered is not None:
        answered.append(response)
    return encoded
