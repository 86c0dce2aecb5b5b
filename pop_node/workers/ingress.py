"""HTTP ingress at a PoP (aiohttp, HTTP/1.1): limits, emulated delay, geo, then a worker.

Limits are checked before anything runs (Cloudflare's numbers): a URL over 16 KiB gets
414, request headers over 32 KiB get 431, a body over 10 MiB gets 413. aiohttp's own
parser limits sit above ours, so the client gets our status rather than a generic 400.
The request's `cf` fields describe the simulated user's location (`x-edge-region`, or
this PoP's region) and `colo` names this PoP.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from multidict import CIMultiDict

from edgepop.http import install_netem
from edgepop.netem import REGION_HEADER
from edgepop.worker_api import Request

if TYPE_CHECKING:
    from pop_node.node import PopNode

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


def geo(node: PopNode, client_region: str) -> dict[str, Any]:
    """The `cf` object: where the (simulated) user is, and which PoP answered."""
    topology = node.config.topology
    region_name = client_region if topology.has_region(client_region) else node.region
    region = topology.region(region_name)
    own = topology.region(node.region)
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


def build_app(node: PopNode) -> web.Application:
    runtime = node.workers
    metrics = node.metrics
    # Per-request work done once: geo per client region, metric children per label set.
    geo_cache: dict[str, dict[str, Any]] = {}
    request_counters: dict[tuple[str, str], Any] = {}

    def geo_for(client_region: str) -> dict[str, Any]:
        found = geo_cache.get(client_region)
        if found is None:
            found = geo_cache[client_region] = geo(node, client_region)
        return dict(found)  # the worker may change its copy

    def count(worker: str, status: str) -> Any:
        counter = request_counters.get((worker, status))
        if counter is None:
            counter = request_counters[(worker, status)] = metrics.worker_requests.labels(
                metrics.node, metrics.region, worker, status
            )
        return counter

    def plain(status: int, text: str) -> web.Response:
        return web.Response(status=status, text=text + "\n")

    async def handle(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        worker_name = "-"
        status = 500
        try:
            if len(request.raw_path.encode()) > URL_BYTES_MAX:
                status = 414
                return plain(414, f"URI Too Long (limit {URL_BYTES_MAX} bytes)")
            header_bytes = sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
            if header_bytes > HEADER_BYTES_MAX or len(request.raw_headers) > HEADER_COUNT_MAX:
                status = 431
                return plain(
                    431,
                    f"Request Header Fields Too Large (limits: {HEADER_BYTES_MAX} bytes,"
                    f" {HEADER_COUNT_MAX} fields)",
                )
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
            body = await request.read()
            client_region = request.headers.get(REGION_HEADER, "")
            headers = CIMultiDict(request.headers)
            headers["CF-Connecting-IP"] = request.remote or ""
            worker_request = Request(
                f"http://{host}{request.path_qs}",
                method=request.method,
                headers=headers,
                body=body,
                cf=geo_for(client_region),
            )
            response, _ = await runtime.handle(version, worker_request)
            status = response.status
            if response.streaming:
                stream = web.StreamResponse(status=response.status, headers=response.headers)
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
        finally:
            count(worker_name, str(status)).inc()
            metrics.request("http", worker_name, str(status)).observe(time.perf_counter() - started)

    app = web.Application(client_max_size=BODY_BYTES_MAX, handler_args=handler_args())
    install_netem(app, node.netem)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def handler_args() -> dict[str, int]:
    return {
        "max_line_size": PARSER_LINE_BYTES_MAX,
        "max_field_size": PARSER_FIELD_BYTES_MAX,
        "max_headers": PARSER_HEADERS_MAX,
    }
