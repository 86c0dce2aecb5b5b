"""HTTP wiring shared by the origin application and PoP ingress (aiohttp).

The same network emulation as gRPC: a request that says where it comes from (headers
`x-edge-region`, `x-edge-node`, `x-edge-sent-at`) is held for the inbound leg before its
handler and the outbound leg after, at this server.

With TLS on (`edgepop.tls.process_tls()`), sites serve HTTPS from the node's
certificate, and `origin_session` makes the PoP's client to the origin application
speak HTTPS with the node's client certificate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from edgepop.errors import EdgeError
from edgepop.netem import Caller, NetworkEmulator, caller_from_headers, reply_credit_s
from edgepop.tls import process_tls

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_OUTBOUND = web.RequestKey("edge_outbound", tuple)


async def hold_inbound(
    netem: NetworkEmulator, request: web.BaseRequest, caller: Caller
) -> web.StreamResponse | None:
    """Hold the request for its inbound leg and note its outbound leg; a 504 when the
    link is partitioned (the request never reaches the handler), else None."""
    into, back = netem.legs(caller)
    try:
        await netem.cross(into, time.monotonic() - caller.transit_s, None)
    except EdgeError as error:
        return web.json_response({"error": error.message}, status=504)
    request[_OUTBOUND] = (back, reply_credit_s(caller))
    return None


async def hold_outbound(netem: NetworkEmulator, request: web.BaseRequest) -> None:
    """Hold the response for its outbound leg, if the request has one (once)."""
    leg = request.pop(_OUTBOUND, None)
    if leg is None:
        return
    back, credit_s = leg
    try:
        await netem.cross(back, time.monotonic() - credit_s, None)
    except EdgeError:
        log.info("reply to %s lost to a partition", back.to_region)
        raise


def install_netem(app: web.Application, netem: NetworkEmulator, *, inbound: bool = True) -> None:
    """Emulate the network for `app`: inbound leg before the handler, outbound before the
    response's headers leave (`on_response_prepare`), so a streamed body pays it too and
    a kept-alive connection is never held after its response was sent.

    With `inbound=False` the app's own middleware calls `hold_inbound` (one middleware
    fewer per request: aiohttp pays a call layer for each).
    """

    @web.middleware
    async def inbound_leg(request: web.Request, handler: Handler) -> web.StreamResponse:
        caller = caller_from_headers(request.headers.get)
        if caller is not None:
            refused = await hold_inbound(netem, request, caller)
            if refused is not None:
                return refused
        return await handler(request)

    async def outbound_leg(request: web.Request, response: web.StreamResponse) -> None:
        if _OUTBOUND in request:  # most requests carry no region: no coroutine for them
            await hold_outbound(netem, request)

    if inbound:
        app.middlewares.append(inbound_leg)
    app.on_response_prepare.append(outbound_leg)


async def start_site(
    app: web.Application | web.Server, host: str, port: int
) -> tuple[web.BaseRunner, int]:
    """Serve `app` (an application, or a low-level server) on host:port (0 = any free
    port); returns the runner and the bound port.

    HTTPS when the process has TLS on; client certificates as its `http_client_cert`.
    """
    tls = process_tls()
    runner: web.BaseRunner
    if isinstance(app, web.Server):
        runner = web.ServerRunner(app, handle_signals=False)
    else:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner,
        host,
        port,
        reuse_address=True,
        reuse_port=False,
        ssl_context=tls.server_ssl_context() if tls is not None else None,
    )
    await site.start()
    addresses = runner.addresses
    if not addresses:
        raise OSError(f"HTTP server did not bind {host}:{port}")
    return runner, int(addresses[0][1])


def origin_session(connections_max: int) -> aiohttp.ClientSession:
    """A client session for calls to the origin application (HTTPS + client cert with TLS)."""
    tls = process_tls()
    if tls is None:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections_max, enable_cleanup_closed=True)
        )
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections_max, enable_cleanup_closed=True, ssl=tls.client_ssl_context()
        ),
    )
