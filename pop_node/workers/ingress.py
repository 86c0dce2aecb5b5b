"""HTTP ingress at a PoP (aiohttp, HTTP/1.1): limits, emulated delay, geo, then a worker.

Limits are checked before anything runs (Cloudflare's numbers): a URL over 16 KiB gets
414, request headers over 32 KiB get 431, a body over 10 MiB gets 413. aiohttp's own
parser limits sit above ours, so the client gets our status rather than a generic 400.
The limits apply to every request, routed or not; a version other than HTTP/1.0 and 1.1
gets 505 (aiohttp parses any HTTP/x.y and would answer in that version), a body whose
framing breaks midway gets 400.

Slow clients are bounded (slowloris): a connection must deliver complete request headers
within REQUEST_HEADERS_TIMEOUT_S of opening (or of its previous response: the same bound
closes idle kept-alive connections), and a body within BODY_TIMEOUT_S plus one second per
BODY_RATE_BYTES_S_MIN bytes received, else 408. A client that stops sending holds a
connection for seconds, not for aiohttp's default hour.

The request's `cf` fields describe the simulated user's location (`x-edge-region`, or
this PoP's region) and `colo` names this PoP.

A worker that answers 101 with a WebSocket (`Response(None, status=101, web_socket=
client)`, e.g. from a Durable Object through `stub.fetch`) gets the connection upgraded
and its frames carried both ways (`bridge_websocket`).

`/__scheduled?cron=EXPR[&time=MS]` on a worker's host runs its `scheduled` handler now
(wrangler's form): how the control plane fires cron triggers and how `edgectl workers
trigger` does; it needs the cluster token (`Authorization: Bearer ...`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import HttpVersion10, HttpVersion11, WSMsgType, web
from multidict import CIMultiDict

from edgepop.http import hold_inbound, hold_outbound
from edgepop.netem import REGION_HEADER, caller_from_headers
from edgepop.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    MESSAGE_BYTES_MAX,
    CloseEvent,
    Event,
    MessageEvent,
)
from edgepop.worker_api import Request
from pop_node.identity import PopIdentity

if TYPE_CHECKING:
    from edgepop.netem import NetworkEmulator
    from edgepop.topology import Topology
    from pop_node.workers.runtime import WorkerRuntime

log = logging.getLogger(__name__)

URL_BYTES_MAX = 16 * 1024
HEADER_BYTES_MAX = 32 * 1024
HEADER_COUNT_MAX = 256
BODY_BYTES_MAX = 10 * 1024 * 1024
# aiohttp's parser limits, far above ours so that we answer 414/431 ourselves; past these
# a request is malformed (400).
PARSER_LINE_BYTES_MAX = 1024 * 1024
PARSER_FIELD_BYTES_MAX = 1024 * 1024
PARSER_HEADERS_MAX = 8192
# Slow clients (nginx's hardening advice for client_header_timeout / client_body_timeout;
# Apache's mod_reqtimeout rates the body the same way). Kept-alive idle connections close
# after the same 10 s as a connection that never finishes its headers: aiohttp has one
# timer for both.
REQUEST_HEADERS_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 10.0
BODY_RATE_BYTES_S_MIN = 64 * 1024
HTTP_VERSIONS = frozenset({HttpVersion10, HttpVersion11})
SCHEDULED_PATH = "/__scheduled"
DEFAULT_CRON = "* * * * *"


class IngressPop(PopIdentity, Protocol):
    """What the HTTP ingress uses of its PoP (pop_node.node.PopNode): the workers it
    serves, the emulated network requests pay, and who and where the PoP is."""

    @property
    def token(self) -> str:
        """The cluster token ("" when none): `/__scheduled` needs it."""

    @property
    def topology(self) -> Topology: ...

    @property
    def netem(self) -> NetworkEmulator: ...

    @property
    def workers(self) -> WorkerRuntime: ...


class BodyTimeoutError(Exception):
    """The client sent its body too slowly (or stopped)."""


async def read_body(request: web.BaseRequest) -> bytes:
    """The whole body, bounded in size (413) and in time (BodyTimeoutError).

    The time allowed grows with what has arrived, so a large upload at a reasonable rate
    finishes, while a client that trickles or stops is cut off.
    """
    if not request.body_exists:
        return b""  # no Content-Length and not chunked (a GET): nothing to wait for
    loop = asyncio.get_running_loop()
    started = loop.time()
    body = bytearray()
    while True:
        allowed_s = BODY_TIMEOUT_S + len(body) / BODY_RATE_BYTES_S_MIN
        try:
            async with asyncio.timeout_at(started + allowed_s):
                chunk = await request.content.readany()
        except TimeoutError as error:
            raise BodyTimeoutError(f"{len(body)} bytes in {allowed_s:.0f} s") from error
        if not chunk:
            return bytes(body)
        body += chunk
        if len(body) > BODY_BYTES_MAX:
            raise web.HTTPRequestEntityTooLarge(BODY_BYTES_MAX, len(body))


def geo(topology: Topology, pop_region: str, client_region: str) -> dict[str, Any]:
    """The `cf` object: where the (simulated) user is, and which PoP answered."""
    region_name = client_region if topology.has_region(client_region) else pop_region
    region = topology.region(region_name)
    own = topology.region(pop_region)
    return {
        "colo": own.colo,
        "region": region.name,
        "country": region.country,
        "city": region.city,
        "continent": region.continent,
        "timezone": region.timezone,
        "latitude": region.latitude,
        "longitude": region.longitude,
        "is_eu_country": region.is_eu_country,
    }


def build_server(pop: IngressPop) -> web.Server:
    runtime = pop.workers
    metrics = pop.metrics
    netem = pop.netem
    # Per-request work done once: geo per client region, metric children per label set.
    geo_cache: dict[str, dict[str, Any]] = {}
    request_metrics: dict[tuple[str, int], tuple[Any, Any]] = {}

    def geo_for(client_region: str) -> dict[str, Any]:
        found = geo_cache.get(client_region)
        if found is None:
            found = geo_cache[client_region] = geo(pop.topology, pop.region, client_region)
        return found  # worker_api.Request copies it: the worker may change its own

    def record(worker: str, status: int, duration_s: float) -> None:
        """Count the request and observe its duration (the children cached per label set)."""
        children = request_metrics.get((worker, status))
        if children is None:
            code = str(status)
            children = request_metrics[(worker, status)] = (
                metrics.worker_requests.labels(metrics.node, metrics.region, worker, code),
                metrics.request("http", worker, code),
            )
        children[0].inc()
        children[1].observe(duration_s)

    def plain(status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text + "\n")

    def refusal(request: web.BaseRequest) -> web.Response | None:
        """The answer to a request refused before routing, or None to serve it."""
        if request.version not in HTTP_VERSIONS:
            version = request.version
            # Answered in HTTP/1.1: a status line in the client's version would be nonsense.
            # aiohttp writes the status line in `request.version` (cached once read).
            request._version = HttpVersion11
            request._cache.pop("version", None)
            response = plain(505, f"HTTP Version Not Supported: HTTP/{version[0]}.{version[1]}")
            response.force_close()
            return response
        if len(request.raw_path.encode()) > URL_BYTES_MAX:
            return plain(414, f"URI Too Long (limit {URL_BYTES_MAX} bytes)")
        header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if header_bytes > HEADER_BYTES_MAX or len(request.raw_headers) > HEADER_COUNT_MAX:
            return plain(
                431,
                f"Request Header Fields Too Large (limits: {HEADER_BYTES_MAX} bytes,"
                f" {HEADER_COUNT_MAX} fields)",
            )
        if (request.content_length or 0) > BODY_BYTES_MAX:
            # Declared too large: refused before a byte of it is read. The connection is
            # not cut: aiohttp reads and drops the rest for a while, so that a client still
            # sending gets to read this answer.
            return plain(413, f"Payload Too Large (limit {BODY_BYTES_MAX} bytes)")
        return None

    async def serve(request: web.BaseRequest) -> web.StreamResponse:
        # Every request: the limits, the emulated inbound leg, the worker, and the outbound
        # leg before the answer's headers leave (a streamed answer or a WebSocket holds it
        # in `handle`, before it prepares).
        refused = refusal(request)
        if refused is not None:
            record("-", refused.status, 0.0)
            return refused
        caller = caller_from_headers(request.headers.get)
        if caller is not None:
            held = await hold_inbound(netem, request, caller)
            if held is not None:
                return held  # a partitioned link: the request never reaches the handler
        response = await handle(request)
        if caller is not None and not response.prepared:
            await hold_outbound(netem, request)
        return response

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        worker_name = "-"
        status = 500
        try:
            if not runtime.ready.is_set():
                status = 503
                return web.Response(
                    status=503,
                    text="this PoP is loading its workers\n",
                    headers={"Retry-After": "1"},
                )
            host = (request.host or "").split(":", 1)[0].lower()
            version = runtime.match(host, request.path)
            if version is None:
                status = 404
                return web.json_response(
                    {"error": f"no worker route matches {host}{request.path}"}, status=404
                )
            worker_name = version.name
            if request.path == SCHEDULED_PATH:
                answer = await run_scheduled(pop, version, request)
                status = answer.status
                return answer
            body = await read_body(request)
            headers = CIMultiDict(request.headers)
            headers["CF-Connecting-IP"] = request.remote or ""
            worker_request = Request(
                f"http://{host}{request.path_qs}",
                method=request.method,
                headers=headers,
                body=body,
                cf=geo_for(headers.get(REGION_HEADER, "")),
            )
            response, _ = await runtime.handle(version, worker_request)
            status = response.status
            if status == 101 and response.web_socket is not None:
                return await bridge_websocket(netem, request, response.web_socket)
            if response.streaming:
                stream = web.StreamResponse(status=response.status, headers=response.headers)
                await hold_outbound(netem, request)
                await stream.prepare(request)
                async for chunk in response.chunks():
                    await stream.write(chunk)
                await stream.write_eof()
                return stream
            return web.Response(
                status=response.status, body=response.body, headers=response.headers
            )
        except web.HTTPRequestEntityTooLarge:
            status = 413
            return plain(413, f"Payload Too Large (limit {BODY_BYTES_MAX} bytes)")
        except BodyTimeoutError as error:
            status = 408
            timed_out = plain(408, f"Request Timeout: the body came too slowly ({error})")
            timed_out.force_close()
            return timed_out
        except web.RequestPayloadError as error:
            # Broken framing midway (a bad chunk size, a length the body never reaches).
            status = 400
            malformed = plain(400, f"Bad Request: the body is malformed ({error})")
            malformed.force_close()
            return malformed
        finally:
            record(worker_name, status, time.perf_counter() - started)

    # aiohttp's low-level server: every request reaches `serve`, with no router, middleware
    # chain or response signals between (each a call layer per request, ~6% of a worker's
    # request; the ingress routes by Host itself).
    return web.Server(serve, access_log=None, **handler_args())


async def bridge_websocket(
    netem: NetworkEmulator, request: web.BaseRequest, end: Any
) -> web.StreamResponse:
    """Carry a worker's WebSocket (the client end it answered 101 with) to the client.

    Frames cross the user's emulated link each way, one by one (in order, each delayed
    like a stream message of gRPC). Either side's close ends both directions.
    """
    ws = web.WebSocketResponse(max_msg_size=MESSAGE_BYTES_MAX)
    if not ws.can_prepare(request).ok:
        end.close_unchecked(CLOSE_NORMAL, "not a WebSocket request")
        return web.Response(
            status=426, text="Upgrade Required: the worker answered with a WebSocket\n"
        )
    await hold_outbound(netem, request)
    await ws.prepare(request)
    caller = caller_from_headers(request.headers.get)
    into, back = netem.legs(caller) if caller is not None else (None, None)

    async def from_client() -> AsyncIterator[Event]:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                yield MessageEvent(message.data)
        yield CloseEvent(ws.close_code or CLOSE_ABNORMAL, "", wasClean=ws.close_code is not None)

    async def inbound() -> None:
        frames = from_client() if into is None else netem.delay_stream(into, from_client())
        async for event in frames:
            if isinstance(event, CloseEvent):
                end.close_unchecked(event.code, event.reason, event.wasClean)
                return
            try:
                end.send(event.data)
            except RuntimeError:
                return  # the worker's side closed meanwhile

    pump = asyncio.ensure_future(inbound())
    try:
        frames = end.events() if back is None else netem.delay_stream(back, end.events())
        async for event in frames:
            if isinstance(event, CloseEvent):
                await ws.close(code=event.code, message=event.reason.encode())
                break
            if isinstance(event.data, bytes):
                await ws.send_bytes(event.data)
            else:
                await ws.send_str(event.data)
    except ConnectionResetError:
        end.close_unchecked(CLOSE_ABNORMAL, "", was_clean=False)
    finally:
        pump.cancel()
        if not ws.closed:
            await ws.close()
    return ws


async def run_scheduled(pop: IngressPop, version: Any, request: web.BaseRequest) -> web.Response:
    """`/__scheduled`: run the worker's cron handler now, for the token's holder only."""
    given = request.headers.get("Authorization", "")
    expected = f"Bearer {pop.token}" if pop.token else ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return web.Response(
            status=401, text=f"{SCHEDULED_PATH} runs cron handlers: it needs the cluster token\n"
        )
    cron = request.query.get("cron") or (version.config.crons or (DEFAULT_CRON,))[0]
    try:
        scheduled_ms = int(request.query.get("time") or time.time() * 1000)
    except ValueError:
        return web.Response(status=400, text="time: milliseconds since the epoch\n")
    if version.module.scheduled is None:
        return web.Response(status=404, text=f"worker {version.name} has no scheduled handler\n")
    outcome = await pop.workers.run_scheduled(version, cron, scheduled_ms)
    if outcome:
        return web.Response(status=500, text=f"scheduled {cron!r}: {outcome}\n")
    return web.Response(text=f"ran scheduled {cron!r} of {version.name} at {pop.name}\n")


def handler_args() -> dict[str, Any]:
    return {
        "max_line_size": PARSER_LINE_BYTES_MAX,
        "max_field_size": PARSER_FIELD_BYTES_MAX,
        "max_headers": PARSER_HEADERS_MAX,
        # aiohttp closes a connection whose request has not arrived in full this long after
        # it opened (or after the previous response): the bound on slow headers.
        "keepalive_timeout": REQUEST_HEADERS_TIMEOUT_S,
    }
