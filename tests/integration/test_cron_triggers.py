"""Cron triggers: a Cloudflare-style worker's `scheduled` handler runs on schedule (the
control plane fires it at one healthy PoP each minute) and on `edgectl workers trigger`.

One cluster of real processes (tokyo and london PoPs), the worker deployed from a
wrangler folder with `triggers.crons = ["* * * * *"]`. Its handler records what it was
told in KV; its fetch reads that back (STRONG, so replica lag plays no part). Waits for
the next minute boundary: up to about a minute.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from edgectl.launcher import Cluster
from tests.conftest import poll_until
from tests.integration.cli import cluster_up, edgectl, origin_and_pops, write_wrangler_worker

pytestmark = pytest.mark.cluster

TOPOLOGY = origin_and_pops("tokyo", "london")
POPS = ("tokyo-1", "london-1")
ENTRY = """
from workers import Response, WorkerEntrypoint


CRONS = ("* * * * *", "*/5 * * * *")


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        runs = []
        for cron in CRONS:
            runs += await self.env.RUNS.get("runs:" + cron, "json", consistency="strong") or []
        return Response.json(runs)

    async def scheduled(self, controller, env, ctx):
        # A list per cron: a run on schedule and one by hand may overlap, and each
        # read-modify-write of one shared list would drop the other's run (KV is last
        # write wins); runs of one cron a minute apart do not overlap.
        key = "runs:" + controller.cron
        runs = await env.RUNS.get(key, "json", consistency="strong") or []
        runs.append({"cron": controller.cron, "at": controller.scheduledTime, "by": env.WHO})
        await env.RUNS.put(key, __import__("json").dumps(runs))
"""
WRANGLER = {
    "name": "cron-demo",
    "main": "src/entry.py",
    "kv_namespaces": [{"binding": "RUNS", "id": "cron-runs"}],
    "vars": {"WHO": "cron-demo"},
    "triggers": {"crons": ["* * * * *"]},
}
# Past the next minute boundary, with the control plane's loop and a PoP's run.
ON_SCHEDULE_S_MAX = 75.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("crons")
    worker = write_wrangler_worker(directory / "cron-demo", WRANGLER, ENTRY)
    with cluster_up(directory, TOPOLOGY, [worker]) as (cluster, _):
        yield cluster


def runs(cluster: Cluster, node: str = "tokyo-1") -> list[dict[str, object]]:
    request = urllib.request.Request(
        f"http://{cluster.node(node).http_address}/", headers={"Host": "cron-demo.workers.dev"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return list(json.loads(reply.read()))


def test_edgectl_workers_trigger_runs_the_handler_now(cluster: Cluster) -> None:
    done = edgectl(
        cluster.data_dir, "workers", "trigger", "cron-demo", "--cron", "*/5 * * * *",
        "--from", "london",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ran scheduled '*/5 * * * *' of cron-demo at london-1" in done.stdout
    by_hand = [run for run in runs(cluster) if run["cron"] == "*/5 * * * *"]
    assert len(by_hand) == 1 and by_hand[0]["by"] == "cron-demo"
    missing = edgectl(cluster.data_dir, "workers", "trigger", "no-such-worker")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_scheduled_needs_the_cluster_token(cluster: Cluster) -> None:
    request = urllib.request.Request(
        f"http://{cluster.node('tokyo-1').http_address}/__scheduled?cron=*+*+*+*+*",
        headers={"Host": "cron-demo.workers.dev"},
        method="POST",
        data=b"",
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_the_cron_runs_on_schedule_once_per_minute_at_one_pop(cluster: Cluster) -> None:
    def scheduled_runs() -> list[dict[str, object]]:
        return [run for run in runs(cluster) if run["cron"] == "* * * * *"]

    first = poll_until(scheduled_runs, ON_SCHEDULE_S_MAX, interval=0.5, what="a cron run")
    assert len(first) == 1, first
    at = first[0]["at"]
    assert isinstance(at, int) and at % 60_000 == 0  # fired for a whole minute, in ms
    # Both PoPs read the same single run: it ran once, at one PoP, not at each.
    for node in POPS:
        assert [r for r in runs(cluster, node) if r["cron"] == "* * * * *"] == first
