"""The seed's six example workers end to end, over real HTTP, from several regions.

One module cluster: the origin in us-east-1 and PoPs in new-york, tokyo (two), frankfurt
(an EU country, for the GDPR banner) and shanghai (country CN, for the middleware's
rewrite), with the seed's delays. Users are simulated with `x-edge-region` at the PoP of
their region. The origin counts every request it serves by route
(`edge_origin_http_requests_total`), which is how a test proves the edge answered alone.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.seeds import replay
from tests.integration.workerclient import (
    DEPLOY_PROPAGATION_S_MAX,
    EXAMPLES,
    EXAMPLES_DIR,
    ClientsPerThread,
    EdgeClient,
    HttpResult,
    bundle,
    deploy,
    http_once,
    issue_token,
    kv_value,
    list_workers,
    module_cluster,
    node_metric,
    origin_requests,
    origin_signing_key_pem,
    paired_timing,
    table_tolerance_s,
    wait_loaded,
)

pytestmark = [pytest.mark.cluster, pytest.mark.timing]

FRANKFURT = {
    "name": "frankfurt",
    "latitude": 50.11,
    "longitude": 8.68,
    "pop_nodes": 1,
    "country": "DE",
    "city": "Frankfurt",
    "continent": "EU",
    "timezone": "Europe/Berlin",
    "colo": "FRA",
    "is_eu_country": True,
    "edge_rtt_ms": 5,
}
SHANGHAI = {
    "name": "shanghai",
    "latitude": 31.23,
    "longitude": 121.47,
    "pop_nodes": 1,
    "country": "CN",
    "city": "Shanghai",
    "continent": "AS",
    "timezone": "Asia/Shanghai",
    "colo": "PVG",
    "edge_rtt_ms": 6,
}
EXAMPLES_TOPOLOGY = {
    "regions": [
        {"name": "us-east-1"},
        {"name": "new-york", "pop_nodes": 1},
        {"name": "tokyo", "pop_nodes": 2},
        FRANKFURT,
        SHANGHAI,
    ]
}
REGIONS = ("new-york", "tokyo", "frankfurt", "shanghai")
COLOS = {"new-york": "EWR", "tokyo": "NRT", "frankfurt": "FRA", "shanghai": "PVG"}
ISSUER = "https://auth.example.com/"
AUDIENCE = "https://api.example.com/"
KIDS = {"RS256": "edgepop-rs256-1", "ES256": "edgepop-es256-1"}
TOKYO_ORIGIN_RTT_S = 0.170
TOKYO_EDGE_RTT_S = 0.008
VALIDATE_ROUTE = "/auth/validate"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module cluster with the six examples loaded at every PoP."""
    with module_cluster(tmp_path_factory, "examples", EXAMPLES_TOPOLOGY) as cluster:
        for example in EXAMPLES:
            deploy(cluster, EXAMPLES_DIR / example)
        for version in list_workers(cluster):
            wait_loaded(cluster, version.name, version.version, timeout=20)
        yield cluster


def user(cluster: Cluster, region: str, index: int = 1) -> EdgeClient:
    """A client in `region` talking to that region's PoP."""
    return EdgeClient(cluster.node(f"{region}-{index}").http_address, region)


def ask(cluster: Cluster, region: str, host: str, path: str = "/", **kwargs: Any) -> HttpResult:
    client = user(cluster, region)
    try:
        return client.request(host, path, **kwargs)
    finally:
        client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- api-router -----------------------------------------------------------------------------


def test_api_router_answers_401_403_404_and_proxies_from_every_region(edge: Cluster) -> None:
    token = issue_token(edge, unique("router"))
    origin = EdgeClient(edge.origin.http_address)
    try:
        expected_orders = origin.get("origin", "/api/v1/orders").json()
        expected_users = origin.get("origin", "/api/v1/users").json()
    finally:
        origin.close()
    for region in REGIONS:
        client = user(edge, region)
        try:
            missing = client.get("api.example.com", "/api/v1/orders")
            assert (missing.status, missing.text) == (401, "Unauthorized"), region
            wrong_scheme = client.get(
                "api.example.com", "/api/v1/orders", headers={"Authorization": f"Basic {token}"}
            )
            assert wrong_scheme.status == 401, region
            invalid = client.get(
                "api.example.com", "/api/v1/orders", headers=bearer(unique("not-a-jwt"))
            )
            assert (invalid.status, invalid.text) == (403, "Invalid token"), region
            orders = client.get("api.example.com", "/api/v1/orders", headers=bearer(token))
            assert orders.status == 200, (region, orders.text)
            assert orders.json() == expected_orders
            users = client.get("api.example.com", "/api/v1/users", headers=bearer(token))
            assert users.json() == expected_users
            unknown = client.get("api.example.com", "/api/v2/invoices", headers=bearer(token))
            assert (unknown.status, unknown.text) == (404, "Not Found"), region
        finally:
            client.close()


def test_api_router_from_tokyo_validates_a_new_token_once_then_checks_it_in_kv_at_the_edge(
    edge: Cluster,
) -> None:
    """First call with a new token: edge RTT + validation round trip + the proxied call
    (~348 ms). Once the KV write landed, calls skip validation: the origin's validation
    counter stands still and each call is one origin round trip (~170 ms) faster. No
    token: 401 at the edge RTT (~8 ms), and the origin sees nothing. Three new tokens,
    so that the first-call latency is a median too.

    Emulated time is held to the probe table's max(1 ms, 5%): the saving against the
    origin's 170 ms, and the 401's edge RTT against the same request sent from nowhere
    (which measures the PoP's and worker's own cost). Totals that include the origin's
    own work are bounded from below only: an emulated delay can never be skipped."""
    tokens = [issue_token(edge, unique("tokyo-user")) for _ in range(3)]
    client = user(edge, "tokyo")
    try:
        client.get("api.example.com", "/warm-the-connection")
        validations = origin_requests(edge, VALIDATE_ROUTE)
        proxied = origin_requests(edge, "/api/v1/orders")
        firsts = []
        for count, token in enumerate(tokens, start=1):
            first = client.get("api.example.com", "/api/v1/orders", headers=bearer(token))
            assert first.status == 200
            assert origin_requests(edge, VALIDATE_ROUTE) == validations + count
            assert origin_requests(edge, "/api/v1/orders") == proxied + count
            firsts.append(first.elapsed_s)
        first_s = statistics.median(firsts)
        first_target_s = TOKYO_EDGE_RTT_S + 2 * TOKYO_ORIGIN_RTT_S
        assert first_s >= first_target_s - table_tolerance_s(first_target_s), firsts

        for token in tokens:
            cache_key = "token:" + hashlib.sha256(token.encode()).hexdigest()
            poll_until(
                functools.partial(kv_value, edge, "tokyo-1", "auth-cache", cache_key),
                timeout=5,
                what="the token cached in KV at tokyo-1",
            )
            assert kv_value(edge, "tokyo-1", "auth-cache", cache_key) == b"valid"
        cached = [
            client.get("api.example.com", "/api/v1/orders", headers=bearer(token))
            for token in tokens
            for _ in range(2)
        ]
        assert all(result.status == 200 for result in cached)
        assert origin_requests(edge, VALIDATE_ROUTE) == validations + 3
        assert origin_requests(edge, "/api/v1/orders") == proxied + 3 + len(cached)
        cached_s = statistics.median(result.elapsed_s for result in cached)
        cached_target_s = TOKYO_EDGE_RTT_S + TOKYO_ORIGIN_RTT_S
        assert cached_s >= cached_target_s - table_tolerance_s(cached_target_s), cached_s
        saved = first_s - cached_s
        report = f"first {firsts}, cached median {cached_s}, saved {saved}"
        print(f"api-router from tokyo: {report}")
        assert abs(saved - TOKYO_ORIGIN_RTT_S) <= table_tolerance_s(TOKYO_ORIGIN_RTT_S), report
    finally:
        client.close()

    everything = origin_requests(edge)
    refused = paired_timing(
        edge.node("tokyo-1").http_address,
        "tokyo",
        "api.example.com",
        "/api/v1/orders",
        target_s=TOKYO_EDGE_RTT_S,
    )
    assert all(result.status == 401 for result in refused.delayed + refused.undelayed)
    assert origin_requests(edge) == everything
    print(f"api-router 401 from tokyo: {refused}")
    assert refused.adds(TOKYO_EDGE_RTT_S), f"{refused}"


# -- jwt-auth -------------------------------------------------------------------------------


def forge(
    edge: Cluster,
    *,
    algorithm: str = "RS256",
    key: Any = None,
    kid: str | None = None,
    **claims: Any,
) -> str:
    """A token signed with the origin's own key (or `key`), with the claims given."""
    now = int(time.time())
    payload = {"sub": "forged", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    payload.update(claims)
    signing_key = key if key is not None else origin_signing_key_pem(edge, algorithm)
    return jwt.encode(
        payload, signing_key, algorithm=algorithm, headers={"kid": kid or KIDS[algorithm]}
    )


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_jwt_auth_accepts_rs256_and_es256_tokens_from_every_region(edge: Cluster) -> None:
    tokens = {alg: issue_token(edge, f"alice-{alg.lower()}", alg) for alg in KIDS}
    for region in REGIONS:
        client = user(edge, region)
        try:
            for algorithm, token in tokens.items():
                result = client.get("auth.example.com", "/me", headers=bearer(token))
                assert result.status == 200, (region, algorithm, result.text)
                assert result.json() == {
                    "authenticated": True,
                    "sub": f"alice-{algorithm.lower()}",
                    "colo": COLOS[region],
                }
        finally:
            client.close()


def test_jwt_auth_verifies_at_the_edge_with_the_jwks_cached_in_kv(edge: Cluster) -> None:
    """Once the JWKS is in KV, a token check from Tokyo never leaves the PoP."""
    token = issue_token(edge, "edge-only", "ES256")
    client = user(edge, "tokyo")
    try:
        assert client.get("auth.example.com", "/me", headers=bearer(token)).status == 200
        jwks = poll_until(
            lambda: kv_value(edge, "tokyo-1", "jwks-cache", "jwks"), timeout=5, what="JWKS in KV"
        )
        assert {key["kid"] for key in json.loads(jwks)["keys"]} == set(KIDS.values())
    finally:
        client.close()
    everything = origin_requests(edge)
    timing = paired_timing(
        edge.node("tokyo-1").http_address,
        "tokyo",
        "auth.example.com",
        "/me",
        target_s=TOKYO_EDGE_RTT_S,
        headers=bearer(token),
    )
    assert all(result.status == 200 for result in timing.delayed + timing.undelayed)
    assert origin_requests(edge) == everything
    print(f"jwt-auth from tokyo: {timing}")
    assert timing.adds(TOKYO_EDGE_RTT_S), f"{timing}"


def test_jwt_auth_rejects_bad_tokens_with_401(edge: Cluster) -> None:
    other_key = rsa.generate_private_key(65537, 2048)
    valid = issue_token(edge, "mallory")
    header, payload, signature = valid.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    cases = {
        "no token": None,
        "not a JWT": "definitely-not-a-jwt",
        "another audience": forge(edge, aud="https://other.example.com/"),
        "another issuer": forge(edge, iss="https://evil.example.com/"),
        "no audience": forge(edge, aud=None),
        "expired RS256": forge(edge, exp=int(time.time()) - 120),
        "expired ES256": forge(edge, algorithm="ES256", exp=int(time.time()) - 120),
        "signed by another key with our kid": forge(edge, key=other_key),
        "unknown kid": forge(edge, kid="edgepop-rs256-2"),
        "payload changed after signing": ".".join(
            [header, _b64({**claims, "sub": "admin"}), signature]
        ),
        "alg none": ".".join(
            [_b64({"alg": "none", "typ": "JWT", "kid": KIDS["RS256"]}), payload, ""]
        ),
        "alg HS256 keyed with the public key": ".".join(
            [_b64({"alg": "HS256", "typ": "JWT", "kid": KIDS["RS256"]}), payload, signature]
        ),
    }
    client = user(edge, "frankfurt")
    try:
        for case, token in cases.items():
            headers = bearer(token) if token is not None else {}
            result = client.get("auth.example.com", "/me", headers=headers)
            assert result.status == 401, (case, result.status, result.text)
            assert "error" in result.json(), case
    finally:
        client.close()


def test_jwt_auth_answers_401_to_a_token_whose_alg_does_not_match_its_key(edge: Cluster) -> None:
    _, payload, signature = issue_token(edge, "confused").split(".")
    confused = ".".join(
        [_b64({"alg": "ES256", "typ": "JWT", "kid": KIDS["RS256"]}), payload, signature]
    )
    result = ask(edge, "new-york", "auth.example.com", "/me", headers=bearer(confused))
    assert result.status == 401, (result.status, result.text)


# -- ab-test ----------------------------------------------------------------------------------

COOKIE = "experiment-checkout-v2"
BODIES = {"control": "<h1>Checkout (control)</h1>", "variant": "<h1>Checkout v2 (variant)</h1>"}
COOKIE_RE = re.compile(rf"^{COOKIE}=(control|variant); Path=/; Max-Age=2592000; SameSite=Lax$")


def bucket_of(result: HttpResult) -> str:
    """The bucket a response assigned, after checking it is self-consistent."""
    assert result.status == 200, result.text
    [cookie] = result.header_all("Set-Cookie")
    match = COOKIE_RE.match(cookie)
    assert match, cookie
    bucket = match.group(1)
    assert result.header("X-Experiment-Bucket") == bucket
    assert result.text == BODIES[bucket]
    return bucket


def analytics_points(edge: Cluster, pop: str, bucket: str) -> float:
    return node_metric(
        edge,
        pop,
        "edge_analytics_data_points_total",
        worker="ab-test",
        dataset="checkout-experiment",
        index="checkout-experiment",
        blob=bucket,
    )


def test_ab_test_sets_a_30_day_lax_cookie_serves_the_bucket_and_counts_it(edge: Cluster) -> None:
    for region in ("new-york", "tokyo", "frankfurt"):
        pop = f"{region}-1"
        client = user(edge, region)
        try:
            before = {bucket: analytics_points(edge, pop, bucket) for bucket in BODIES}
            upstream = {
                "control": origin_requests(edge, "/checkout"),
                "variant": origin_requests(edge, "/checkout-v2/checkout"),
            }
            fresh = bucket_of(client.get("shop.example.com", "/checkout"))
            returning = [
                bucket_of(
                    client.get(
                        "shop.example.com", "/checkout", headers={"Cookie": f"{COOKIE}={fresh}"}
                    )
                )
                for _ in range(3)
            ]
            assert returning == [fresh] * 3, region
            # A client holding either cookie stays in that bucket.
            for bucket in BODIES:
                held = client.get(
                    "shop.example.com", "/checkout", headers={"Cookie": f"{COOKIE}={bucket}"}
                )
                assert bucket_of(held) == bucket
            # A forged bucket name is not trusted: the client gets a real bucket.
            assert (
                bucket_of(
                    client.get(
                        "shop.example.com", "/checkout", headers={"Cookie": f"{COOKIE}=admin"}
                    )
                )
                in BODIES
            )
            after = {bucket: analytics_points(edge, pop, bucket) for bucket in BODIES}
            assert sum(after.values()) - sum(before.values()) == 7
            assert after[fresh] - before[fresh] >= 5
            moved = {
                "control": origin_requests(edge, "/checkout") - upstream["control"],
                "variant": origin_requests(edge, "/checkout-v2/checkout") - upstream["variant"],
            }
            assert sum(moved.values()) == 7
            assert moved[fresh] >= 5
        finally:
            client.close()


def test_ab_test_splits_2000_fresh_clients_80_20_and_returning_clients_keep_their_bucket(
    edge: Cluster,
) -> None:
    """The test deploys its own build of the A/B worker first (the same code with one
    more var, so the same version every run): the PoP's draws restart from the
    cluster's seed when it goes live, and the 2,000 buckets (and a failure) replay for
    the seed in the message, whatever other tests drew before."""
    deployed = deploy(edge, bundle(EXAMPLES_DIR / "ab-test", vars={"DRAWS_FROM": "split-test"}))
    wait_loaded(edge, deployed.name, deployed.version, timeout=DEPLOY_PROPAGATION_S_MAX + 3)
    pop = edge.node("new-york-1").http_address
    clients = ClientsPerThread({pop: "new-york"})
    try:
        with ThreadPoolExecutor(16) as pool:
            buckets = list(
                pool.map(
                    lambda _: bucket_of(clients.get(pop).get("shop.example.com", "/checkout")),
                    range(2000),
                )
            )
            counts = Counter(buckets)
            share = counts["variant"] / len(buckets)
            print(f"A/B split: {dict(counts)}; {replay()}")
            assert abs(share - 0.20) <= 0.03, f"{counts}; {replay()}"
            # 100 of them come back (with their cookie) and stay where they were.
            returning = list(
                pool.map(
                    lambda bucket: bucket_of(
                        clients.get(pop).get(
                            "shop.example.com",
                            "/checkout",
                            headers={"Cookie": f"{COOKIE}={bucket}"},
                        )
                    ),
                    buckets[:100],
                )
            )
        assert returning == buckets[:100]
    finally:
        clients.close()


def test_ab_test_keeps_the_bucket_when_the_browser_also_sends_another_apps_cookie(
    edge: Cluster,
) -> None:
    header = f'prefs={{"theme":"dark"}}; {COOKIE}=variant'
    client = user(edge, "new-york")
    try:
        buckets = [
            bucket_of(client.get("shop.example.com", "/checkout", headers={"Cookie": header}))
            for _ in range(10)
        ]
    finally:
        client.close()
    assert buckets == ["variant"] * 10


# -- personalize ----------------------------------------------------------------------------

PAGE_EXPECTATIONS = {
    "new-york": ("USD", "en", "+1-800-123-4567", "America/New_York"),
    "tokyo": ("JPY", "ja", "+81-3-1234-5678", "Asia/Tokyo"),
    "frankfurt": ("EUR", "de", None, "Europe/Berlin"),
    "shanghai": ("CNY", "zh", None, "Asia/Shanghai"),
}
GREETINGS = {
    "en": ("Good morning", "Good afternoon", "Good evening"),
    "ja": ("おはようございます", "こんにちは", "こんばんは"),
    "de": ("Guten Morgen", "Guten Tag", "Guten Abend"),
    "zh": ("早上好", "下午好", "晚上好"),
}
GDPR_MARK = 'class="gdpr"'


def greetings_now(language: str, timezone: str) -> set[str]:
    """The greeting for the local hour (both, if the hour turns during the request)."""
    found = set()
    for offset_s in (-5, 0, 5):
        hour = datetime.fromtimestamp(time.time() + offset_s, ZoneInfo(timezone)).hour
        morning, afternoon, evening = GREETINGS[language]
        found.add(morning if 5 <= hour < 12 else afternoon if 12 <= hour < 18 else evening)
    return found


def test_personalize_fills_the_page_per_region_with_a_gdpr_banner_only_in_the_eu(
    edge: Cluster,
) -> None:
    for region, (currency, language, phone, timezone) in PAGE_EXPECTATIONS.items():
        page = ask(edge, region, "www.example.com", "/")
        assert page.status == 200, (region, page.text)
        assert page.header("Cache-Control") == "public, max-age=60"
        assert page.header("Vary") == "Accept-Language"
        assert (page.header("Content-Type") or "").startswith("text/html")
        html = page.text
        assert "{{" not in html, html
        assert f'<html lang="{language}">' in html
        assert f"Prices in {currency}." in html
        if phone is not None:
            assert f"Support: {phone}" in html
        header_line = re.search(r"<header>(.*)! Prices", html)
        assert header_line and header_line.group(1) in greetings_now(language, timezone), html
        assert (GDPR_MARK in html) is (region == "frankfurt"), region


def test_personalize_geo_follows_the_user_not_the_pop(edge: Cluster) -> None:
    """A user in Frankfurt served by a Tokyo PoP still gets euros and the banner."""
    client = EdgeClient(edge.node("tokyo-1").http_address, "frankfurt")
    try:
        page = client.get("www.example.com", "/")
    finally:
        client.close()
    assert "Prices in EUR." in page.text
    assert GDPR_MARK in page.text


def test_personalize_fetches_the_template_through_the_pop_cache(edge: Cluster) -> None:
    """After the first page at a PoP, the template comes from that PoP's cache: the
    origin's template counter stands still and pages come at edge latency."""
    client = user(edge, "tokyo", 2)
    try:
        client.get("www.example.com", "/")  # fills tokyo-2's cache if it was not yet
    finally:
        client.close()
    before = origin_requests(edge, "/pages/home.html")
    timing = paired_timing(
        edge.node("tokyo-2").http_address,
        "tokyo",
        "www.example.com",
        "/",
        target_s=TOKYO_EDGE_RTT_S,
    )
    pages = timing.delayed + timing.undelayed
    assert all(page.status == 200 for page in pages)
    assert origin_requests(edge, "/pages/home.html") == before
    print(f"personalize from tokyo: {timing}")
    assert timing.adds(TOKYO_EDGE_RTT_S), f"{timing}"
    assert node_metric(
        edge, "tokyo-2", "edge_worker_subrequests_total", worker="personalize", cache="hit"
    ) >= len(pages)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def test_personalize_api_returns_currency_language_three_nearest_stores_and_deals(
    edge: Cluster,
) -> None:
    origin = EdgeClient(edge.origin.http_address)
    try:
        stores = origin.get("origin", "/api/stores").json()["stores"]
        coordinates = {
            "new-york": (40.71, -74.01, "US", "New York"),
            "tokyo": (35.68, 139.69, "JP", "Tokyo"),
            "frankfurt": (50.11, 8.68, "DE", "Frankfurt"),
            "shanghai": (31.23, 121.47, "CN", "Shanghai"),
        }
        for region, (latitude, longitude, country, city) in coordinates.items():
            currency, language, _, _ = PAGE_EXPECTATIONS[region]
            result = ask(edge, region, "www.example.com", "/api/personalize")
            assert result.status == 200, (region, result.text)
            assert result.header("Content-Type") == "application/json"
            answer = result.json()
            assert (answer["currency"], answer["language"]) == (currency, language), region
            nearest = answer["nearest_stores"]
            assert len(nearest) == 3
            distances = [store["distance_km"] for store in nearest]
            assert distances == sorted(distances), region
            expected = sorted(
                stores,
                key=lambda s: haversine_km(latitude, longitude, s["latitude"], s["longitude"]),
            )[:3]
            assert [s["city"] for s in nearest] == [s["city"] for s in expected], region
            for store in nearest:
                want = haversine_km(latitude, longitude, store["latitude"], store["longitude"])
                assert abs(store["distance_km"] - want) <= 0.1
            deals = origin.get("origin", f"/api/deals?country={country}").json()["deals"]
            assert answer["deals"] == deals, region
            assert answer["greeting"].endswith(f", {city}")
    finally:
        origin.close()
    assert [
        s["city"]
        for s in ask(edge, "frankfurt", "www.example.com", "/api/personalize").json()[
            "nearest_stores"
        ]
    ] == [
        "Frankfurt",
        "Paris",
        "London",
    ]


# -- rate-limit -----------------------------------------------------------------------------


def test_rate_limit_allows_exactly_the_limit_then_429_with_retry_after_everywhere(
    edge: Cluster,
) -> None:
    """120 requests for one client from 8 threads over both Tokyo PoPs: exactly 100 pass,
    each with a distinct X-RateLimit-Remaining; the rest, and the same client arriving in
    Frankfurt and Shanghai, get 429 with Retry-After. Another client is not affected."""
    client_id = unique("client")
    tokyo = [edge.node(f"tokyo-{index}").http_address for index in (1, 2)]
    clients = ClientsPerThread({address: "tokyo" for address in tokyo})
    headers = {"X-Client-Id": client_id}
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(
                pool.map(
                    lambda n: clients.get(tokyo[n % 2]).get(
                        "limited.example.com", "/", headers=headers
                    ),
                    range(120),
                )
            )
    finally:
        clients.close()
    allowed = [r for r in results if r.status == 200]
    limited = [r for r in results if r.status == 429]
    assert (len(allowed), len(limited)) == (100, 20), Counter(r.status for r in results)
    assert sorted(int(r.header("X-RateLimit-Remaining") or -1) for r in allowed) == list(range(100))
    now = datetime.now(UTC)
    for result in [*limited, ask(edge, "frankfurt", "limited.example.com", headers=headers)]:
        assert result.status == 429
        assert result.text == "Rate limit exceeded"
        assert result.header("X-RateLimit-Limit") == "100"
        assert result.header("X-RateLimit-Remaining") == "0"
        assert 1 <= int(result.header("Retry-After") or 0) <= 60
        reset = datetime.fromisoformat(
            (result.header("X-RateLimit-Reset") or "").replace("Z", "+00:00")
        )
        assert now.timestamp() - 1 < reset.timestamp() <= now.timestamp() + 61
    assert ask(edge, "shanghai", "limited.example.com", headers=headers).status == 429
    other = ask(edge, "frankfurt", "limited.example.com", headers={"X-Client-Id": unique("other")})
    assert (other.status, other.text) == (200, "OK")
    assert other.header("X-RateLimit-Remaining") == "99"


# -- middleware -----------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["new-york", "tokyo"])
def test_middleware_blocks_bad_bots_at_the_edge_and_lets_good_bots_and_people_through(
    edge: Cluster, region: str
) -> None:
    client = user(edge, region)
    try:
        everything = origin_requests(edge)
        for agent in ("EvilScraperBot/2.0", "python-requests/2.31", "site-crawler", "spider 1.0"):
            blocked = client.get(
                "middleware.example.com", "/products/1", headers={"User-Agent": agent}
            )
            assert (blocked.status, blocked.text) == (403, "Forbidden"), agent
        assert origin_requests(edge) == everything, "a blocked bot must not reach the origin"
        for agent in (
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (compatible; bingbot/2.0)",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
        ):
            passed = client.get(
                "middleware.example.com", "/products/1?ref=home", headers={"User-Agent": agent}
            )
            assert passed.status == 200, agent
            assert passed.header("X-Edge-Path") == "/products/1"
            assert passed.json() == {"origin": True, "method": "GET", "path": "/products/1"}
        assert origin_requests(edge) == everything + 3
    finally:
        client.close()


def test_middleware_rewrites_visitors_from_china_to_the_cn_site(edge: Cluster) -> None:
    before = origin_requests(edge, "/cn/{tail}")
    china = user(edge, "shanghai")
    try:
        rewritten = china.get("middleware.example.com", "/products/1?ref=home")
        assert rewritten.status == 200
        assert rewritten.header("X-Edge-Path") == "/cn/products/1"
        assert rewritten.text == "<h1>China site: products/1</h1>"
        already = china.get("middleware.example.com", "/cn/about")
        assert already.header("X-Edge-Path") == "/cn/about"
        assert already.text == "<h1>China site: about</h1>"
    finally:
        china.close()
    # The rewrite follows the visitor's country, whichever PoP serves them.
    via_tokyo = EdgeClient(edge.node("tokyo-1").http_address, "shanghai")
    try:
        assert (
            via_tokyo.get("middleware.example.com", "/deals").header("X-Edge-Path") == "/cn/deals"
        )
    finally:
        via_tokyo.close()
    assert origin_requests(edge, "/cn/{tail}") == before + 3
    elsewhere = ask(edge, "frankfurt", "middleware.example.com", "/products/1")
    assert elsewhere.header("X-Edge-Path") == "/products/1"


# -- the origin application ----------------------------------------------------------------


def test_origin_app_serves_deterministic_data_and_counts_every_request_by_route(
    edge: Cluster,
) -> None:
    origin = EdgeClient(edge.origin.http_address)
    try:
        before = {
            (route, code): origin_requests_code(edge, route, code)
            for route, code in (("/api/products", "200"), ("/api/products", "404"))
        }
        orders = origin.get("origin", "/api/v1/orders").json()["orders"]
        users = origin.get("origin", "/api/v1/users").json()["users"]
        assert (len(orders), len(users)) == (50, 20)
        assert {order["user_id"] for order in orders} <= {user["id"] for user in users}
        first = origin.get("origin", "/api/products?id=7")
        assert first.header("Cache-Control") == "public, max-age=30"
        assert first.json() == origin.get("origin", "/api/products?id=7").json()
        assert first.json()["id"] == 7
        for bad in ("0", "101", "abc", ""):
            assert origin.get("origin", f"/api/products?id={bad}").status == 404, bad
        stores = origin.get("origin", "/api/stores")
        assert stores.header("Cache-Control") == "public, max-age=300"
        assert len(stores.json()["stores"]) == 15
        deals = origin.get("origin", "/api/deals?country=jp")
        assert deals.header("Vary") == "Accept-Language"
        assert deals.json() == {
            "country": "JP",
            "deals": ["Golden Week bundle", "Free gift wrapping"],
        }
        assert (
            origin_requests_code(edge, "/api/products", "200")
            == before[("/api/products", "200")] + 2
        )
        assert (
            origin_requests_code(edge, "/api/products", "404")
            == before[("/api/products", "404")] + 4
        )
    finally:
        origin.close()


def origin_requests_code(edge: Cluster, route: str, code: str) -> float:
    return node_metric(edge, "origin", "edge_origin_http_requests_total", route=route, code=code)


def test_origin_auth_server_issues_validates_and_publishes_keys(edge: Cluster) -> None:
    origin = EdgeClient(edge.origin.http_address)
    try:
        jwks = origin.get("origin", "/.well-known/jwks.json")
        keys = {key["kid"]: key for key in jwks.json()["keys"]}
        assert set(keys) == set(KIDS.values())
        assert {(key["alg"], key["use"]) for key in keys.values()} == {
            ("RS256", "sig"),
            ("ES256", "sig"),
        }
        assert all("d" not in key for key in keys.values()), "private key material published"
        for algorithm in KIDS:
            token = issue_token(edge, f"validated-{algorithm}", algorithm)
            claims = jwt.decode(token, options={"verify_signature": False})
            assert (claims["iss"], claims["aud"]) == (ISSUER, AUDIENCE)
            assert claims["exp"] - claims["iat"] == 3600
            valid = origin.get("origin", "/auth/validate", method="POST", headers=bearer(token))
            assert valid.json() == {"valid": True, "sub": f"validated-{algorithm}"}
        other_audience = forge(edge, aud="https://other.example.com/")
        refused = origin.get(
            "origin", "/auth/validate", method="POST", headers=bearer(other_audience)
        )
        assert refused.status == 403 and refused.json()["valid"] is False
        assert origin.get("origin", "/auth/validate", method="POST").status == 403
        body = b'{"sub": "x", "alg": "RS256"}'
        assert origin.get("origin", "/auth/token", method="POST", body=body).status == 401
        wrong = origin.get(
            "origin", "/auth/token", method="POST", body=body, headers=bearer("guess")
        )
        assert wrong.status == 401
        for bad in (b'{"sub": "x", "alg": "HS256"}', b'{"alg": "RS256"}', b'["x"]'):
            result = origin.get(
                "origin", "/auth/token", method="POST", body=bad, headers=bearer(edge.token)
            )
            assert result.status == 400, bad
    finally:
        origin.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"sub": "x", "ttl_s": "soon"}',
        b'{"sub": "x", "ttl_s": -120}',
        b'{"sub": "x", "ttl_s": 0}',
        b'{"sub": 42}',
    ],
)
def test_origin_token_endpoint_answers_400_to_malformed_bodies(edge: Cluster, body: bytes) -> None:
    result = http_once(
        edge.origin.http_address,
        "origin",
        "/auth/token",
        method="POST",
        body=body,
        headers=bearer(edge.token),
    )
    assert result.status == 400, (result.status, result.text)
