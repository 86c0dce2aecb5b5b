"""Benchmark worker: increment one Durable Object Counter per request, answer the count."""

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        counter = self.env.COUNTER.get(self.env.COUNTER.idFromName(self.env.OBJECT))
        return Response(str(await counter.increment(1)))
