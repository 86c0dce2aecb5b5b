"""Cloudflare KV mode: a PoP that cached a key keeps answering it for cacheTtl, whatever
is written elsewhere; the replicated mode shows the write after propagation.

One cluster of real processes (tokyo and london PoPs, the seed's delays on) whose
topology puts namespace `cf-prices` in Cloudflare mode and leaves `rep-prices`
replicated. A Cloudflare-style worker (wrangler.jsonc, `class Default(WorkerEntrypoint)`)
reads with `cacheTtl=30` and writes through its PoP; requests go over HTTP to each PoP's
ingress. Takes about 35 s: the cache's 30 s are the point.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.cli import cluster_up, origin_and_pops, write_wrangler_worker

pytestmark = pytest.mark.cluster

CACHE_TTL_S = 30
TOLERANCE_S = 1.0
PROPAGATION_S_MAX = 5.0
POLL_S = 0.2
HOST = "kv-modes.workers.dev"
TOPOLOGY = origin_and_pops("tokyo", "london", kv_namespaces={"cf-prices": {"mode": "cloudflare"}})
ENTRY = f"""
from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        query = parse_qs(urlparse(request.url).query)
        kv = self.env.CF if query["ns"][0] == "cf" else self.env.REP
        key = query["key"][0]
        if request.method == "PUT":
            await kv.put(key, await request.text())
            return Response("ok")
        value = await kv.get(key, cacheTtl={CACHE_TTL_S})
        return Response("(none)" if value is None else value)
"""
WRANGLER = {
    "name": "kv-modes",
    "main": "src/entry.py",
    "kv_namespaces": [
        {"binding": "CF", "id": "cf-prices"},
        {"binding": "REP", "id": "rep-prices"},
    ],
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cf-kv")
    worker = write_wrangler_worker(directory / "kv-modes", WRANGLER, ENTRY)
    with cluster_up(directory, TOPOLOGY, [worker]) as (cluster, _):
        yield cluster


def call(cluster: Cluster, node: str, ns: str, key: str, value: str | None = None) -> str:
    request = urllib.request.Request(
        f"http://{cluster.node(node).http_address}/?ns={ns}&key={key}",
        data=None if value is None else value.encode(),
        method="GET" if value is None else "PUT",
        headers={"Host": HOST},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200
        return reply.read().decode()


def scrape(cluster: Cluster, node: str, name: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{cluster.node(node).metrics_address}/metrics") as r:
        lines = r.read().decode().splitlines()
    return {
        line.split(" ")[0]: float(line.split(" ")[1]) for line in lines if line.startswith(name)
    }


def test_a_write_elsewhere_is_invisible_where_the_key_is_cached_for_cache_ttl(
    cluster: Cluster,
) -> None:
    for ns in ("cf", "rep"):
        assert call(cluster, "tokyo-1", ns, "apple", "1.00") == "ok"
    poll_until(lambda: call(cluster, "london-1", "rep", "apple") == "1.00", PROPAGATION_S_MAX)
    # London caches the key (a miss: read at the origin) and a key that does not exist.
    assert call(cluster, "london-1", "cf", "apple") == "1.00"
    cached_at = {"apple": time.monotonic()}
    assert call(cluster, "london-1", "cf", "pear") == "(none)"
    cached_at["pear"] = time.monotonic()
    for ns in ("cf", "rep"):
        assert call(cluster, "tokyo-1", ns, "apple", "2.00") == "ok"
        assert call(cluster, "tokyo-1", ns, "pear", "3.00") == "ok"
    written_at = time.monotonic()
    # Tokyo wrote it: visible there at once, in both modes.
    assert call(cluster, "tokyo-1", "cf", "apple") == "2.00"
    # Replicated mode: london sees the write after propagation.
    poll_until(lambda: call(cluster, "london-1", "rep", "apple") == "2.00", PROPAGATION_S_MAX)
    assert time.monotonic() - written_at < PROPAGATION_S_MAX
    # Cloudflare mode: london answers from its cache until cacheTtl has passed.
    old, new = {"apple": "1.00", "pear": "(none)"}, {"apple": "2.00", "pear": "3.00"}
    flipped: dict[str, float] = {}
    reads = 0
    deadline = cached_at["apple"] + CACHE_TTL_S + 5 * TOLERANCE_S
    while len(flipped) < 2 and time.monotonic() < deadline:
        for key in new.keys() - flipped.keys():
            value = call(cluster, "london-1", "cf", key)
            reads += 1
            age = time.monotonic() - cached_at[key]
            if value == new[key]:
                flipped[key] = age
            else:
                assert value == old[key], (key, value, age)
                assert age < CACHE_TTL_S + TOLERANCE_S, (key, "stale too long", age)
        time.sleep(POLL_S)
    assert flipped.keys() == new.keys(), flipped
    for key, age in flipped.items():
        assert CACHE_TTL_S - TOLERANCE_S <= age <= CACHE_TTL_S + TOLERANCE_S, (key, age)
    # The metrics say so: london's reads were hits but for one miss per key per fill.
    requests = scrape(cluster, "london-1", "edge_kv_read_cache_requests_total")
    hits = sum(v for k, v in requests.items() if 'result="hit"' in k)
    misses = sum(v for k, v in requests.items() if 'result="miss"' in k)
    assert misses == 4 and hits == reads - 2, (requests, reads)
