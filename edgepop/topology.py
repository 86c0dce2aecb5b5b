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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from edgepop.configfile import Located, parse_yaml

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


REGION_FIELDS = tuple(declared.name for declared in fields(Region))
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
# Cloudflare hibernates an idle object whose only connections are hibernatable WebSockets
# (`ctx.acceptWebSocket`) after about 10 s: it leaves memory, its sockets stay open, and
# the next event constructs the class again.
DEFAULT_HIBERNATE_AFTER_S = 10.0
# Cloudflare evicts an object with no connection after 70-140 s without an event: its
# memory is gone and the next event constructs the class again. The low end, so a user
# sees it as soon as Cloudflare may do it.
DEFAULT_EVICT_IDLE_AFTER_S = 70.0
# D1's "Maximum database size" (Workers Paid): a SQL database at the origin grows no larger.
DEFAULT_SQL_DATABASE_BYTES_MAX = 10_000_000_000


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
    # An object whose only connections are hibernatable WebSockets leaves memory after
    # this long without an event, as on Cloudflare (0: objects never hibernate).
    hibernate_after_s: float = DEFAULT_HIBERNATE_AFTER_S
    # An object with no connection leaves memory after this long without an event, as on
    # Cloudflare (0: idle objects stay in memory).
    evict_idle_after_s: float = DEFAULT_EVICT_IDLE_AFTER_S
    # The largest a SQL database may grow at the origin (a write past it is refused with
    # RESOURCE_EXHAUSTED and changes nothing).
    sql_database_bytes_max: int = DEFAULT_SQL_DATABASE_BYTES_MAX

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


KV_MODE_REPLICATED = "replicated"
KV_MODE_CLOUDFLARE = "cloudflare"
KV_MODES = (KV_MODE_REPLICATED, KV_MODE_CLOUDFLARE)


def parse_topology(raw: Any, source: str = "topology") -> Topology:
    """Build a Topology from parsed YAML (or a dict); missing parts take the defaults.
    The model and its rules are `edgepop.topology_file`'s."""
    from edgepop import topology_file  # pydantic loads only when a file is read

    return topology_file.read(Located(source, raw))


def load_topology(path: str | Path | None) -> Topology:
    """The default topology, or the one in a YAML file (errors name its lines)."""
    if path is None:
        return default_topology()
    path = Path(path)
    try:
        located = parse_yaml(path.read_text(), str(path))
    except OSError as error:
        raise TopologyError(f"{path}: cannot read: {error.strerror}") from error
    except yaml.YAMLError as error:
        raise TopologyError(f"{path}: not valid YAML: {error}") from error
    from edgepop import topology_file

    return topology_file.read(located)


def region_names(topology: Topology) -> Iterable[str]:
    return (region.name for region in topology.regions)


def _region_fields(region: Any) -> dict[str, Any]:
    """A Region's fields, from a Region or its wire form (the same names)."""
    return {name: getattr(region, name) for name in REGION_FIELDS}


def topology_to_pb(topology: Topology, version: int = 0) -> Any:
    """The wire form (edge.v1.Topology) without nodes; the control plane adds those."""
    from edge.v1 import control_plane_pb2 as pb

    message = pb.Topology(
        version=version,
        origin_region=topology.origin_region,
        intra_site_rtt_ms=topology.intra_site_rtt_ms,
    )
    for region in topology.regions:
        message.regions.append(pb.Region(**_region_fields(region)))
    for (a, b), rtt in topology.rtt_matrix().items():
        message.rtt.append(pb.LinkRtt(from_region=a, to_region=b, rtt_ms=rtt))
    return message


def topology_from_pb(message: Any, emulate_delay: bool = True) -> Topology:
    """A Topology from its wire form: every pair's RTT becomes an explicit override."""
    regions = tuple(Region(**_region_fields(region)) for region in message.regions)
    overrides = {frozenset((link.from_region, link.to_region)): link.rtt_ms for link in message.rtt}
    return Topology(
        regions=regions,
        origin_region=message.origin_region,
        intra_site_rtt_ms=message.intra_site_rtt_ms,
        rtt_overrides_ms=overrides,
        emulate_delay=emulate_delay,
    )
