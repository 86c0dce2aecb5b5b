"""The seed's JWT auth: verify tokens at the edge, saving the round trip to us-east-1.

The JWKS comes from the origin once and is cached in KV for 300 s (and the parsed keys in
this module, per JWKS content). `edgectl token issue --sub NAME` prints a valid token.
"""

import hashlib
import json

import jwt

from workers import Response, WorkerEntrypoint, fetch

JWKS_CACHE_TTL_S = 300
_parsed: dict[str, dict[str, jwt.PyJWK]] = {}


async def get_jwks(env, ctx) -> str:
    cached = await env.JWKS_CACHE.get("jwks")
    if cached:
        return cached
    response = await fetch(env.JWKS_URL)
    text = await response.text()
    ctx.waitUntil(env.JWKS_CACHE.put("jwks", text, expirationTtl=JWKS_CACHE_TTL_S))
    return text


def keys_of(jwks_text: str) -> dict[str, jwt.PyJWK]:
    digest = hashlib.sha256(jwks_text.encode()).hexdigest()
    if digest not in _parsed:
        _parsed.clear()
        _parsed[digest] = {jwk["kid"]: jwt.PyJWK(jwk) for jwk in json.loads(jwks_text)["keys"]}
    return _parsed[digest]


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        env = self.env
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return Response.json({"error": "missing bearer token"}, status=401)
        keys = keys_of(await get_jwks(env, self.ctx))
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid not in keys:
                raise jwt.InvalidTokenError(f"unknown key id {kid!r}")
            key = keys[kid]
            # The key decides the algorithm, never the token's header (algorithm confusion).
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=env.AUDIENCE,
                issuer=env.ISSUER,
            )
        except (jwt.PyJWTError, TypeError, ValueError) as error:
            return Response.json({"error": f"invalid token: {error}"}, status=401)
        return Response.json(
            {"authenticated": True, "sub": claims["sub"], "colo": request.cf.get("colo")}
        )
