"""The seed's api-router: auth at the edge, then route to the origin services.

- no bearer token: 401 at the edge (the origin never sees the request);
- a token not seen before: validated by the origin (one extra round trip), then cached in
  KV for 300 s; the cache write happens after the response (ctx.waitUntil), so the first
  call pays only the validation round trip;
- a cached token: checked against the local KV replica, no origin round trip for auth;
- /api/v1/orders and /api/v1/users are proxied to the origin; anything else is 404.
"""

import hashlib
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, fetch

TOKEN_CACHE_TTL_S = 300
ROUTES = {"/api/v1/orders": "ORDER_SERVICE_URL", "/api/v1/users": "USER_SERVICE_URL"}


def bearer(request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def validate_with_origin(token: str, env) -> bool:
    response = await fetch(
        f"{env.AUTH_SERVICE_URL}/auth/validate",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status == 200


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        env = self.env
        token = bearer(request)
        if not token:
            return Response("Unauthorized", status=401)
        # KV keys stop at 512 bytes and a JWT is longer: cache under its hash.
        cache_key = "token:" + hashlib.sha256(token.encode()).hexdigest()
        if not await env.AUTH_CACHE.get(cache_key):
            if not await validate_with_origin(token, env):
                return Response("Invalid token", status=403)
            self.ctx.waitUntil(
                env.AUTH_CACHE.put(cache_key, "valid", expirationTtl=TOKEN_CACHE_TTL_S)
            )
        path = urlparse(request.url).path
        service = ROUTES.get(path)
        if service is None:
            return Response("Not Found", status=404)
        upstream = await fetch(
            getattr(env, service) + path,
            headers={"Authorization": request.headers["Authorization"]},
        )
        return Response(await upstream.bytes(), status=upstream.status, headers=upstream.headers)
