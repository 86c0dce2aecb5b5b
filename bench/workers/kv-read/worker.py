"""Benchmark worker: answer every request with one value read from KV at this PoP."""

from edgepop import worker_api as edge


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    value = await env.DATA.get(env.KEY, "bytes")
    if value is None:
        return edge.Response("missing", status=404)
    return edge.Response(value)
