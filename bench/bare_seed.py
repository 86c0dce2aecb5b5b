"""Bare aiohttp doing each seed worker's hot path: the baseline of the `seed-workers` bench.

One aiohttp server dispatching on `Host` to one handler per seed worker
(workers/<name>/src/entry.py): the worker's own logic, written for plain aiohttp, with
each platform service replaced by its nearest bare equivalent, so that the ratio to the
worker at a PoP isolates what the PoP's ingress and worker runtime cost:

- `fetch("http://origin/...")` -> the same request on one kept aiohttp session to the
  origin application (the connection limit a PoP's session has);
- a hit in the PoP's HTTP cache -> an in-process dict kept for the origin's max-age;
- a KV read -> one LMDB get (a KV write -> an LMDB put);
- a Durable Object call -> `Pop.ObjectCall` over one gRPC channel to the PoP, which
  runs the built-in RateLimiter there as the worker's call does;
- an analytics data point -> a counter in a dict.

The worker's vars come from its wrangler.jsonc and its `request.cf` from `--cf-json` (the
PoP's region). Access log off, the default asyncio loop, one process: as at the PoP. Run
as `python -m bench.bare_seed --lmdb DIR --origin HOST:PORT --pop-grpc HOST:PORT
--cf-json JSON`; it prints `PORT <n>` once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from zoneinfo import ZoneInfo

import aiohttp
import grpc
import json5
import jwt
import lmdb
from aiohttp import web
from multidict import CIMultiDict

from bench.bare_http import ChildServer, serve_handlers
from edge.v1 import objects_pb2, pop_pb2_grpc
from edgepop.lifecycle import run_on_node_loop

SEED_DIR = Path(__file__).resolve().parents[1] / "workers"
MAP_BYTES = 64 * 1024 * 1024
ORIGIN_CONNECTIONS_MAX = 256  # a PoP's origin session (pop_node/workers/runtime.py)
CALL_TIMEOUT_S = 10.0
# What a PoP drops from an origin response before handing it to the worker.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
)
# The seed workers' constants (their entry modules).
AB_COOKIE = "experiment-checkout-v2"
AB_COOKIE_MAX_AGE_S = 2592000
API_ROUTES = {"/api/v1/orders": "ORDER_SERVICE_URL", "/api/v1/users": "USER_SERVICE_URL"}
GOOD_BOTS = re.compile(r"googlebot|bingbot|duckduckbot|applebot|slurp", re.IGNORECASE)
BOTS = re.compile(r"bot|crawler|spider|scraper|curl-bot|python-requests", re.IGNORECASE)
CURRENCY = {"US": "USD", "GB": "GBP", "JP": "JPY", "AU": "AUD", "IN": "INR", "BR": "BRL",
            "DE": "EUR", "FR": "EUR", "CN": "CNY"}  # fmt: skip
LANGUAGE = {"US": "en", "GB": "en", "JP": "ja", "AU": "en", "IN": "hi", "BR": "pt",
            "DE": "de", "FR": "fr", "CN": "zh"}  # fmt: skip
SUPPORT_PHONE = {"US": "+1-800-123-4567", "GB": "+44-20-7946-0000", "JP": "+81-3-1234-5678",
                 "AU": "+61-2-9876-5432", "IN": "+91-22-1234-5678",
                 "BR": "+55-11-1234-5678"}  # fmt: skip
GREETINGS = {
    "en": ("Good morning", "Good afternoon", "Good evening"),
    "ja": ("おはようございます", "こんにちは", "こんばんは"),
    "hi": ("सुप्रभात", "नमस्कार", "शुभ संध्या"),
    "pt": ("Bom dia", "Boa tarde", "Boa noite"),
    "de": ("Guten Morgen", "Guten Tag", "Guten Abend"),
    "fr": ("Bonjour", "Bon après-midi", "Bonsoir"),
    "zh": ("早上好", "下午好", "晚上好"),
}
GDPR_BANNER = '<div class="gdpr">We use cookies. <a href="/privacy">Manage consent</a></div>'
_MAX_AGE_RE = re.compile(r"(?:^|,)\s*(?:s-maxage|max-age)\s*=\s*(\d+)")

Handler = Callable[[web.Request], Awaitable[web.Response]]


def seed_vars(folder: str, seed_dir: Path = SEED_DIR) -> dict[str, str]:
    """A seed worker's `vars` from its wrangler.jsonc."""
    config = json5.loads((seed_dir / folder / "wrangler.jsonc").read_text())
    return {name: str(value) for name, value in (config.get("vars") or {}).items()}


def origin_path(url: str) -> str:
    """`http://origin/x?y` -> `/x?y`: the part of a worker's origin URL a bare client sends."""
    parsed = urlparse(url)
    return (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")


def max_age_s(cache_control: str) -> float:
    """The freshness a shared cache gives a response (0: do not keep)."""
    if any(word in cache_control for word in ("no-store", "private", "no-cache")):
        return 0.0
    match = _MAX_AGE_RE.search(cache_control)
    return float(match.group(1)) if match else 0.0


def bucket_cookie(header: str) -> str | None:
    for pair in header.split(";"):
        name, separator, value = pair.partition("=")
        if separator and name.strip() == AB_COOKIE:
            return value.strip().strip('"')
    return None


def bearer(header: str) -> str:
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def greeting(language: str, timezone: str) -> str:
    hour = datetime.now(ZoneInfo(timezone)).hour
    morning, afternoon, evening = GREETINGS.get(language, GREETINGS["en"])
    return morning if 5 <= hour < 12 else afternoon if 12 <= hour < 18 else evening


class SeedHandlers:
    """The six hot paths, by the `Host` each worker's route names."""

    def __init__(self, env: lmdb.Environment, origin: str, pop_grpc: str, cf: dict[str, Any]):
        self.env = env
        self.origin = f"http://{origin}"
        self.pop_grpc = pop_grpc
        self.cf = cf
        self.vars = {name: seed_vars(name) for name in ("ab-test", "api-router", "jwt-auth",
                     "middleware", "personalize", "rate-limit")}  # fmt: skip
        self.session: aiohttp.ClientSession | None = None
        self.channel: grpc.aio.Channel | None = None
        self.pop: pop_pb2_grpc.PopStub | None = None
        self.cache: dict[str, tuple[float, int, CIMultiDict[str], bytes]] = {}
        self.analytics: Counter[tuple[str, str]] = Counter()
        self.jwks_parsed: dict[str, dict[str, jwt.PyJWK]] = {}
        self.hosts: dict[str, Handler] = {
            "shop.example.com": self.ab_test,
            "api.example.com": self.api_router,
            "auth.example.com": self.jwt_auth,
            "middleware.example.com": self.middleware,
            "www.example.com": self.personalize,
            "limited.example.com": self.rate_limit,
        }

    async def open(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=ORIGIN_CONNECTIONS_MAX),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S),
        )
        self.channel = grpc.aio.insecure_channel(self.pop_grpc)
        self.pop = pop_pb2_grpc.PopStub(self.channel)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.channel is not None:
            await self.channel.close()

    async def handle(self, request: web.Request) -> web.Response:
        handler = self.hosts.get(request.host.split(":", 1)[0])
        if handler is None:
            return web.Response(status=404, text="no such host")
        return await handler(request)

    # -- the platform's services, bare --------------------------------------------------

    async def origin_request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, CIMultiDict[str], bytes]:
        assert self.session is not None
        async with self.session.request(method, self.origin + path, headers=headers) as upstream:
            body = await upstream.read()
            kept = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
            )
            return upstream.status, kept, body

    async def cached_get(self, path: str) -> tuple[int, CIMultiDict[str], bytes]:
        """A GET kept for the origin's max-age, as the PoP's cache keeps it."""
        entry = self.cache.get(path)
        now = time.time()
        if entry is not None and entry[0] > now:
            return entry[1], entry[2], entry[3]
        status, headers, body = await self.origin_request("GET", path)
        ttl = max_age_s(headers.get("Cache-Control", ""))
        if status == 200 and ttl > 0:
            self.cache[path] = (now + ttl, status, headers, body)
        return status, headers, body

    def kv_get(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            value: bytes | None = txn.get(key.encode())
        return value

    def kv_put(self, key: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), value)

    # -- ab-test: one proxied GET to the control or variant page ------------------------

    async def ab_test(self, request: web.Request) -> web.Response:
        env = self.vars["ab-test"]
        bucket = bucket_cookie(request.headers.get("Cookie", ""))
        if bucket not in ("control", "variant"):
            bucket = "variant" if random.random() < float(env["VARIANT_SHARE"]) else "control"
        url = env["VARIANT_URL"] if bucket == "variant" else env["CONTROL_URL"]
        status, headers, body = await self.origin_request("GET", origin_path(url))
        headers.add("X-Experiment-Bucket", bucket)
        headers.add(
            "Set-Cookie",
            f"{AB_COOKIE}={bucket}; Path=/; Max-Age={AB_COOKIE_MAX_AGE_S}; SameSite=Lax",
        )
        self.analytics[(bucket, request.path)] += 1
        return web.Response(body=body, status=status, headers=headers)

    # -- api-router: the token's cache entry (LMDB), then one proxied GET ---------------

    async def api_router(self, request: web.Request) -> web.Response:
        env = self.vars["api-router"]
        token = bearer(request.headers.get("Authorization", ""))
        if not token:
            return web.Response(status=401, text="Unauthorized")
        cache_key = "token:" + hashlib.sha256(token.encode()).hexdigest()
        if not self.kv_get(cache_key):
            status, _, _ = await self.origin_request(
                "POST",
                origin_path(env["AUTH_SERVICE_URL"]).rstrip("/") + "/auth/validate",
                {"Authorization": f"Bearer {token}"},
            )
            if status != 200:
                return web.Response(status=403, text="Invalid token")
            self.kv_put(cache_key, b"valid")
        path = request.rel_url.raw_path
        service = API_ROUTES.get(path)
        if service is None:
            return web.Response(status=404, text="Not Found")
        status, headers, body = await self.origin_request(
            "GET",
            origin_path(env[service]).rstrip("/") + path,
            {"Authorization": request.headers["Authorization"]},
        )
        return web.Response(body=body, status=status, headers=headers)

    # -- jwt-auth: the JWKS from LMDB, then the token verified --------------------------

    def jwt_keys(self, jwks_text: str) -> dict[str, jwt.PyJWK]:
        digest = hashlib.sha256(jwks_text.encode()).hexdigest()
        if digest not in self.jwks_parsed:
            self.jwks_parsed.clear()
            self.jwks_parsed[digest] = {
                jwk["kid"]: jwt.PyJWK(jwk) for jwk in json.loads(jwks_text)["keys"]
            }
        return self.jwks_parsed[digest]

    async def jwt_auth(self, request: web.Request) -> web.Response:
        env = self.vars["jwt-auth"]
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return web.json_response({"error": "missing bearer token"}, status=401)
        cached = self.kv_get("jwks")
        if cached is None:
            _, _, body = await self.origin_request("GET", origin_path(env["JWKS_URL"]))
            self.kv_put("jwks", body)
            cached = body
        keys = self.jwt_keys(cached.decode())
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid not in keys:
                raise jwt.InvalidTokenError(f"unknown key id {kid!r}")
            key = keys[kid]
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=env["AUDIENCE"],
                issuer=env["ISSUER"],
            )
        except (jwt.PyJWTError, TypeError, ValueError) as error:
            return web.json_response({"error": f"invalid token: {error}"}, status=401)
        return web.json_response(
            {"authenticated": True, "sub": claims["sub"], "colo": self.cf.get("colo")}
        )

    # -- middleware: the bot check, then one proxied GET --------------------------------

    async def middleware(self, request: web.Request) -> web.Response:
        env = self.vars["middleware"]
        agent = request.headers.get("User-Agent", "")
        if BOTS.search(agent) and not GOOD_BOTS.search(agent):
            return web.Response(status=403, text="Forbidden")
        path = request.rel_url.raw_path or "/"
        if self.cf.get("country") == "CN" and not path.startswith("/cn/"):
            path = "/cn" + path
        query = request.rel_url.raw_query_string
        status, headers, body = await self.origin_request(
            "GET",
            origin_path(env["ORIGIN_URL"]).rstrip("/") + path + (f"?{query}" if query else ""),
        )
        headers.add("X-Edge-Path", path)
        return web.Response(body=body, status=status, headers=headers)

    # -- personalize: the page template from the cache, filled in -----------------------

    async def personalize(self, request: web.Request) -> web.Response:
        env = self.vars["personalize"]
        country = self.cf.get("country") or "US"
        language = LANGUAGE.get(country, "en")
        _, _, template = await self.cached_get(origin_path(env["TEMPLATE_URL"]))
        html = (
            template.decode()
            .replace("{{CURRENCY}}", CURRENCY.get(country, "USD"))
            .replace("{{LANGUAGE}}", language)
            .replace("{{GREETING}}", greeting(language, self.cf.get("timezone") or "UTC"))
            .replace("{{LOCAL_PHONE}}", SUPPORT_PHONE.get(country, "+1-800-123-4567"))
            .replace("{{PRIVACY_BANNER}}", GDPR_BANNER if self.cf.get("is_eu_country") else "")
        )
        return web.Response(
            body=html.encode(),
            headers={
                "Content-Type": "text/html; charset=utf-8",
                "Cache-Control": "public, max-age=60",
                "Vary": "Accept-Language",
            },
        )

    # -- rate-limit: one RateLimiter.check through the PoP ------------------------------

    async def rate_limit(self, request: web.Request) -> web.Response:
        env = self.vars["rate-limit"]
        assert self.pop is not None
        key = (
            request.headers.get("X-Client-Id") or request.headers.get("CF-Connecting-IP") or "anon"
        )
        args = {"key": key, "limit": int(env["LIMIT"]), "window_s": float(env["WINDOW_S"])}
        response = await self.pop.ObjectCall(
            objects_pb2.ObjectCallRequest(
                namespace="RateLimiter", name=key, method="check", args_json=json.dumps(args)
            ),
            timeout=CALL_TIMEOUT_S,
        )
        verdict = json.loads(response.result_json)
        headers = {
            "X-RateLimit-Limit": str(verdict["limit"]),
            "X-RateLimit-Remaining": str(verdict["remaining"]),
            "X-RateLimit-Reset": verdict["reset_at_iso"],
        }
        if not verdict["allowed"]:
            headers["Retry-After"] = str(verdict["retry_after_s"])
            return web.Response(status=429, text="Rate limit exceeded", headers=headers)
        return web.Response(text="OK", headers=headers)


async def serve(args: argparse.Namespace) -> None:
    await serve_handlers(
        args.lmdb,
        args.host,
        args.port,
        lambda env: SeedHandlers(env, args.origin, args.pop_grpc, json.loads(args.cf_json)),
    )


class BareSeedServer(ChildServer):
    """The bare seed-worker server as a child process."""

    def __init__(
        self,
        directory: Path,
        origin: str,
        pop_grpc: str,
        cf: dict[str, Any],
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(
            [
                sys.executable, "-m", "bench.bare_seed", "--host", host, "--lmdb", str(directory),
                "--origin", origin, "--pop-grpc", pop_grpc, "--cf-json", json.dumps(cf),
            ],
            host,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.bare_seed", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lmdb", type=Path, required=True, help="LMDB directory (created)")
    parser.add_argument("--origin", required=True, help="the origin application's HTTP address")
    parser.add_argument("--pop-grpc", required=True, help="the PoP's gRPC address (objects)")
    parser.add_argument("--cf-json", default="{}", help="the `request.cf` of the PoP's region")
    run_on_node_loop(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
