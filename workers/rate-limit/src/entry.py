"""The seed's rate limiter: exact counts, because one object owns each client's window."""

from workers import Response, WorkerEntrypoint


def client_key(request) -> str:
    return request.headers.get("X-Client-Id") or request.headers.get("CF-Connecting-IP", "anon")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        env = self.env
        key = client_key(request)
        limiter = env.LIMITER.get(env.LIMITER.idFromName(key))
        verdict = await limiter.check(key=key, limit=int(env.LIMIT), window_s=float(env.WINDOW_S))
        headers = {
            "X-RateLimit-Limit": str(verdict["limit"]),
            "X-RateLimit-Remaining": str(verdict["remaining"]),
            "X-RateLimit-Reset": verdict["reset_at_iso"],
        }
        if not verdict["allowed"]:
            headers["Retry-After"] = str(verdict["retry_after_s"])
            return Response("Rate limit exceeded", status=429, headers=headers)
        return Response("OK", headers=headers)
