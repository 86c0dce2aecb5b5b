"""Topology: the seed's latency table, the great-circle rule, YAML parsing and the wire form."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edgepop.topology import (
    DEFAULT_EVICT_IDLE_AFTER_S,
    DEFAULT_HIBERNATE_AFTER_S,
    DEFAULT_REGIONS,
    NodeSpec,
    TopologyError,
    default_topology,
    load_topology,
    parse_topology,
    topology_from_pb,
    topology_to_pb,
)

SEED_TO_ORIGIN_RTT_MS = {
    "new-york": 5.0,
    "london": 80.0,
    "tokyo": 170.0,
    "sydney": 210.0,
    "mumbai": 190.0,
    "sao-paulo": 140.0,
}
SEED_EDGE_RTT_MS = {
    "new-york": 2.0,
    "london": 5.0,
    "tokyo": 8.0,
    "sydney": 10.0,
    "mumbai": 7.0,
    "sao-paulo": 6.0,
}
DEFAULT_REGION_NAMES = [region.name for region in DEFAULT_REGIONS]


def _spherical_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance by the spherical law of cosines (independent of haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dl = math.radians(lon2 - lon1)
    cos_angle = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return 6371.0 * math.acos(max(-1.0, min(1.0, cos_angle)))


# -- default topology: the seed's table ------------------------------------------------------


@pytest.mark.parametrize(("region", "rtt_ms"), sorted(SEED_TO_ORIGIN_RTT_MS.items()))
def test_default_topology_reproduces_seed_rtt_to_origin(region: str, rtt_ms: float) -> None:
    topology = default_topology()
    assert topology.rtt_ms(region, "us-east-1", caller_is_node=False) == rtt_ms
    assert topology.rtt_ms(region, "us-east-1", caller_is_node=True) == rtt_ms


@pytest.mark.parametrize(("region", "rtt_ms"), sorted(SEED_EDGE_RTT_MS.items()))
def test_client_in_a_region_pays_the_seed_edge_rtt_to_its_own_pop(
    region: str, rtt_ms: float
) -> None:
    assert default_topology().rtt_ms(region, region, caller_is_node=False) == rtt_ms


def test_tokyo_client_pays_8_ms_and_tokyo_origin_link_is_170_ms() -> None:
    topology = default_topology()
    assert topology.rtt_ms("tokyo", "tokyo", caller_is_node=False) == 8.0
    assert topology.rtt_ms("tokyo", "us-east-1", caller_is_node=True) == 170.0
    assert topology.rtt_ms("us-east-1", "tokyo", caller_is_node=True) == 170.0


@pytest.mark.parametrize("region", DEFAULT_REGION_NAMES)
def test_nodes_of_one_site_are_1_ms_apart(region: str) -> None:
    assert default_topology().rtt_ms(region, region, caller_is_node=True) == 1.0


def test_default_topology_has_origin_in_us_east_1_and_two_pops_per_pop_region() -> None:
    topology = default_topology()
    assert topology.origin_region == "us-east-1"
    assert topology.emulate_delay is True
    assert {region.name: region.pop_nodes for region in topology.pop_regions()} == {
        "new-york": 2,
        "london": 2,
        "tokyo": 2,
        "sydney": 2,
        "mumbai": 2,
        "sao-paulo": 2,
    }
    assert topology.region("us-east-1").pop_nodes == 0


def test_tokyo_sydney_follows_the_great_circle_rule() -> None:
    topology = default_topology()
    tokyo, sydney = topology.region("tokyo"), topology.region("sydney")
    km = _spherical_km(tokyo.latitude, tokyo.longitude, sydney.latitude, sydney.longitude)
    expected = 2 * km / 200.0 * 1.5
    rtt = topology.rtt_ms("tokyo", "sydney", caller_is_node=True)
    assert rtt == pytest.approx(expected, rel=1e-6)
    # Tokyo-Sydney is about 7,800 km: roughly 117 ms round trip by this rule.
    assert 110 < rtt < 125


@pytest.mark.parametrize(("region", "seed_rtt_ms"), sorted(SEED_TO_ORIGIN_RTT_MS.items()))
def test_great_circle_rule_fits_the_seed_table_within_about_20_percent(
    region: str, seed_rtt_ms: float
) -> None:
    topology = default_topology()
    a, b = topology.region(region), topology.region("us-east-1")
    estimate = 2 * _spherical_km(a.latitude, a.longitude, b.latitude, b.longitude) / 200.0 * 1.5
    assert abs(estimate - seed_rtt_ms) / seed_rtt_ms <= 0.2


@given(
    a=st.sampled_from([*DEFAULT_REGION_NAMES, "nowhere"]),
    b=st.sampled_from([*DEFAULT_REGION_NAMES, "nowhere"]),
    caller_is_node=st.booleans(),
)
def test_rtt_is_symmetric_for_every_pair(a: str, b: str, caller_is_node: bool) -> None:
    topology = default_topology()
    forward = topology.rtt_ms(a, b, caller_is_node=caller_is_node)
    assert forward == topology.rtt_ms(b, a, caller_is_node=caller_is_node)
    assert forward >= 0


def test_unknown_caller_region_is_not_delayed() -> None:
    topology = default_topology()
    assert topology.rtt_ms("atlantis", "tokyo", caller_is_node=False) == 0.0
    assert topology.rtt_ms("atlantis", "atlantis", caller_is_node=True) == 0.0


def test_rtt_matrix_covers_every_ordered_pair_of_distinct_regions() -> None:
    topology = default_topology()
    matrix = topology.rtt_matrix()
    n = len(DEFAULT_REGIONS)
    assert len(matrix) == n * (n - 1)
    assert ("tokyo", "tokyo") not in matrix
    assert matrix[("tokyo", "us-east-1")] == 170.0
    assert matrix[("sydney", "tokyo")] == matrix[("tokyo", "sydney")]


def test_node_specs_list_control_plane_origin_then_pops_by_region() -> None:
    specs = default_topology().node_specs()
    assert specs[0] == NodeSpec("control-plane", "us-east-1", "control_plane")
    assert specs[1] == NodeSpec("origin", "us-east-1", "origin")
    pops = specs[2:]
    assert [spec.name for spec in pops] == [
        f"{region}-{index}"
        for region in ("new-york", "london", "tokyo", "sydney", "mumbai", "sao-paulo")
        for index in (1, 2)
    ]
    assert all(spec.role == "pop" for spec in pops)
    assert all(spec.name.rsplit("-", 1)[0] == spec.region for spec in pops)


def test_node_specs_follow_a_per_region_pop_count() -> None:
    topology = parse_topology(
        {
            "regions": [
                {"name": "us-east-1"},
                {"name": "tokyo", "pop_nodes": 3},
                {"name": "london", "pop_nodes": 1},
            ]
        }
    )
    assert [(spec.name, spec.region, spec.role) for spec in topology.node_specs()] == [
        ("control-plane", "us-east-1", "control_plane"),
        ("origin", "us-east-1", "origin"),
        ("tokyo-1", "tokyo", "pop"),
        ("tokyo-2", "tokyo", "pop"),
        ("tokyo-3", "tokyo", "pop"),
        ("london-1", "london", "pop"),
    ]


# -- parsing ---------------------------------------------------------------------------------


def test_empty_yaml_gives_the_default_topology() -> None:
    parsed = parse_topology(None)
    default = default_topology()
    assert parsed.regions == default.regions
    assert parsed.rtt_matrix() == default.rtt_matrix()
    assert parsed.origin_region == "us-east-1"


def test_partial_yaml_naming_a_default_region_fills_its_defaults() -> None:
    topology = parse_topology(
        {"regions": [{"name": "us-east-1"}, {"name": "tokyo", "pop_nodes": 1}]}
    )
    tokyo = topology.region("tokyo")
    default_tokyo = default_topology().region("tokyo")
    assert tokyo.pop_nodes == 1
    assert (tokyo.latitude, tokyo.longitude) == (default_tokyo.latitude, default_tokyo.longitude)
    assert tokyo.edge_rtt_ms == 8.0
    assert tokyo.city == "Tokyo" and tokyo.colo == "NRT"
    # The seed's pair stays; regions not listed are gone.
    assert topology.rtt_ms("tokyo", "us-east-1", caller_is_node=True) == 170.0
    assert [region.name for region in topology.regions] == ["us-east-1", "tokyo"]
    assert not topology.has_region("london")


def test_yaml_may_add_a_new_region_with_coordinates() -> None:
    topology = parse_topology(
        {
            "regions": [
                {"name": "us-east-1"},
                {"name": "frankfurt", "latitude": 50.11, "longitude": 8.68, "pop_nodes": 1},
            ]
        }
    )
    frankfurt = topology.region("frankfurt")
    assert frankfurt.pop_nodes == 1
    assert frankfurt.edge_rtt_ms == 2.0  # the Region default
    us = topology.region("us-east-1")
    km = _spherical_km(us.latitude, us.longitude, 50.11, 8.68)
    assert topology.rtt_ms("frankfurt", "us-east-1", caller_is_node=True) == pytest.approx(
        2 * km / 200 * 1.5, rel=1e-6
    )


def test_yaml_rtt_override_replaces_great_circle_and_seed_figures() -> None:
    topology = parse_topology(
        {
            "rtt_ms": [
                {"from": "tokyo", "to": "sydney", "rtt_ms": 99},
                {"from": "us-east-1", "to": "tokyo", "rtt_ms": 150.5},
            ],
            "intra_site_rtt_ms": 0.5,
            "emulate_delay": False,
        }
    )
    assert topology.rtt_ms("sydney", "tokyo", caller_is_node=True) == 99.0
    assert topology.rtt_ms("tokyo", "us-east-1", caller_is_node=False) == 150.5
    assert topology.rtt_ms("tokyo", "tokyo", caller_is_node=True) == 0.5
    assert topology.emulate_delay is False
    # Untouched pairs keep their defaults.
    assert topology.rtt_ms("london", "us-east-1", caller_is_node=True) == 80.0


def test_yaml_origin_region_may_be_another_listed_region() -> None:
    topology = parse_topology({"origin_region": "london"})
    assert topology.origin_region == "london"
    assert topology.node_specs()[1] == NodeSpec("origin", "london", "origin")


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"bogus": 1}, ["bogus"]),
        (
            {"regions": [{"name": "tokyo", "pop_nodes": 1, "colour": "red"}]},
            ["regions[0]", "colour"],
        ),
        ({"regions": [{"name": "tokyo", "pop_nodes": "two"}]}, ["regions[0].pop_nodes", "int"]),
        ({"regions": [{"name": "tokyo", "pop_nodes": True}]}, ["regions[0].pop_nodes", "int"]),
        ({"regions": [{"name": "tokyo", "pop_nodes": 1.5}]}, ["regions[0].pop_nodes", "int"]),
        ({"regions": [{"name": "tokyo", "latitude": "north"}]}, ["regions[0].latitude", "float"]),
        ({"regions": [{"name": 7}]}, ["regions[0].name", "str"]),
        ({"regions": [{"pop_nodes": 1}]}, ["regions[0].name", "required"]),
        ({"regions": ["tokyo"]}, ["regions[0]", "mapping"]),
        ({"regions": []}, ["regions", "non-empty"]),
        ({"regions": {"name": "tokyo"}}, ["regions", "list"]),
        ({"regions": [{"name": "tokyo west"}]}, ["regions[0].name"]),
        ({"regions": [{"name": "mars", "pop_nodes": 1}]}, ["regions[0].latitude", "mars"]),
        ({"regions": [{"name": "tokyo", "latitude": 91}]}, ["regions[0].latitude"]),
        ({"regions": [{"name": "tokyo", "longitude": -181}]}, ["regions[0].longitude"]),
        ({"regions": [{"name": "tokyo", "pop_nodes": -1}]}, ["regions[0].pop_nodes"]),
        ({"regions": [{"name": "tokyo", "pop_nodes": 17}]}, ["regions[0].pop_nodes"]),
        ({"regions": [{"name": "tokyo", "edge_rtt_ms": -1}]}, ["regions[0].edge_rtt_ms"]),
        (
            {"regions": [{"name": "us-east-1"}, {"name": "tokyo"}, {"name": "tokyo"}]},
            ["duplicate", "tokyo"],
        ),
        ({"origin_region": "mars"}, ["origin_region", "mars"]),
        ({"origin_region": 3}, ["origin_region", "str"]),
        (
            {"regions": [{"name": "tokyo", "pop_nodes": 2}]},
            ["origin_region", "us-east-1"],
        ),
        (
            {"regions": [{"name": "us-east-1"}, {"name": "tokyo", "pop_nodes": 0}]},
            ["pop_nodes"],
        ),
        ({"intra_site_rtt_ms": -0.5}, ["intra_site_rtt_ms"]),
        ({"intra_site_rtt_ms": "fast"}, ["intra_site_rtt_ms", "float"]),
        ({"emulate_delay": "yes please"}, ["emulate_delay", "bool"]),
        (
            {"rtt_ms": [{"from": "tokyo", "to": "sydney", "rtt_ms": -5}]},
            ["rtt_ms[0].rtt_ms", "negative"],
        ),
        (
            {"rtt_ms": [{"from": "tokyo", "to": "mars", "rtt_ms": 5}]},
            ["rtt_ms[0].to", "mars"],
        ),
        (
            {"rtt_ms": [{"from": "pluto", "to": "tokyo", "rtt_ms": 5}]},
            ["rtt_ms[0].from", "pluto"],
        ),
        ({"rtt_ms": [{"from": "tokyo", "to": "tokyo", "rtt_ms": 5}]}, ["rtt_ms[0]", "differ"]),
        ({"rtt_ms": [{"from": "tokyo", "to": "sydney"}]}, ["rtt_ms[0]", "rtt_ms"]),
        (
            {"rtt_ms": [{"from": "tokyo", "to": "sydney", "rtt_ms": "slow"}]},
            ["rtt_ms[0].rtt_ms", "float"],
        ),
        ([1, 2], ["top level", "mapping"]),
    ],
)
def test_bad_topology_raises_an_error_naming_the_field(raw: Any, names: list[str]) -> None:
    with pytest.raises(TopologyError) as caught:
        parse_topology(raw, "cluster.yaml")
    message = str(caught.value)
    assert message.startswith("cluster.yaml")
    for name in names:
        assert name in message


@pytest.mark.parametrize("rtt_ms", [5, 2.5, True])
def test_scalar_rtt_ms_section_raises_topology_error_naming_rtt_ms(rtt_ms: Any) -> None:
    with pytest.raises(TopologyError, match="rtt_ms"):
        parse_topology({"rtt_ms": rtt_ms})


def test_load_topology_without_a_path_is_the_default() -> None:
    topology = load_topology(None)
    assert topology.rtt_matrix() == default_topology().rtt_matrix()
    assert topology.node_specs() == default_topology().node_specs()


def test_load_topology_reads_a_partial_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "emulate_delay": False,
                "regions": [
                    {"name": "us-east-1"},
                    {"name": "tokyo", "pop_nodes": 2},
                    {"name": "london", "pop_nodes": 1},
                ],
            }
        )
    )
    topology = load_topology(path)
    assert [spec.name for spec in topology.node_specs()] == [
        "control-plane",
        "origin",
        "tokyo-1",
        "tokyo-2",
        "london-1",
    ]
    assert topology.emulate_delay is False
    assert topology.rtt_ms("london", "us-east-1", caller_is_node=True) == 80.0


def test_load_topology_names_the_file_when_its_field_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("regions:\n  - name: tokyo\n    pop_nodes: lots\n")
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(path) in str(caught.value)
    assert "regions[0].pop_nodes" in str(caught.value)


TOPOLOGY_YAML = """\
# a cluster of three regions
origin_region: us-east-1
regions:
  - name: us-east-1
  - name: tokyo
    pop_nodes: 2
  - name: atlantis
    latitude: 31.0
    longitude: -24.0
    pop_nodes: 1
rtt_ms:
  - {from: tokyo, to: atlantis, rtt_ms: 120}
"""


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("    pop_nodes: 2\n", "    pop_nodes: two\n", ":6: regions[1].pop_nodes: must be int"),
        ("    latitude: 31.0\n", "", ":7: regions[2].latitude: required for a new region"),
        ("    longitude: -24.0\n", "    longitude: -24.0\n    colour: sea\n",
         ":10: regions[2].colour: unknown field"),
        ("  - name: atlantis\n", "  - name: tokyo\n", ":7: regions[2].name: duplicate 'tokyo'"),
        ("to: atlantis", "to: lemuria", ":12: rtt_ms[0].to: unknown region 'lemuria'"),
        ("rtt_ms: 120", "rtt_ms: -1", ":12: rtt_ms[0].rtt_ms: must not be negative"),
        ("origin_region: us-east-1", "origin_region: mars", ":2: origin_region: "),
    ],
)  # fmt: skip
def test_a_bad_topology_file_names_the_line_and_the_field(
    tmp_path: Path, old: str, new: str, where: str
) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(TOPOLOGY_YAML)
    assert [spec.name for spec in load_topology(path).node_specs()][-1] == "atlantis-1"
    assert old in TOPOLOGY_YAML
    path.write_text(TOPOLOGY_YAML.replace(old, new))
    with pytest.raises(TopologyError) as caught:
        load_topology(path)
    assert str(caught.value).startswith(f"{path}{where}"), str(caught.value)


def test_load_topology_of_a_missing_file_raises_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(TopologyError, match="cannot read") as caught:
        load_topology(path)
    assert str(path) in str(caught.value)


def test_load_topology_of_invalid_yaml_raises_topology_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("regions: [\n  {name: tokyo\n")
    with pytest.raises(TopologyError, match="not valid YAML"):
        load_topology(path)


# -- wire form -------------------------------------------------------------------------------


def test_topology_round_trips_through_its_wire_form() -> None:
    topology = parse_topology(
        {
            "intra_site_rtt_ms": 0.75,
            "rtt_ms": [{"from": "tokyo", "to": "sydney", "rtt_ms": 99}],
            "regions": [
                {"name": "us-east-1"},
                {"name": "tokyo", "pop_nodes": 3, "is_eu_country": True},
                {"name": "sydney", "pop_nodes": 1},
                {"name": "frankfurt", "latitude": 50.11, "longitude": 8.68, "pop_nodes": 1},
            ],
        }
    )
    message = topology_to_pb(topology, version=7)
    assert message.version == 7
    back = topology_from_pb(message, emulate_delay=False)
    assert back.regions == topology.regions
    assert back.origin_region == topology.origin_region
    assert back.intra_site_rtt_ms == 0.75
    assert back.rtt_matrix() == topology.rtt_matrix()
    assert back.node_specs() == topology.node_specs()
    assert back.emulate_delay is False
    for region in ("tokyo", "sydney", "frankfurt"):
        assert back.rtt_ms(region, region, caller_is_node=False) == topology.rtt_ms(
            region, region, caller_is_node=False
        )


def test_wire_form_carries_every_ordered_pair_rtt() -> None:
    message = topology_to_pb(default_topology())
    links = {(link.from_region, link.to_region): link.rtt_ms for link in message.rtt}
    n = len(DEFAULT_REGIONS)
    assert len(links) == n * (n - 1)
    assert links[("tokyo", "us-east-1")] == 170.0
    assert links[("us-east-1", "tokyo")] == 170.0
    assert [region.name for region in message.regions] == DEFAULT_REGION_NAMES


# -- node addresses (deployments on an orchestrator) ---------------------------------------

_LISTED = [
    {"name": "control-plane-0", "role": "control_plane", "region": "us-east-1",
     "grpc_address": "control-plane-0.control-plane:7000"},
    {"name": "origin-0", "role": "origin", "region": "us-east-1",
     "grpc_address": "origin-0.origin:7000", "http_address": "origin-0.origin:8080"},
    {"name": "tokyo-1", "role": "pop", "region": "tokyo", "grpc_address": "tokyo-1.tokyo:7000"},
]  # fmt: skip


def test_listed_nodes_are_the_node_specs_with_their_addresses() -> None:
    topology = parse_topology({"nodes": _LISTED})
    specs = topology.node_specs()
    assert [spec.name for spec in specs] == ["control-plane-0", "origin-0", "tokyo-1"]
    assert topology.node_address("origin").http_address == "origin-0.origin:8080"  # type: ignore[union-attr]
    assert topology.node_address("", "tokyo-1").grpc_address == "tokyo-1.tokyo:7000"  # type: ignore[union-attr]
    assert parse_topology({}).node_address("origin") is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda n: [*n, dict(n[2])], "duplicate"),
        (lambda n: n[1:], "exactly one control_plane"),
        (lambda n: [n[0], n[2]], "exactly one origin"),
        (lambda n: [n[0], n[1], {**n[2], "grpc_address": "no-port"}], "host:port"),
        (lambda n: [n[0], n[1], {**n[2], "region": "atlantis"}], "unknown region"),
        (lambda n: [n[0], n[1], {**n[2], "role": "cache"}], "role"),
        (lambda n: [n[0], n[1], {**n[2], "colour": "red"}], "colour"),
    ],
)
def test_a_bad_node_list_is_refused_naming_the_problem(change: Any, words: str) -> None:
    with pytest.raises(TopologyError, match=words):
        parse_topology({"nodes": change(_LISTED)})


def test_kv_namespaces_name_those_read_as_cloudflares_kv() -> None:
    topology = parse_topology(
        {"kv_namespaces": {"prices": {"mode": "cloudflare"}, "carts": {"mode": "replicated"}}}
    )
    assert topology.kv_cached_namespaces == frozenset({"prices"})
    assert parse_topology({}).kv_cached_namespaces == frozenset()


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"kv_namespaces": ["prices"]}, r"kv_namespaces: must be a mapping"),
        ({"kv_namespaces": {"prices": {"mode": "lazy"}}}, r"kv_namespaces\.prices\.mode: "),
        ({"kv_namespaces": {"prices": {"ttl": 5}}}, r"kv_namespaces\.prices\.ttl: unknown field"),
    ],
)
def test_bad_kv_namespace_modes_name_the_field(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(TopologyError, match=names):
        parse_topology(raw)


def test_sql_databases_grow_to_d1s_10_gb_unless_the_topology_says_otherwise() -> None:
    assert parse_topology({}).sql_database_bytes_max == 10_000_000_000
    sized = parse_topology({"sql": {"database_bytes_max": 4_000_000}})
    assert sized.sql_database_bytes_max == 4_000_000
    for bad, names in (
        ({"database_bytes_max": 100}, r"sql\.database_bytes_max: "),
        ({"database_bytes_max": "big"}, r"sql\.database_bytes_max: "),
        ({"max_size": 5}, r"sql\.max_size: unknown field"),
    ):
        with pytest.raises(TopologyError, match=names):
            parse_topology({"sql": bad})


def test_objects_hibernate_after_ten_seconds_unless_the_topology_says_otherwise() -> None:
    assert parse_topology({}).hibernate_after_s == DEFAULT_HIBERNATE_AFTER_S == 10.0
    assert parse_topology({"objects": {"hibernate_after_s": 1.5}}).hibernate_after_s == 1.5
    assert parse_topology({"objects": {"hibernate_after_s": 0}}).hibernate_after_s == 0.0


def test_idle_objects_are_evicted_after_seventy_seconds_unless_the_topology_says_otherwise() -> (
    None
):
    assert parse_topology({}).evict_idle_after_s == DEFAULT_EVICT_IDLE_AFTER_S == 70.0
    assert parse_topology({"objects": {"evict_idle_after_s": 2}}).evict_idle_after_s == 2.0
    assert parse_topology({"objects": {"evict_idle_after_s": 0}}).evict_idle_after_s == 0.0
    with pytest.raises(TopologyError, match=r"objects\.evict_idle_after_s: "):
        parse_topology({"objects": {"evict_idle_after_s": -1}})


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        ({"objects": {"hibernate_after_s": -1}}, r"objects\.hibernate_after_s: "),
        ({"objects": {"hibernate_after_s": "soon"}}, r"objects\.hibernate_after_s: "),
        ({"objects": {"evict_after_s": 5}}, r"objects\.evict_after_s: unknown field"),
    ],
)
def test_bad_object_settings_name_the_field(raw: dict[str, Any], names: str) -> None:
    with pytest.raises(TopologyError, match=names):
        parse_topology(raw)
