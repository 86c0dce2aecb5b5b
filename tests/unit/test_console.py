"""The web console's pure parts: the map, the snapshot, latency quantiles, the token."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import objects_pb2
from edgectl.client import (
    NodeProbe,
    NodeSample,
    object_rates,
    quantile_from_buckets,
    request_stats,
)
from edgectl.console import app as console_app
from edgectl.console import geo
from edgectl.console.state import (
    build_snapshot,
    cli_error_from_stderr,
    propagation_ms,
    propagation_totals,
)

# -- map ---------------------------------------------------------------------------------


def test_projection_puts_the_corners_and_a_city_where_they_belong() -> None:
    assert geo.project(geo.NORTH_LAT, -180.0) == (0.0, 0.0)
    assert geo.project(geo.SOUTH_LAT, 180.0) == (geo.MAP_WIDTH, geo.MAP_HEIGHT)
    x, y = geo.project(35.68, 139.69)  # Tokyo: east, north of the middle
    assert 0.85 * geo.MAP_WIDTH < x < 0.9 * geo.MAP_WIDTH
    assert y < geo.MAP_HEIGHT / 2


def test_arcs_decode_by_delta_and_a_negative_index_reverses_an_arc() -> None:
    topology = {
        "transform": {"scale": [1.0, 1.0], "translate": [0.0, 0.0]},
        "arcs": [[[0, 0], [10, 0], [0, 10]], [[10, 10], [-10, 0], [0, -10]]],
        "objects": {"land": {"type": "Polygon", "arcs": [[0, 1]]}},
    }
    assert geo.decode_arcs(topology) == [
        [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0)],
        [(10.0, 10.0), (0.0, 10.0), (0.0, 0.0)],
    ]
    path = geo.land_path(topology)
    assert path.startswith("M") and path.endswith("Z") and path.count("M") == 1
    assert path.count("L") == 4  # 5 points: the shared end of the two arcs is not repeated
    reversed_topology = {**topology, "objects": {"land": {"type": "Polygon", "arcs": [[~1, ~0]]}}}
    assert geo.land_path(reversed_topology).count("L") == 4


def deltas(points: list[tuple[int, int]]) -> list[list[int]]:
    previous = (0, 0)
    encoded = []
    for point in points:
        encoded.append([point[0] - previous[0], point[1] - previous[1]])
        previous = point
    return encoded


def test_a_ring_across_the_antimeridian_becomes_two_subpaths() -> None:
    east = [(170, 60), (175, 60), (179, 60)]
    west = [(-179, 60), (-175, 62), (-179, 65)]
    back_east = [(179, 65), (175, 65), (170, 65)]
    topology = {
        "transform": {"scale": [1.0, 1.0], "translate": [0.0, 0.0]},
        "arcs": [deltas(east + west + back_east)],
        "objects": {"land": {"type": "Polygon", "arcs": [[0]]}},
    }
    path = geo.land_path(topology)
    # The west part on its own; the east part in one piece across the ring's start.
    assert path.count("M") == 2
    assert path.count("L") == 2 + 5


def test_the_shipped_land_draws() -> None:
    world = geo.world_map()
    assert world.land_path.count("M") > 100
    assert world.to_json()["height"] == geo.MAP_HEIGHT


# -- snapshot ----------------------------------------------------------------------------


def sample(
    name: str,
    role: str,
    region: str,
    *,
    alive: bool = True,
    object_rates: dict[tuple[str, str], float] | None = None,
    cpu: tuple[float, float] | None = None,
) -> NodeSample:
    return NodeSample(
        name=name, role=role, region=region, pid=10 if alive else 0, alive=alive,
        healthy=alive, seq=5, head_seq=5, lag_s=0.0123, replicating=True,
        requests_per_s=3.0, stale=False, workers=2, p50_ms=1.234, p99_ms=9.87,
        object_rates=object_rates or {},
        cpu_percent=cpu[0] if cpu else None, cpu_wait_percent=cpu[1] if cpu else None,
    )  # fmt: skip


def test_a_snapshot_says_who_is_where_and_how_healthy() -> None:
    topology = cp_pb2.Topology(
        version=7,
        origin_region="us-east-1",
        regions=[
            cp_pb2.Region(name="us-east-1", latitude=39.0, longitude=-77.5),
            cp_pb2.Region(name="tokyo", latitude=35.7, longitude=139.7, pop_nodes=1),
        ],
        rtt=[
            cp_pb2.LinkRtt(from_region="tokyo", to_region="us-east-1", rtt_ms=170.0),
            cp_pb2.LinkRtt(from_region="us-east-1", to_region="tokyo", rtt_ms=170.0),
        ],
        nodes=[
            cp_pb2.NodeInfo(name="tokyo-1", region="tokyo", healthy=False),
            cp_pb2.NodeInfo(name="origin", region="us-east-1", healthy=True),
        ],
        faults=[
            cp_pb2.LinkFault(from_region="tokyo", to_region="us-east-1", partitioned=True),
            # Healed by itself already: not in force.
            cp_pb2.LinkFault(from_region="us-east-1", to_region="tokyo", delay_ms=5, expires_at=1),
        ],
    )
    placements = [
        objects_pb2.Placement(namespace="C", id="ab", owner="tokyo-1", epoch=3),
        objects_pb2.Placement(namespace="C", id="cd", owner="tokyo-1", epoch=1),
    ]
    tokyo_1 = sample("tokyo-1", "pop", "tokyo", object_rates={("C", "ab"): 12.34}, cpu=(8.0, 1.0))
    origin = sample("origin", "origin", "us-east-1", cpu=(42.04, 40.0))
    snapshot = build_snapshot(
        topology,
        [tokyo_1, origin],
        placements,
        {"tokyo": "tokyo-1"},
        now=100.0,
    )
    json.dumps(snapshot)  # what the page receives
    nodes = {node["name"]: node for node in snapshot["nodes"]}
    assert nodes["tokyo-1"]["healthy"] is False  # alive, but its lease lapsed
    assert nodes["origin"]["healthy"] is True
    assert nodes["tokyo-1"]["p50_ms"] == 1.23
    # The origin waited for a CPU about as long as it ran: the page marks it.
    assert (nodes["origin"]["cpu_percent"], nodes["origin"]["cpu_wait_percent"]) == (42.0, 40.0)
    assert nodes["origin"]["cpu_wait_notable"] is True
    assert nodes["tokyo-1"]["cpu_wait_notable"] is False
    assert snapshot["links"] == [{"from": "tokyo", "to": "us-east-1", "rtt_ms": 170.0}]
    assert [f["from_region"] for f in snapshot["faults"]] == ["tokyo"]
    assert snapshot["objects"][0]["owner"] == "tokyo-1"
    # The owner's rate; none for an object it has not named twice yet.
    assert [o["calls_per_s"] for o in snapshot["objects"]] == [12.3, None]
    tokyo = next(r for r in snapshot["regions"] if r["name"] == "tokyo")
    assert (tokyo["x"], tokyo["y"]) == geo.project(35.7, 139.7)


def test_a_dead_node_is_never_healthy() -> None:
    topology = cp_pb2.Topology(nodes=[cp_pb2.NodeInfo(name="tokyo-1", healthy=True)])
    snapshot = build_snapshot(topology, [sample("tokyo-1", "pop", "tokyo", alive=False)], [], {}, 0)
    assert snapshot["nodes"][0]["healthy"] is False


def test_an_objects_call_rate_is_its_owners_count_over_time() -> None:
    before = NodeProbe(at=10.0, object_calls={("C", "a"): 100, ("C", "b"): 50, ("C", "gone"): 9})
    after = NodeProbe(at=12.0, object_calls={("C", "a"): 140, ("C", "b"): 6, ("C", "new"): 3})
    # b went down: activated again since, so its 6 calls are all new; new has no rate yet.
    assert object_rates(before, after) == {("C", "a"): 20.0, ("C", "b"): 3.0}
    assert object_rates(None, after) == {}


# -- metrics -----------------------------------------------------------------------------

METRICS = """\
# HELP edge_request_duration_seconds x
# TYPE edge_request_duration_seconds histogram
edge_request_duration_seconds_bucket{service="Pop",method="KvGet",code="OK",le="0.001"} 4.0
edge_request_duration_seconds_bucket{service="Pop",method="KvGet",code="OK",le="0.01"} 9.0
edge_request_duration_seconds_bucket{service="Pop",method="KvGet",code="OK",le="+Inf"} 10.0
edge_request_duration_seconds_count{service="Pop",method="KvGet",code="OK"} 10.0
edge_request_duration_seconds_sum{service="Pop",method="KvGet",code="OK"} 0.05
edge_request_duration_seconds_bucket{service="Pop",method="Status",code="OK",le="0.001"} 50.0
edge_request_duration_seconds_bucket{service="Pop",method="Status",code="OK",le="0.01"} 50.0
edge_request_duration_seconds_bucket{service="Pop",method="Status",code="OK",le="+Inf"} 50.0
edge_request_duration_seconds_count{service="Pop",method="Status",code="OK"} 50.0
edge_request_duration_seconds_sum{service="Pop",method="Status",code="OK"} 0.01
# HELP edge_kv_propagation_seconds x
# TYPE edge_kv_propagation_seconds histogram
edge_kv_propagation_seconds_bucket{node="t",region="tokyo",le="+Inf"} 3.0
edge_kv_propagation_seconds_count{node="t",region="tokyo"} 3.0
edge_kv_propagation_seconds_sum{node="t",region="tokyo"} 0.3
"""


def test_request_stats_leave_the_monitors_own_polls_out() -> None:
    stats = request_stats(METRICS)
    assert stats.count == 10.0
    assert stats.buckets == ((0.001, 4.0), (0.01, 9.0), (float("inf"), 10.0))


def test_quantiles_come_from_the_observations_between_two_scrapes() -> None:
    before = ((0.001, 4.0), (0.01, 9.0), (float("inf"), 10.0))
    after = ((0.001, 4.0), (0.01, 19.0), (float("inf"), 20.0))  # 10 more, 10 in (1, 10] ms
    p50 = quantile_from_buckets(before, after, 0.5)
    assert p50 is not None and 0.001 < p50 < 0.01
    assert quantile_from_buckets(before, before, 0.5) is None  # nothing served
    assert quantile_from_buckets(after, before, 0.5) is None  # restarted: counters went down


def test_one_writes_propagation_is_its_share_of_the_histogram() -> None:
    before = propagation_totals(METRICS)
    assert before == (0.3, 3.0)
    assert propagation_ms(before, (0.3 + 0.0851, 4.0)) == pytest.approx(85.1)
    assert propagation_ms(before, before) is None


# -- access ------------------------------------------------------------------------------


def test_actions_need_the_token_and_looking_does_not_on_loopback(tmp_path: Path) -> None:
    class Model:
        def node_action(self, name: str, action: str) -> str:
            return f"{action} {name}"

    console = console_app.Console.__new__(console_app.Console)
    console.config = console_app.ConsoleConfig(tmp_path, "127.0.0.1", 0)
    console.token = "secret"
    console.model = Model()  # type: ignore[assignment]
    console.world = geo.WorldMap(1.0, 1.0, "")
    console.executor = None  # type: ignore[assignment]

    async def call(function, *args):  # type: ignore[no-untyped-def]
        return function(*args)

    console.call = call  # type: ignore[method-assign]

    def make_app() -> console_app.web.Application:
        app = console_app.web.Application(middlewares=[console.guard])
        app.router.add_get("/api/map", console.world_map)
        app.router.add_post("/api/nodes/{name}", console.node_action)
        return app

    async def run() -> list[int]:
        async with TestClient(TestServer(make_app())) as client:
            statuses = []
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer secret"},
            ):
                reply = await client.post(
                    "/api/nodes/tokyo-1", json={"action": "kill"}, headers=headers
                )
                statuses.append(reply.status)
            statuses.append((await client.get("/api/map")).status)
            bad = await client.post(
                "/api/nodes/tokyo-1", data=b"[", headers={"Authorization": "Bearer secret"}
            )
            statuses.append(bad.status)
            return statuses

    assert asyncio.run(run()) == [401, 401, 200, 200, 400]
    console.config = console_app.ConsoleConfig(tmp_path, "0.0.0.0", 0)

    async def look() -> int:
        async with TestClient(TestServer(make_app())) as client:
            return (await client.get("/api/map")).status

    assert asyncio.run(look()) == 401  # off loopback, looking needs the token too


def test_an_edgectl_subprocess_error_keeps_its_status_code_and_details() -> None:
    error = cli_error_from_stderr("probing...\nerror: UNAVAILABLE: tokyo-1: connection refused\n")
    assert (error.code, error.details) == ("UNAVAILABLE", "tokyo-1: connection refused")
    plain = cli_error_from_stderr("error: no cluster in /x (no cluster.json); run `edgectl`\n")
    assert (plain.code, plain.details) == (
        "UNKNOWN",
        "no cluster in /x (no cluster.json); run `edgectl`",
    )
    assert cli_error_from_stderr("").code == "UNKNOWN"
