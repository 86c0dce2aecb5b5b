"""The six seed workers (workers/) under load, each beside bare aiohttp doing its hot path.

On the worker benchmarks' cluster (`objects_cluster`: delay emulation off) and at the
same PoP (the hot Counter's owner, in london), the seed workers are deployed as they
are: ab-test, api-router, jwt-auth, middleware, personalize and rate-limit. Each is
loaded by wrk with 64 connections with the `Host` its route names and the headers it
needs (a JWT the origin issued, a browser User-Agent, a client key per request), in
alternating rounds with `bench.bare_seed`: one aiohttp process doing the same worker's
logic with the platform's services replaced by their bare equivalent (the origin over a
kept aiohttp session, KV by LMDB, the PoP's cache by a dict, the Durable Object call by
`Pop.ObjectCall` at the same PoP). The goal is the performance issue's worker-path
goal: at least `KV_RATIO_GOAL` (0.5x) of the bare handler's requests/s, per worker;
a worker whose answers were not all 2xx fails its row, whatever its rate.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench import plots
from bench.bare_seed import BareSeedServer
from bench.edge_workers import (
    CONNECTIONS,
    KV_RATIO_GOAL,
    _http_notes,
    _tool_note,
    compare_http,
    deploy,
    http_tool,
    wait_loaded,
)
from bench.loadgen import HttpLoad
from bench.objects import hot_roles, objects_cluster
from bench.probe import scrape
from bench.runner import BenchResult, Context
from bench.stats import (
    Goal,
    MetricSample,
    Row,
    bucket_delta,
    histogram_buckets,
    histogram_count,
    histogram_quantile,
)
from bench.wrk import HeaderLoad
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edge.v1 import objects_pb2, pop_pb2_grpc
from edgectl.launcher import Cluster, NodeState
from edgepop.bundle import check_bundle, read_bundle
from edgepop.topology import Topology

BENCHMARK = "seed-workers"
BARE_SEED_KEY = "bare-seed"
SEED_DIR = Path(__file__).resolve().parents[1] / "workers"
WORKER_SIDE = "worker"
BARE_SIDE = "bare"
BROWSER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) edgepop-bench"
CLIENT_KEY_HEADER = "X-Client-Id"
CLIENT_KEY_PREFIX = "bench-client-"
RATE_NAMESPACE = "RateLimiter"
# rate-limit's limiter: 100 allowed checks per client key per 60 s (its wrangler vars).
RATE_LIMIT = 100
# Client keys enough for both sides at up to this rate each, every key staying under
# this share of its limit over the whole comparison (all of it inside one window). At
# 3,000 the worker side outran its keys (4,753 requests/s measured: 93 answers were 429s).
RATE_CEILING_PER_S = 6000.0
KEY_LIMIT_SHARE = 0.8
WORKER_REQUESTS_METRIC = "edge_worker_requests_total"
WORKER_CPU_METRIC = "edge_worker_cpu_seconds"
PLACE_IN_FLIGHT = 64
PLACE_ROUNDS_MAX = 4
TOKEN_TTL_S = 3600
CHECK_TIMEOUT_S = 10.0


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _ab_page(body: bytes) -> bool:
    return body in (b"<h1>Checkout (control)</h1>", b"<h1>Checkout v2 (variant)</h1>")


def _orders(body: bytes) -> bool:
    data = _json(body)
    return isinstance(data, dict) and isinstance(data.get("orders"), list)


def _authenticated(body: bytes) -> bool:
    data = _json(body)
    return isinstance(data, dict) and data.get("authenticated") is True


def _origin_echo(body: bytes) -> bool:
    data = _json(body)
    return isinstance(data, dict) and data.get("origin") is True


def _page(body: bytes) -> bool:
    return b"Welcome to the edgepop shop" in body and b"{{" not in body


def _allowed(body: bytes) -> bool:
    return body == b"OK"


@dataclass(frozen=True)
class SeedTarget:
    """One worker as the bench requests it, and what its baseline does."""

    name: str  # the row's name: the folder in workers/ (and the worker's name)
    host: str
    path: str
    baseline_name: str  # the baseline column's label
    choice: str  # the baseline's hot path, said in the row's note
    expect: Callable[[bytes], bool]  # a correct 200's body
    bearer: bool = False  # send the origin-issued JWT as `Authorization: Bearer`
    user_agent: str = BROWSER_AGENT
    client_keys: bool = False  # rotate `X-Client-Id` over many keys
    worker: str = ""  # the deployed worker's name when it is not `name`

    @property
    def worker_name(self) -> str:
        return self.worker or self.name


SEED_TARGETS: tuple[SeedTarget, ...] = (
    SeedTarget(
        "ab-test", "shop.example.com", "/checkout", "bare proxy",
        "baseline: 1 GET /checkout or /checkout-v2/checkout (80/20) to the origin, kept session",
        _ab_page,
    ),
    SeedTarget(
        "api-router", "api.example.com", "/api/v1/orders", "bare LMDB + proxy",
        "baseline: token cache entry by LMDB get, then 1 GET /api/v1/orders to the origin",
        _orders, bearer=True,
    ),
    SeedTarget(
        "jwt-auth", "auth.example.com", "/", "bare LMDB + PyJWT",
        "baseline: JWKS by LMDB get, RS256 token verified by PyJWT (no origin call)",
        _authenticated, bearer=True,
    ),
    SeedTarget(
        "middleware", "middleware.example.com", "/catalog/shoes?ref=bench", "bare proxy",
        "baseline: User-Agent bot check, then 1 GET of the same path to the origin",
        _origin_echo,
    ),
    SeedTarget(
        "personalize", "www.example.com", "/", "bare cached template",
        "baseline: page template from an in-process cache (the PoP's is a hit), filled in",
        _page,
    ),
    SeedTarget(
        "rate-limit", "limited.example.com", "/", "bare ObjectCall",
        "baseline: 1 RateLimiter.check by gRPC Pop.ObjectCall at the same PoP; one client "
        "key per request out of many (all allowed)",
        _allowed, client_keys=True,
    ),
)  # fmt: skip


# -- requests (pure) ---------------------------------------------------------------------------


def request_headers(target: SeedTarget, token: str) -> tuple[tuple[str, str], ...]:
    """The headers besides `Host` on every request to `target` (either side)."""
    headers = [("User-Agent", target.user_agent)]
    if target.bearer:
        headers.append(("Authorization", f"Bearer {token}"))
    return tuple(headers)


def client_keys(count: int, prefix: str = CLIENT_KEY_PREFIX) -> tuple[str, ...]:
    return tuple(f"{prefix}{index:05d}" for index in range(count))


def keys_needed(
    seconds_per_side: float,
    sides: int = 2,
    rate_ceiling_per_s: float = RATE_CEILING_PER_S,
    limit: int = RATE_LIMIT,
    share: float = KEY_LIMIT_SHARE,
) -> int:
    """Client keys enough that none reaches `share` of its limit: every side's requests
    at the ceiling rate, spread round-robin over the keys."""
    return math.ceil(seconds_per_side * sides * rate_ceiling_per_s / (limit * share))


def seed_load(
    target: SeedTarget,
    address: str,
    token: str,
    connections: int,
    duration_s: float,
    warmup_s: float,
    server_pid: int,
    extra_pids: tuple[int, ...] = (),
    keys: Sequence[str] = (),
) -> HeaderLoad:
    """wrk's load on `target` at `address` (the PoP's ingress or the bare server)."""
    if target.client_keys and not keys:
        raise ValueError(f"{target.name} needs client keys")
    return HeaderLoad(
        f"http://{address}{target.path}",
        target.host,
        connections,
        duration_s,
        warmup_s,
        server_pid,
        extra_pids=extra_pids,
        headers=request_headers(target, token),
        rotate=(CLIENT_KEY_HEADER, tuple(keys)) if target.client_keys else ("", ()),
    )


def cpu_limit_s(name: str) -> float:
    """The seed worker's CPU limit per request (its wrangler.jsonc `limits.cpu_ms`)."""
    return check_bundle(read_bundle(SEED_DIR / name)).cpu_ms / 1000.0


def pop_cf(topology: Topology, region: str) -> dict[str, Any]:
    """The `request.cf` a PoP of `region` gives a request with no client region."""
    own = topology.region(region)
    return {
        "colo": own.colo,
        "region": own.name,
        "country": own.country,
        "city": own.city,
        "continent": own.continent,
        "timezone": own.timezone,
        "latitude": own.latitude,
        "longitude": own.longitude,
        "is_eu_country": own.is_eu_country,
    }


def status_counts(
    before: Sequence[MetricSample], after: Sequence[MetricSample], worker: str
) -> dict[str, int]:
    """The answers the PoP counted for `worker` between two scrapes, by status."""

    def counts(samples: Sequence[MetricSample]) -> dict[str, float]:
        return {
            sample.labels.get("status", ""): sample.value
            for sample in samples
            if sample.name == WORKER_REQUESTS_METRIC and sample.labels.get("worker") == worker
        }

    start, end = counts(before), counts(after)
    deltas = {status: round(value - start.get(status, 0.0)) for status, value in end.items()}
    return {status: count for status, count in sorted(deltas.items()) if count}


def worker_cpu(
    before: Sequence[MetricSample], after: Sequence[MetricSample], worker: str, limit_s: float
) -> dict[str, float]:
    """The CPU the PoP metered to `worker`'s requests between two scrapes (its own steps,
    what its `cpu_ms` limit counts): how many, p50/p99 (bucket-interpolated), and how
    many went past the limit (0 when the limit is not a bucket bound)."""

    def buckets(samples: Sequence[MetricSample]) -> list[tuple[float, float]]:
        mine = [sample for sample in samples if sample.labels.get("worker") == worker]
        return histogram_buckets(mine, WORKER_CPU_METRIC)

    delta = bucket_delta(buckets(after), buckets(before))
    total = histogram_count(delta)
    within = next((count for bound, count in delta if math.isclose(bound, limit_s)), total)
    return {
        "requests": total,
        "p50_ms": histogram_quantile(0.5, delta) * 1e3,
        "p99_ms": histogram_quantile(0.99, delta) * 1e3,
        "over_limit": total - within,
        "limit_ms": limit_s * 1e3,
    }


# -- rows (pure) -------------------------------------------------------------------------------


def _error_note(label: str, side: dict[str, Any]) -> str:
    if not side["non_2xx"] and not side["errors"]:
        return ""
    statuses = {k: v for k, v in side.get("statuses", {}).items() if not k.startswith(("2", "3"))}
    which = (
        " (" + ", ".join(f"{count:,}x {status}" for status, count in statuses.items()) + ")"
        if statuses
        else ""
    )
    return f"{label} ERRORS: {side['non_2xx']:,} non-2xx{which}, {side['errors']:,} socket errors"


def seed_rows(
    target: SeedTarget, worker: dict[str, Any], bare: dict[str, Any], benchmark: str = BENCHMARK
) -> list[Row]:
    """The worker's rate against the bare handler's (goal: ratio >= 0.5x), then its
    latency. Any non-2xx answer or socket error on either side fails the rate row: an
    error is not a rate (and errors on the baseline's side spoil the comparison)."""
    errors = [note for note in (_error_note("worker", worker), _error_note("bare", bare)) if note]
    cpu = worker.get("cpu")
    if errors and cpu and cpu["over_limit"]:
        errors.append(
            f"{cpu['over_limit']:,.0f} request(s) metered over the worker's "
            f"{cpu['limit_ms']:g} ms CPU limit (503 = error 1102)"
        )
    rate = Row(
        benchmark,
        f"{target.name}: requests/s, {CONNECTIONS} connections ({worker['tool']})",
        "req/s",
        value=worker["rate_per_s"],
        baseline=bare["rate_per_s"],
        baseline_name=target.baseline_name,
        goal=Goal(">=", KV_RATIO_GOAL, on="ratio"),
        note="; ".join([*errors, target.choice]),
    )
    if errors:
        rate.status = "fail"
    latency = Row(
        benchmark,
        f"{target.name}: p50 latency",
        "ms",
        value=worker["latency_p50_s"] * 1e3,
        baseline=bare["latency_p50_s"] * 1e3,
        baseline_name=target.baseline_name,
        note=f"p99 {worker['latency_p99_s'] * 1e3:.1f} ms, bare "
        f"{bare['latency_p99_s'] * 1e3:.1f} ms; server CPU "
        f"{worker['server_cpu_per_request_us']:.0f} vs "
        f"{bare['server_cpu_per_request_us']:.0f} µs/req"
        + (
            f"; worker CPU as metered p50 {cpu['p50_ms']:.2f} ms, p99 {cpu['p99_ms']:.2f} ms"
            if cpu and cpu["requests"]
            else ""
        ),
    )
    return [rate, latency]


def failed_rows(target: SeedTarget, reason: str, benchmark: str = BENCHMARK) -> list[Row]:
    """A worker (or its baseline) that did not answer correctly: its row fails, unmeasured."""
    return [
        Row(
            benchmark,
            f"{target.name}: requests/s, {CONNECTIONS} connections",
            "req/s",
            baseline_name=target.baseline_name,
            goal=Goal(">=", KV_RATIO_GOAL, on="ratio"),
            status="fail",
            note=reason,
        )
    ]


def skipped_rows(reason: str) -> list[Row]:
    return [
        Row(
            BENCHMARK,
            f"{target.name}: requests/s, {CONNECTIONS} connections",
            "req/s",
            status="skipped",
            note=reason,
        )
        for target in SEED_TARGETS
    ]


def ratio_of(result: dict[str, Any]) -> float:
    """The worker's requests/s over the bare handler's."""
    bare: float = result[BARE_SIDE]["rate_per_s"]
    return float(result[WORKER_SIDE]["rate_per_s"]) / bare if bare else math.nan


# -- the cluster side --------------------------------------------------------------------------


async def deploy_seed_workers(context: Context, cluster: Cluster) -> dict[str, str]:
    """Deploy workers/<name> for the six seed workers once per run: {name: version}."""
    if "seed-workers-deployed" not in context.state:
        versions = {}
        for target in SEED_TARGETS:
            response = await deploy(cluster, read_bundle(SEED_DIR / target.name))
            versions[response.name] = response.version
        for name, version in versions.items():
            await wait_loaded(cluster, name, version)
        context.state["seed-workers-deployed"] = versions
    deployed: dict[str, str] = context.state["seed-workers-deployed"]
    return deployed


async def issue_token(cluster: Cluster, subject: str = "bench-user") -> str:
    """An RS256 JWT from the origin's auth server (what `edgectl token issue` asks for)."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as session,
        session.post(
            f"http://{cluster.origin.http_address}/auth/token",
            headers={"Authorization": f"Bearer {cluster.token}"},
            json={"sub": subject, "alg": "RS256", "ttl_s": TOKEN_TTL_S},
        ) as response,
    ):
        body = await response.read()
        if response.status != 200:
            raise RuntimeError(f"the origin issued no token: {response.status} {body[:80]!r}")
    token: str = json.loads(body)["token"]
    return token


async def object_owners(cluster: Cluster) -> dict[str, str]:
    """Every placed object's owner, by object id."""
    async with grpc.aio.insecure_channel(cluster.control_plane.grpc_address) as channel:
        response = await cp_grpc.ControlPlaneStub(channel).ListPlacements(
            objects_pb2.ListPlacementsRequest(),
            metadata=(("authorization", f"Bearer {cluster.token}"),),
            timeout=30,
        )
    return {placement.id: placement.owner for placement in response.placements}


async def owned_client_keys(
    context: Context, cluster: Cluster, pop: NodeState, needed: int
) -> tuple[str, ...]:
    """`needed` client keys whose RateLimiter the PoP owns: placed by a first check at
    the PoP (a batch at a time, 64 in flight), kept when the placement names the PoP
    (london has two PoPs; the id's hash picks one). Each key spends one check here."""
    owned: list[str] = []
    tried = 0
    async with grpc.aio.insecure_channel(pop.grpc_address) as channel:
        stub = pop_pb2_grpc.PopStub(channel)
        gate = asyncio.Semaphore(PLACE_IN_FLIGHT)

        async def first_check(key: str) -> str:
            args = {"key": key, "limit": RATE_LIMIT, "window_s": 60.0}
            async with gate:
                response = await stub.ObjectCall(
                    objects_pb2.ObjectCallRequest(
                        namespace=RATE_NAMESPACE,
                        name=key,
                        method="check",
                        args_json=json.dumps(args),
                    ),
                    timeout=30,
                )
            return str(response.id)

        for _ in range(PLACE_ROUNDS_MAX):
            # Half land on the other london PoP: twice the keys missing, and some spare.
            batch = client_keys(tried + 2 * (needed - len(owned)) + PLACE_IN_FLIGHT)[tried:]
            tried += len(batch)
            ids = await context.ui.step(
                f"placing {len(batch)} RateLimiter objects (client keys) at {pop.name}",
                asyncio.gather(*(first_check(key) for key in batch)),
            )
            owners = await object_owners(cluster)
            owned += [
                key for key, id_ in zip(batch, ids, strict=True) if owners.get(id_) == pop.name
            ]
            if len(owned) >= needed:
                break
    if len(owned) < needed:
        raise RuntimeError(f"{pop.name} owns {len(owned)} of {tried} client keys, {needed} needed")
    return tuple(owned[:needed])


async def bare_seed_server(context: Context, cluster: Cluster, pop: NodeState) -> BareSeedServer:
    async def start() -> tuple[BareSeedServer, Callable[[], None]]:
        server = BareSeedServer(
            context.new_dir("bare-seed") / "lmdb",
            cluster.origin.http_address,
            pop.grpc_address,
            pop_cf(cluster.topology, pop.region),
        )
        await asyncio.to_thread(server.start)
        return server, server.stop

    return await context.resource(BARE_SEED_KEY, start)


async def check_answer(spec: HeaderLoad, target: SeedTarget) -> str:
    """Empty when one request of `spec` gets a 200 whose body `target` expects, else what came."""
    headers = {"Host": spec.host, **dict(spec.headers)}
    if target.client_keys:
        headers[CLIENT_KEY_HEADER] = spec.rotate[1][0]
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=CHECK_TIMEOUT_S)) as session,
            session.get(spec.url, headers=headers) as response,
        ):
            body = await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as error:
        return f"{type(error).__name__}: {error}"
    if status == 200 and target.expect(body):
        return ""
    return f"answered {status} {body[:80]!r}"


async def measure_target(
    context: Context,
    target: SeedTarget,
    sides: dict[str, HeaderLoad],
    pop: NodeState,
    limit_s: float,
    rounds: int,
    benchmark: str = BENCHMARK,
) -> tuple[list[Row], dict[str, Any], dict[str, dict[str, Any]]]:
    """One worker against its baseline (`sides`: the worker's load and the bare one's), in
    alternating rounds: (its rows, its result, the pooled measurements of both sides). A
    side that does not answer as `target` expects fails the row unmeasured."""
    wrong = {side: await check_answer(spec, target) for side, spec in sides.items()}
    if any(wrong.values()):
        note = "; ".join(f"{side} {what}" for side, what in wrong.items() if what)
        return failed_rows(target, note, benchmark), {"check": wrong}, {}
    labelled: dict[str, HttpLoad] = {f"{target.name} {side}": spec for side, spec in sides.items()}
    watched = (WORKER_REQUESTS_METRIC, WORKER_CPU_METRIC)
    before = await scrape(pop.metrics_address, watched)
    try:
        pooled = await compare_http(context, labelled, rounds)
    except RuntimeError as error:
        return failed_rows(target, str(error)[:200], benchmark), {"error": str(error)}, {}
    after = await scrape(pop.metrics_address, watched)
    # The PoP's own count of the worker's answers by status, and the CPU it metered to
    # them (warm-ups included).
    worker = pooled[f"{target.name} {WORKER_SIDE}"]
    worker["statuses"] = status_counts(before, after, target.worker_name)
    worker["cpu"] = worker_cpu(before, after, target.worker_name, limit_s)
    baseline = pooled[f"{target.name} {BARE_SIDE}"]
    rows = seed_rows(target, worker, baseline, benchmark)
    return rows, {WORKER_SIDE: worker, BARE_SIDE: baseline}, pooled


# -- the benchmark -----------------------------------------------------------------------------


async def run_seed_workers(context: Context) -> BenchResult:
    cluster = await objects_cluster(context)
    pop = (await hot_roles(context, cluster)).owner
    wrk, reason = await http_tool(context)
    if wrk is None:
        reason = f"wrk is needed for the headers these workers take: {reason}"
        return BenchResult(rows=skipped_rows(reason), method=reason)
    versions = await context.ui.step(
        "deploying the six seed workers", deploy_seed_workers(context, cluster)
    )
    limits = {t.name: cpu_limit_s(t.name) for t in SEED_TARGETS}
    token = await issue_token(cluster)
    duration = context.pick(4.0, 2.0)
    warmup = 1.0
    rounds = context.pick(3, 1)
    keys = await owned_client_keys(context, cluster, pop, keys_needed(warmup + rounds * duration))
    bare = await bare_seed_server(context, cluster, pop)
    # Server CPU is the serving process's; "with other processes" adds the origin and
    # every PoP (the proxied calls, the limiter's owner work and its standby's copy).
    others = tuple(node.pid for node in (cluster.origin, *cluster.pops))
    rows: list[Row] = []
    measured: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for target in SEED_TARGETS:
        sides = {
            BARE_SIDE: seed_load(
                target, bare.address, token, CONNECTIONS, duration, warmup, bare.pid,
                others, keys,
            ),
            WORKER_SIDE: seed_load(
                target, pop.http_address, token, CONNECTIONS, duration, warmup, pop.pid,
                tuple(pid for pid in others if pid != pop.pid), keys,
            ),
        }  # fmt: skip
        target_rows, result, pooled = await measure_target(
            context, target, sides, pop, limits[target.name], rounds
        )
        rows += target_rows
        results[target.name] = result
        measured.update(pooled)
    plot = None
    done = [t.name for t in SEED_TARGETS if WORKER_SIDE in results.get(t.name, {})]
    if done:
        plot = plots.grouped_bars(
            context.settings.out_dir / "seed_workers.png",
            f"The seed workers vs bare aiohttp doing the same hot path, {CONNECTIONS} connections",
            done,
            {
                "bare aiohttp, same hot path": [results[n][BARE_SIDE]["rate_per_s"] for n in done],
                "PoP worker": [results[n][WORKER_SIDE]["rate_per_s"] for n in done],
            },
            "requests/s",
            [f"{ratio_of(results[n]):.2f}x" for n in done],
        )
    return BenchResult(
        rows=rows,
        details={
            "pop": pop.name,
            "versions": versions,
            "client_keys": len(keys),
            "results": results,
        },
        plots=[plot],
        method=(
            f"The six seed workers (workers/, deployed unmodified) at {pop.name}'s HTTP "
            f"ingress, on the worker benchmarks' cluster (delay emulation off), each loaded "
            f"by {CONNECTIONS} keep-alive connections for {duration:g} s per side "
            f"({rounds} alternating round(s), {warmup:g} s warm-up before each side's first) "
            "with the `Host` its route names and a browser `User-Agent`; api-router and "
            "jwt-auth also get `Authorization: Bearer <an RS256 JWT the origin issued>` "
            "(`POST /auth/token`), so api-router's token is validated once and then found in "
            "its KV cache. Requests: ab-test `GET /checkout` without its cookie (80/20 "
            "split, one origin GET each); api-router `GET /api/v1/orders`; jwt-auth "
            "`GET /`; middleware `GET /catalog/shoes?ref=bench` (proxied to the origin's "
            "catch-all route); personalize `GET /` (the template from the PoP's cache); "
            f"rate-limit `GET /` with `{CLIENT_KEY_HEADER}` rotating request by request over "
            f"{len(keys):,} client keys whose RateLimiter objects {pop.name} owns (placed "
            "beforehand by one check each; standby on the other london PoP), enough that "
            f"no key nears its {RATE_LIMIT} checks per 60 s even at "
            f"{RATE_CEILING_PER_S:,.0f} requests/s per side: every answer should be a 200, "
            "and a 429 counts as an error. Baseline in the same rounds: `bench.bare_seed`, "
            "one aiohttp process (access log off, default asyncio loop, as at the PoP) "
            "running each worker's logic with the platform's services replaced by the bare "
            "equivalent: `fetch` to the origin as the same request over one kept aiohttp "
            "session (256 connections, as the PoP's), a KV read as one LMDB get, the PoP's "
            "cache as a dict honouring the origin's max-age, the Durable Object call as "
            "gRPC `Pop.ObjectCall` at the same PoP (which runs the same RateLimiter "
            "there, as `worker-counter` sets its worker beside gRPC `ObjectCall`; that baseline "
            "pays one loopback gRPC hop the worker does not, so its ratio flatters the "
            "worker). Each row's note says the baseline's hot path. "
            f"Goal per worker: requests/s at least {KV_RATIO_GOAL:g}x the baseline's, and "
            "no non-2xx answer or socket error on either side (else FAIL whatever the "
            "rate). Server CPU is the serving process's utime+stime; the notes' second CPU "
            f"column adds the origin and every PoP. {_tool_note(context)}"
        ),
        notes=_http_notes(measured),
    )
