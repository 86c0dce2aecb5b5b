"""Benchmark worker: increment one Durable Object Counter per request, answer the count."""

from edgepop import worker_api as edge


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    counter = env.COUNTER.get(env.COUNTER.id_from_name(env.OBJECT))
    value = await counter.increment(1)
    return edge.Response(str(value))
