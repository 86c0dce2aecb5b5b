"""Benchmark worker: a fixed reply; each deploy appends a marker so it is a new version."""

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response.json({"hello": request.cf.get("colo", "")})
