"""Cluster topology: regions, their PoP nodes, and the region round-trip-time matrix.

Pure data and rules (no I/O but `load_topology`, which reads a YAML file). The default
reproduces the seed's latency table; pairs it does not give use the great-circle rule
`2 x km / 200 km per ms x 1.5`. A YAML file may override any part; it is validated with
errors that name the offending field. It also says how KV namespaces read at the PoPs:

    kv_namespaces:
      prices: {mode: cloudflare}   # through a per-PoP cache, as Cloudflare's KV (cacheTtl)
      carts: {mode: replicated}    # the default: the PoP's replica, pushed by the stream
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

EARTH_RADIUS_KM = 6371.0
# Light in fibre covers about 200 km per ms; real routes are ~1.5x the great circle.
FIBRE_KM_PER_MS = 200.0
ROUTE_STRETCH = 1.5
POP_NODES_PER_REGION_MAX = 16


class TopologyError(ValueError):
    """A topology file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Region:
    name: str
    latitude: float
    longitude: float
    # PoP nodes run in this region (the origin region has none by default).
    pop_nodes: int = 0
    # RTT from a client in this region to this region's own PoP.
    edge_rtt_ms: float = 2.0
    country: str = ""
    city: str = ""
    continent: str = ""
    timezone: str = "UTC"
    colo: str = ""
    is_eu_country: bool = False


DEFAULT_REGIONS: tuple[Region, ...] = (
    Region("us-east-1", 39.04, -77.49, 0, 2.0, "US", "Ashburn", "NA", "America/New_York", "IAD"),
    Region("new-york", 40.71, -74.01, 2, 2.0, "US", "New York", "NA", "America/New_York", "EWR"),
    Region("london", 51.51, -0.13, 2, 5.0, "GB", "London", "EU", "Europe/London", "LHR"),
    Region("tokyo", 35.68, 139.69, 2, 8.0, "JP", "Tokyo", "AS", "Asia/Tokyo", "NRT"),
    Region("sydney", -33.87, 151.21, 2, 10.0, "AU", "Sydney", "OC", "Australia/Sydney", "SYD"),
    Region("mumbai", 19.08, 72.88, 2, 7.0, "IN", "Mumbai", "AS", "Asia/Kolkata", "BOM"),
    Region(
        "sao-paulo", -23.55, -46.63, 2, 6.0, "BR", "Sao Paulo", "SA", "America/Sao_Paulo", "GRU"
    ),
)
DEFAULT_ORIGIN_REGION = "us-east-1"
# The seed's table: round trip from a user in each region to the origin in us-east-1.
DEFAULT_RTT_OVERRIDES_MS: Mapping[tuple[str, str], float] = {
    ("new-york", "us-east-1"): 5.0,
    ("london", "us-east-1"): 80.0,
    ("tokyo", "us-east-1"): 170.0,
    ("sydney", "us-east-1"): 210.0,
    ("mumbai", "us-east-1"): 190.0,
    ("sao-paulo", "us-east-1"): 140.0,
}
DEFAULT_INTRA_SITE_RTT_MS = 1.0


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance between two points on the Earth."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(a))


def estimated_rtt_ms(a: Region, b: Region) -> float:
    km = great_circle_km(a.latitude, a.longitude, b.latitude, b.longitude)
    return 2 * km / FIBRE_KM_PER_MS * ROUTE_STRETCH


@dataclass(frozen=True)
class NodeSpec:
    """A node the topology asks for (what `edgectl cluster up` starts)."""

    name: str
    region: str
    role: str  # "control_plane" | "origin" | "pop"
    # Where others reach it, when the topology file says (Kubernetes: pod DNS names).
    grpc_address: str = ""
    http_address: str = ""
    metrics_address: str = ""


NODE_ROLES = ("control_plane", "origin", "pop")


@dataclass(frozen=True)
class Topology:
    regions: tuple[Region, ...]
    origin_region: str = DEFAULT_ORIGIN_REGION
    intra_site_rtt_ms: float = DEFAULT_INTRA_SITE_RTT_MS
    # Explicit RTTs for unordered region pairs; the rest follow the great-circle rule.
    rtt_overrides_ms: Mapping[frozenset[str], float] = field(default_factory=dict)
    # False turns every injected delay off (for measuring the platform's own overhead).
    emulate_delay: bool = True
    # Nodes with fixed addresses (a deployment on an orchestrator); empty = generated.
    nodes: tuple[NodeSpec, ...] = ()
    # KV namespaces read as Cloudflare's KV is (KV_MODE_CLOUDFLARE: through a per-PoP
    # cache with cacheTtl); every other namespace is a replica pushed by the stream.
    kv_cached_namespaces: frozenset[str] = frozenset()

    def region(self, name: str) -> Region:
        for region in self.regions:
            if region.name == name:
                return region
        raise KeyError(name)

    def has_region(self, name: str) -> bool:
        return any(region.name == name for region in self.regions)

    def rtt_ms(self, from_region: str, to_region: str, *, caller_is_node: bool) -> float:
        """Round trip between a caller in `from_region` and a server in `to_region`.

        Within one region a client pays the edge RTT, a node the intra-site RTT.
        Unknown regions cost nothing: an unlabelled caller is not delayed.
        """
        if from_region == to_region:
            if not self.has_region(from_region):
                return 0.0
            if caller_is_node:
                return self.intra_site_rtt_ms
            return self.region(from_region).edge_rtt_ms
        pair = frozenset((from_region, to_region))
        override = self.rtt_overrides_ms.get(pair)
        if override is not None:
            return override
        if not (self.has_region(from_region) and self.has_region(to_region)):
            return 0.0
        return estimated_rtt_ms(self.region(from_region), self.region(to_region))

    def rtt_matrix(self) -> dict[tuple[str, str], float]:
        """RTT between every ordered pair of distinct regions."""
        return {
            (a.name, b.name): self.rtt_ms(a.name, b.name, caller_is_node=True)
            for a in self.regions
            for b in self.regions
            if a.name != b.name
        }

    def node_address(self, role: str, name: str = "") -> NodeSpec | None:
        """A listed node by name, or the first of a role (control plane, origin)."""
        for spec in self.nodes:
            if (name and spec.name == name) or (not name and spec.role == role):
                return spec
        return None

    def pop_regions(self) -> list[Region]:
        return [region for region in self.regions if region.pop_nodes > 0]

    def node_specs(self) -> list[NodeSpec]:
        """Every process of the cluster: control plane, origin, then PoPs by region."""
        if self.nodes:
            return sorted(self.nodes, key=lambda spec: NODE_ROLES.index(spec.role))
        specs = [
            NodeSpec("control-plane", self.origin_region, "control_plane"),
            NodeSpec("origin", self.origin_region, "origin"),
        ]
        for region in self.pop_regions():
            for index in range(1, region.pop_nodes + 1):
                specs.append(NodeSpec(f"{region.name}-{index}", region.name, "pop"))
        return specs


def default_topology() -> Topology:
    return Topology(
        regions=DEFAULT_REGIONS,
        rtt_overrides_ms={frozenset(pair): rtt for pair, rtt in DEFAULT_RTT_OVERRIDES_MS.items()},
    )


_REGION_FIELDS = {
    "name": str,
    "latitude": float,
    "longitude": float,
    "pop_nodes": int,
    "edge_rtt_ms": float,
    "country": str,
    "city": str,
    "continent": str,
    "timezone": str,
    "colo": str,
    "is_eu_country": bool,
}
_TOP_FIELDS = {
    "origin_region",
    "intra_site_rtt_ms",
    "regions",
    "rtt_ms",
    "emulate_delay",
    "nodes",
    "kv_namespaces",
}
KV_MODE_REPLICATED = "replicated"
KV_MODE_CLOUDFLARE = "cloudflare"
KV_MODES = (KV_MODE_REPLICATED, KV_MODE_CLOUDFLARE)


def _parse_kv_namespaces(raw: Any, source: str) -> frozenset[str]:
    """`kv_namespaces: {NAME: {mode: cloudflare}}`: the namespaces read through a cache."""
    where = f"{source}: kv_namespaces"
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: must be a mapping of namespace -> {{mode: ...}}")
    cached = set()
    for name, options in raw.items():
        if not isinstance(name, str) or not name:
            raise TopologyError(f"{where}: {name!r} is not a namespace name")
        if not isinstance(options, dict) or set(options) - {"mode"}:
            raise TopologyError(f"{where}.{name}: takes only `mode`")
        mode = options.get("mode", KV_MODE_REPLICATED)
        if mode not in KV_MODES:
            raise TopologyError(f"{where}.{name}.mode: one of {list(KV_MODES)}, not {mode!r}")
        if mode == KV_MODE_CLOUDFLARE:
            cached.add(name)
    return frozenset(cached)


_NODE_FIELDS = {"name", "role", "region", "grpc_address", "http_address", "metrics_address"}
_ADDRESS_RE = re.compile(r"[A-Za-z0-9_.\-]+:[0-9]{1,5}")


def _parse_nodes(raw: Any, source: str, regions: frozenset[str]) -> tuple[NodeSpec, ...]:
    if not isinstance(raw, list):
        raise TopologyError(f"{source}: nodes: must be a list")
    specs = []
    for index, item in enumerate(raw):
        where = f"{source}: nodes[{index}]"
        if not isinstance(item, dict):
            raise TopologyError(f"{where}: must be a mapping")
        unknown = set(item) - _NODE_FIELDS
        if unknown:
            raise TopologyError(f"{where}: unknown field(s) {sorted(unknown)}")
        for required in ("name", "role", "region", "grpc_address"):
            if not isinstance(item.get(required), str) or not item[required]:
                raise TopologyError(f"{where}.{required}: required (a string)")
        if item["role"] not in NODE_ROLES:
            raise TopologyError(f"{where}.role: one of {list(NODE_ROLES)}")
        if item["region"] not in regions:
            raise TopologyError(f"{where}.region: unknown region {item['region']!r}")
        for field_name in ("grpc_address", "http_address", "metrics_address"):
            value = item.get(field_name, "")
            if value and not (isinstance(value, str) and _ADDRESS_RE.fullmatch(value)):
                raise TopologyError(f"{where}.{field_name}: must be host:port, got {value!r}")
        specs.append(NodeSpec(**{key: item.get(key, "") for key in _NODE_FIELDS}))
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise TopologyError(f"{source}: nodes: duplicate name(s) {duplicates}")
    for role in ("control_plane", "origin"):
        if sum(spec.role == role for spec in specs) != 1:
            raise TopologyError(f"{source}: nodes: exactly one {role} is needed")
    return tuple(specs)


def _typed(where: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind in (str, bool) and isinstance(value, kind):
        return value
    raise TopologyError(f"{where}: must be {kind.__name__}, got {value!r}")


def _parse_region(where: str, raw: Any, defaults: Mapping[str, Region]) -> Region:
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: must be a mapping")
    unknown = set(raw) - set(_REGION_FIELDS)
    if unknown:
        raise TopologyError(f"{where}: unknown field(s) {sorted(unknown)}")
    if "name" not in raw:
        raise TopologyError(f"{where}.name: required")
    name = _typed(f"{where}.name", raw["name"], str)
    if not name or not all(c.isalnum() or c == "-" for c in name):
        raise TopologyError(f"{where}.name: must be letters, digits and '-', got {name!r}")
    values = {key: _typed(f"{where}.{key}", raw[key], _REGION_FIELDS[key]) for key in raw}
    base = defaults.get(name)
    if base is None:
        for required in ("latitude", "longitude"):
            if required not in values:
                raise TopologyError(f"{where}.{required}: required for a new region {name!r}")
        base = Region(name, values["latitude"], values["longitude"])
    region = replace(base, **values)
    if not -90 <= region.latitude <= 90:
        raise TopologyError(f"{where}.latitude: must be within -90..90")
    if not -180 <= region.longitude <= 180:
        raise TopologyError(f"{where}.longitude: must be within -180..180")
    if not 0 <= region.pop_nodes <= POP_NODES_PER_REGION_MAX:
        raise TopologyError(f"{where}.pop_nodes: must be within 0..{POP_NODES_PER_REGION_MAX}")
    if region.edge_rtt_ms < 0:
        raise TopologyError(f"{where}.edge_rtt_ms: must not be negative")
    return region


def parse_topology(raw: Any, source: str = "topology") -> Topology:
    """Build a Topology from parsed YAML; missing parts take the defaults."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TopologyError(f"{source}: the top level must be a mapping")
    unknown = set(raw) - _TOP_FIELDS
    if unknown:
        raise TopologyError(f"{source}: unknown field(s) {sorted(unknown)}")
    base = default_topology()
    defaults = {region.name: region for region in DEFAULT_REGIONS}

    regions: tuple[Region, ...] = base.regions
    if "regions" in raw:
        if not isinstance(raw["regions"], list) or not raw["regions"]:
            raise TopologyError(f"{source}: regions: must be a non-empty list")
        parsed = [
            _parse_region(f"{source}: regions[{index}]", item, defaults)
            for index, item in enumerate(raw["regions"])
        ]
        listed = [region.name for region in parsed]
        duplicates = sorted({name for name in listed if listed.count(name) > 1})
        if duplicates:
            raise TopologyError(f"{source}: regions: duplicate name(s) {duplicates}")
        regions = tuple(parsed)
    names = frozenset(region.name for region in regions)

    origin_region = _typed(
        f"{source}: origin_region", raw.get("origin_region", base.origin_region), str
    )
    if origin_region not in names:
        raise TopologyError(f"{source}: origin_region: {origin_region!r} is not a listed region")
    intra = _typed(
        f"{source}: intra_site_rtt_ms", raw.get("intra_site_rtt_ms", base.intra_site_rtt_ms), float
    )
    if intra < 0:
        raise TopologyError(f"{source}: intra_site_rtt_ms: must not be negative")
    emulate = _typed(f"{source}: emulate_delay", raw.get("emulate_delay", True), bool)

    overrides = {pair: rtt for pair, rtt in base.rtt_overrides_ms.items() if pair <= names}
    rtt_items = raw.get("rtt_ms", []) or []
    if not isinstance(rtt_items, list):
        raise TopologyError(f"{source}: rtt_ms: must be a list")
    for index, item in enumerate(rtt_items):
        where = f"{source}: rtt_ms[{index}]"
        if not isinstance(item, dict) or set(item) != {"from", "to", "rtt_ms"}:
            raise TopologyError(f"{where}: must be a mapping with from, to, rtt_ms")
        a = _typed(f"{where}.from", item["from"], str)
        b = _typed(f"{where}.to", item["to"], str)
        for end, name in (("from", a), ("to", b)):
            if name not in names:
                raise TopologyError(f"{where}.{end}: unknown region {name!r}")
        if a == b:
            raise TopologyError(
                f"{where}: from and to must differ (same-region RTT is edge_rtt_ms)"
            )
        rtt = _typed(f"{where}.rtt_ms", item["rtt_ms"], float)
        if rtt < 0:
            raise TopologyError(f"{where}.rtt_ms: must not be negative")
        overrides[frozenset((a, b))] = rtt

    nodes = _parse_nodes(raw["nodes"], source, names) if "nodes" in raw else ()
    cached = _parse_kv_namespaces(raw["kv_namespaces"], source) if "kv_namespaces" in raw else None
    topology = Topology(
        regions=regions,
        origin_region=origin_region,
        intra_site_rtt_ms=intra,
        rtt_overrides_ms=overrides,
        emulate_delay=emulate,
        nodes=nodes,
        kv_cached_namespaces=cached or frozenset(),
    )
    if not topology.pop_regions():
        raise TopologyError(f"{source}: regions: at least one region needs pop_nodes >= 1")
    return topology


def load_topology(path: str | Path | None) -> Topology:
    """The default topology, or the one in a YAML file."""
    if path is None:
        return default_topology()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as error:
        raise TopologyError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise TopologyError(f"{path}: not valid YAML: {error}") from error
    return parse_topology(raw, str(path))


def region_names(topology: Topology) -> Iterable[str]:
    return (region.name for region in topology.regions)


def topology_to_pb(topology: Topology, version: int = 0) -> Any:
    """The wire form (edge.v1.Topology) without nodes; the control plane adds those."""
    from edge.v1 import control_plane_pb2 as pb

    message = pb.Topology(
        version=version,
        origin_region=topology.origin_region,
        intra_site_rtt_ms=topology.intra_site_rtt_ms,
    )
    for region in topology.regions:
        message.regions.append(
            pb.Region(
                name=region.name,
                latitude=region.latitude,
                longitude=region.longitude,
                pop_nodes=region.pop_nodes,
                edge_rtt_ms=region.edge_rtt_ms,
                country=region.country,
                city=region.city,
                continent=region.continent,
                timezone=region.timezone,
                colo=region.colo,
                is_eu_country=region.is_eu_country,
            )
        )
    for (a, b), rtt in topology.rtt_matrix().items():
        message.rtt.append(pb.LinkRtt(from_region=a, to_region=b, rtt_ms=rtt))
    return message


def topology_from_pb(message: Any, emulate_delay: bool = True) -> Topology:
    """A Topology from its wire form: every pair's RTT becomes an explicit override."""
    regions = tuple(
        Region(
            name=region.name,
            latitude=region.latitude,
            longitude=region.longitude,
            pop_nodes=region.pop_nodes,
            edge_rtt_ms=region.edge_rtt_ms,
            country=region.country,
            city=region.city,
            continent=region.continent,
            timezone=region.timezone,
            colo=region.colo,
            is_eu_country=region.is_eu_country,
        )
        for region in message.regions
    )
    overrides = {frozenset((link.from_region, link.to_region)): link.rtt_ms for link in message.rtt}
    return Topology(
        regions=regions,
        origin_region=message.origin_region,
        intra_site_rtt_ms=message.intra_site_rtt_ms,
        rtt_overrides_ms=overrides,
        emulate_delay=emulate_delay,
    )
