"""Benchmark worker: answer every request with one value read from KV at this PoP."""

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        value = await self.env.DATA.get(self.env.KEY, "bytes")
        if value is None:
            return Response("missing", status=404)
        return Response(value)
