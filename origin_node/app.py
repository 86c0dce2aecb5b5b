"""The origin application over HTTP: what workers at the edge call (and cache).

Deterministic data (orders, users, products, stores, deals, page templates), an auth
server (token validation, JWKS, token issue for `edgectl token issue`) and pages for the
A/B test and middleware examples. Every request is counted in
`edge_origin_http_requests_total{route, code}`, so a test can prove that a response
served from a PoP's cache never reached the origin.
"""

from __future__ import annotations

import hmac
import json
import random
import time
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgepop.http import Handler, install_netem
from edgepop.metrics import NodeChildren, OriginMetrics
from edgepop.netem import NetworkEmulator

ISSUER = "https://auth.example.com/"
AUDIENCE = "https://api.example.com/"
TOKEN_TTL_S_DEFAULT = 3600
TOKEN_TTL_S_MAX = 30 * 86400
DATA_SEED = 20261127
KEY_IDS = {"RS256": "edgepop-rs256-1", "ES256": "edgepop-es256-1"}

PAGE_TEMPLATE = """<!doctype html>
<html lang="{{LANGUAGE}}">
<head><title>edgepop shop</title></head>
<body>
<header>{{GREETING}}! Prices in {{CURRENCY}}. Support: {{LOCAL_PHONE}}</header>
{{PRIVACY_BANNER}}
<main><h1>Welcome to the edgepop shop</h1></main>
</body>
</html>
"""


def _dataset() -> dict[str, Any]:
    rng = random.Random(DATA_SEED)
    users = [
        {"id": index, "name": f"user-{index:03d}", "email": f"user-{index:03d}@example.com"}
        for index in range(1, 21)
    ]
    products = {
        index: {
            "id": index,
            "name": f"product-{index:03d}",
            "price_usd": round(rng.uniform(5, 500), 2),
            "stock": rng.randrange(0, 1000),
        }
        for index in range(1, 101)
    }
    orders = [
        {
            "id": index,
            "user_id": rng.randrange(1, 21),
            "product_id": rng.randrange(1, 101),
            "quantity": rng.randrange(1, 5),
        }
        for index in range(1, 51)
    ]
    stores = [
        {"id": 1, "city": "New York", "latitude": 40.75, "longitude": -73.99},
        {"id": 2, "city": "Boston", "latitude": 42.36, "longitude": -71.06},
        {"id": 3, "city": "London", "latitude": 51.51, "longitude": -0.12},
        {"id": 4, "city": "Paris", "latitude": 48.86, "longitude": 2.35},
        {"id": 5, "city": "Frankfurt", "latitude": 50.11, "longitude": 8.68},
        {"id": 6, "city": "Tokyo", "latitude": 35.68, "longitude": 139.77},
        {"id": 7, "city": "Osaka", "latitude": 34.69, "longitude": 135.50},
        {"id": 8, "city": "Seoul", "latitude": 37.57, "longitude": 126.98},
        {"id": 9, "city": "Sydney", "latitude": -33.87, "longitude": 151.21},
        {"id": 10, "city": "Melbourne", "latitude": -37.81, "longitude": 144.96},
        {"id": 11, "city": "Mumbai", "latitude": 19.08, "longitude": 72.88},
        {"id": 12, "city": "Delhi", "latitude": 28.61, "longitude": 77.21},
        {"id": 13, "city": "Sao Paulo", "latitude": -23.55, "longitude": -46.63},
        {"id": 14, "city": "Rio de Janeiro", "latitude": -22.91, "longitude": -43.17},
        {"id": 15, "city": "Singapore", "latitude": 1.35, "longitude": 103.82},
    ]
    deals = {
        "US": ["Free shipping over $50", "10% off electronics"],
        "GB": ["Free next-day delivery in London", "15% off outerwear"],
        "JP": ["Golden Week bundle", "Free gift wrapping"],
        "AU": ["Summer sale: 20% off", "Free returns"],
        "IN": ["Diwali specials", "Cash on delivery"],
        "BR": ["Parcelamento sem juros", "Frete gratis"],
    }
    return {
        "users": users,
        "products": products,
        "orders": orders,
        "stores": stores,
        "deals": deals,
    }


class SigningKeys:
    """RS256 and ES256 keys of the auth server, made at first start, kept 0600."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.rsa = self._load(folder / "rs256.pem", lambda: rsa.generate_private_key(65537, 2048))
        self.ec = self._load(folder / "es256.pem", lambda: ec.generate_private_key(ec.SECP256R1()))

    @staticmethod
    def _load(path: Path, make: Any) -> Any:
        if path.exists():
            return serialization.load_pem_private_key(path.read_bytes(), password=None)
        key = make()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(pem)
        temporary.chmod(0o600)
        temporary.replace(path)
        return key

    def private(self, algorithm: str) -> Any:
        return self.rsa if algorithm == "RS256" else self.ec

    def jwks(self) -> dict[str, Any]:
        keys = []
        for algorithm, key in (("RS256", self.rsa), ("ES256", self.ec)):
            public = key.public_key()
            codec = (
                jwt.algorithms.RSAAlgorithm if algorithm == "RS256" else jwt.algorithms.ECAlgorithm
            )
            jwk = json.loads(codec.to_jwk(public))
            jwk.update({"kid": KEY_IDS[algorithm], "alg": algorithm, "use": "sig"})
            keys.append(jwk)
        return {"keys": keys}

    def issue(self, subject: str, algorithm: str, ttl_s: int) -> str:
        now = int(time.time())
        claims = {"sub": subject, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + ttl_s}
        return jwt.encode(
            claims, self.private(algorithm), algorithm=algorithm,
            headers={"kid": KEY_IDS[algorithm]},
        )  # fmt: skip

    def verify(self, token: str) -> dict[str, Any]:
        header = jwt.get_unverified_header(token)
        algorithm = header.get("alg")
        if algorithm not in KEY_IDS:
            raise jwt.InvalidTokenError(f"unsupported algorithm {algorithm!r}")
        claims: dict[str, Any] = jwt.decode(
            token,
            self.private(algorithm).public_key(),
            algorithms=[algorithm],
            audience=AUDIENCE,
            issuer=ISSUER,
        )
        return claims


def build_app(
    *, netem: NetworkEmulator, metrics: OriginMetrics, keys: SigningKeys, cluster_token: str
) -> web.Application:
    data = _dataset()
    requests_total = NodeChildren(metrics.origin_http_requests, metrics.node, metrics.region)

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        status = 500
        try:
            response: web.StreamResponse = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            requests_total(name, str(status)).inc()

    def bearer(request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else ""

    async def orders(request: web.Request) -> web.Response:
        return web.json_response({"orders": data["orders"]})

    async def users(request: web.Request) -> web.Response:
        return web.json_response({"users": data["users"]})

    async def products(request: web.Request) -> web.Response:
        raw = request.query.get("id", "")
        if not raw.isdigit() or int(raw) not in data["products"]:
            return web.json_response({"error": "no such product"}, status=404)
        return web.json_response(
            data["products"][int(raw)], headers={"Cache-Control": "public, max-age=30"}
        )

    async def stores(request: web.Request) -> web.Response:
        return web.json_response(
            {"stores": data["stores"]}, headers={"Cache-Control": "public, max-age=300"}
        )

    async def deals(request: web.Request) -> web.Response:
        country = request.query.get("country", "US").upper()
        return web.json_response(
            {"country": country, "deals": data["deals"].get(country, [])},
            headers={"Cache-Control": "public, max-age=60", "Vary": "Accept-Language"},
        )

    async def validate(request: web.Request) -> web.Response:
        try:
            claims = keys.verify(bearer(request))
        except jwt.InvalidTokenError as error:
            return web.json_response({"valid": False, "error": str(error)}, status=403)
        return web.json_response({"valid": True, "sub": claims.get("sub")})

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks(), headers={"Cache-Control": "public, max-age=300"})

    async def issue(request: web.Request) -> web.Response:
        if not hmac.compare_digest(bearer(request).encode(), cluster_token.encode()):
            return web.json_response({"error": "needs the cluster token"}, status=401)
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "the body must be JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "the body must be a JSON object"}, status=400)
        subject = body.get("sub")
        algorithm = body.get("alg", "RS256")
        ttl_s = body.get("ttl_s", TOKEN_TTL_S_DEFAULT)
        if not isinstance(subject, str) or not subject or algorithm not in KEY_IDS:
            return web.json_response({"error": "give sub and alg RS256|ES256"}, status=400)
        if (
            not isinstance(ttl_s, int)
            or isinstance(ttl_s, bool)
            or not 1 <= ttl_s <= TOKEN_TTL_S_MAX
        ):
            return web.json_response(
                {"error": f"ttl_s must be an integer within 1..{TOKEN_TTL_S_MAX}"}, status=400
            )
        return web.json_response({"token": keys.issue(subject, algorithm, ttl_s)})

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE_TEMPLATE,
            content_type="text/html",
            headers={"Cache-Control": "public, max-age=60", "Vary": "Accept-Language"},
        )

    async def checkout(request: web.Request) -> web.Response:
        return web.Response(text="<h1>Checkout (control)</h1>", content_type="text/html")

    async def checkout_v2(request: web.Request) -> web.Response:
        return web.Response(text="<h1>Checkout v2 (variant)</h1>", content_type="text/html")

    async def china(request: web.Request) -> web.Response:
        return web.Response(
            text=f"<h1>China site: {request.match_info['tail']}</h1>", content_type="text/html"
        )

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"origin": True, "method": request.method, "path": request.path})

    middlewares: list[Any] = [count]
    app = web.Application(middlewares=middlewares)
    install_netem(app, netem)
    app.router.add_get("/api/v1/orders", orders)
    app.router.add_get("/api/v1/users", users)
    app.router.add_get("/api/products", products)
    app.router.add_get("/api/stores", stores)
    app.router.add_get("/api/deals", deals)
    app.router.add_post("/auth/validate", validate)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.router.add_post("/auth/token", issue)
    app.router.add_get("/pages/home.html", page)
    app.router.add_get("/checkout", checkout)
    app.router.add_get("/checkout-v2/checkout", checkout_v2)
    app.router.add_get("/cn/{tail:.*}", china)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app
