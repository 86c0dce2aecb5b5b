"""HTTP wiring shared by the origin application and PoP ingress (aiohttp).

The same network emulation as gRPC: a request that says where it comes from (headers
`x-edge-region`, `x-edge-node`, `x-edge-sent-at`) is held for the inbound leg before its
handler and the outbound leg after, at this server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edgepop.errors import EdgeError
from edgepop.netem import NetworkEmulator, caller_from_metadata

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def netem_middleware(netem: NetworkEmulator) -> Any:
    """An aiohttp middleware (typed Any: aiohttp's Middleware protocol rejects closures)."""

    @web.middleware
    async def emulate(request: web.Request, handler: Handler) -> web.StreamResponse:
        caller = caller_from_metadata(
            [(key.lower(), value) for key, value in request.headers.items()]
        )
        if caller is None:
            return await handler(request)
        inbound, outbound = netem.legs(caller)
        try:
            await netem.cross(inbound, time.monotonic() - caller.transit_s, None)
        except EdgeError as error:
            # A partitioned link: the request never reaches the handler.
            return web.json_response({"error": error.message}, status=504)
        response = await handler(request)
        try:
            await netem.cross(outbound, time.monotonic() - caller.transit_s, None)
        except EdgeError as error:
            return web.json_response({"error": error.message}, status=504)
        return response

    return emulate


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0 = any free port); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, reuse_port=False)
    await site.start()
    addresses = runner.addresses
    if not addresses:
        raise OSError(f"HTTP server did not bind {host}:{port}")
    return runner, int(addresses[0][1])
