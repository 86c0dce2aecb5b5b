"""Benchmark worker: a fixed reply; each deploy appends a marker so it is a new version."""

from edgepop import worker_api as edge


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    return edge.Response.json({"hello": request.cf.get("colo", "")})
