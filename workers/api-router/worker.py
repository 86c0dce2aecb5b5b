"""The seed's api-router: auth at the edge, then route to the origin services.

- no bearer token: 401 at the edge (the origin never sees the request);
- a token not seen before: validated by the origin (one extra round trip), then cached in
  KV for 300 s; the cache write happens after the response (ctx.wait_until), so the first
  call pays only the validation round trip;
- a cached token: checked against the local KV replica, no origin round trip for auth;
- /api/v1/orders and /api/v1/users are proxied to the origin; anything else is 404.
"""

import hashlib

from edgepop import worker_api as edge

TOKEN_CACHE_TTL_S = 300
ROUTES = {"/api/v1/orders": "ORDER_SERVICE_URL", "/api/v1/users": "USER_SERVICE_URL"}


def bearer(request: edge.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def validate_with_origin(token: str, env) -> bool:
    response = await edge.fetch(
        f"{env.AUTH_SERVICE_URL}/auth/validate",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    return response.status == 200


async def fetch(request: edge.Request, env, ctx) -> edge.Response:
    token = bearer(request)
    if not token:
        return edge.Response("Unauthorized", status=401)
    # KV keys stop at 512 bytes and a JWT is longer: cache under its hash.
    cache_key = "token:" + hashlib.sha256(token.encode()).hexdigest()
    if not await env.AUTH_CACHE.get(cache_key):
        if not await validate_with_origin(token, env):
            return edge.Response("Invalid token", status=403)
        ctx.wait_until(env.AUTH_CACHE.put(cache_key, "valid", expiration_ttl=TOKEN_CACHE_TTL_S))
    service = ROUTES.get(request.path)
    if service is None:
        return edge.Response("Not Found", status=404)
    upstream = await edge.fetch(
        getattr(env, service) + request.path,
        headers={"Authorization": request.headers["Authorization"]},
    )
    return edge.Response(upstream.body, status=upstream.status, headers=upstream.headers)
