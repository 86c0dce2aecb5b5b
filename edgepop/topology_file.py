"""The topology file's declared model, and the rules between its parts.

`TopologyFile` says what each field may hold (pydantic, strict: `2` is not a bool, `true`
not a count); `build` then checks what one field cannot say alone (a region listed twice,
an RTT to a region that is not there, the origin among the regions) and fills in the
defaults. Every error names the file, the line and the field (`edgepop.configfile`).
Loaded only when a file is read (pydantic costs a process ~0.1 s to import; every role
imports it once in the zygote through `edgepop.config`).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    StringConstraints,
    field_validator,
)

from edgepop.configfile import Located, validate
from edgepop.configmodel import StrictModel, fullmatch
from edgepop.topology import (
    DEFAULT_EVICT_IDLE_AFTER_S,
    DEFAULT_HIBERNATE_AFTER_S,
    DEFAULT_REGIONS,
    DEFAULT_SQL_DATABASE_BYTES_MAX,
    KV_MODE_CLOUDFLARE,
    POP_NODES_PER_REGION_MAX,
    NodeSpec,
    Region,
    Topology,
    TopologyError,
    default_topology,
)

ADDRESS_RE = re.compile(r"[A-Za-z0-9_.\-]+:[0-9]{1,5}")
RegionName = Annotated[
    str,
    AfterValidator(fullmatch(r"[A-Za-z0-9-]+", "must be letters, digits and '-', got {value!r}")),
]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]
NonNegative = Annotated[float, Field(ge=0)]


class RegionEntry(StrictModel):
    """A region: a new one needs its coordinates; a known one (the seed's) may change
    any field and keep the rest."""

    name: RegionName
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    pop_nodes: Annotated[int, Field(ge=0, le=POP_NODES_PER_REGION_MAX)] | None = None
    edge_rtt_ms: NonNegative | None = None
    country: str | None = None
    city: str | None = None
    continent: str | None = None
    timezone: str | None = None
    colo: str | None = None
    is_eu_country: bool | None = None


class RttEntry(StrictModel):
    from_region: RegionName = Field(alias="from")
    to_region: RegionName = Field(alias="to")
    rtt_ms: NonNegative


class NodeEntry(StrictModel):
    """A node with fixed addresses (a deployment on an orchestrator)."""

    name: NonEmpty
    role: Literal["control_plane", "origin", "pop"]
    region: NonEmpty
    grpc_address: str
    http_address: str = ""
    metrics_address: str = ""

    @field_validator("grpc_address", "http_address", "metrics_address")
    @classmethod
    def _host_port(cls, value: str, info: object) -> str:
        required = getattr(info, "field_name", "") == "grpc_address"
        if (value or required) and not ADDRESS_RE.fullmatch(value):
            raise ValueError(f"must be host:port, got {value!r}")
        return value


class KvNamespaceEntry(StrictModel):
    mode: Literal["replicated", "cloudflare"] = "replicated"


class ObjectsEntry(StrictModel):
    # Seconds without an event before an object holding only hibernatable WebSockets
    # hibernates (0: never).
    hibernate_after_s: NonNegative = DEFAULT_HIBERNATE_AFTER_S
    # Seconds without an event before an object with no connection is evicted from
    # memory (0: never).
    evict_idle_after_s: NonNegative = DEFAULT_EVICT_IDLE_AFTER_S


class SqlEntry(StrictModel):
    # The largest a SQL database may grow at the origin, in bytes (D1's: 10 GB). At least
    # one page (64 KiB covers any page size).
    database_bytes_max: Annotated[int, Field(ge=65_536)] = DEFAULT_SQL_DATABASE_BYTES_MAX


class TopologyFile(StrictModel):
    origin_region: str | None = None
    intra_site_rtt_ms: NonNegative | None = None
    regions: Annotated[list[RegionEntry], Field(min_length=1)] | None = None
    rtt_ms: list[RttEntry] | None = None
    emulate_delay: bool = True
    nodes: list[NodeEntry] | None = None
    kv_namespaces: dict[NonEmpty, KvNamespaceEntry] | None = None
    objects: ObjectsEntry = Field(default_factory=ObjectsEntry)
    sql: SqlEntry = Field(default_factory=SqlEntry)


def read(located: Located) -> Topology:
    """The topology a parsed file describes; TopologyError names the line and field."""
    if located.raw is None:
        located.raw = {}
    if not isinstance(located.raw, dict):
        raise TopologyError(located.at((), "the top level must be a mapping"))
    return build(validate(TopologyFile, located, TopologyError), located)


def _duplicates(names: list[str]) -> list[int]:
    return [index for index, name in enumerate(names) if name in names[:index]]


def _region(index: int, entry: RegionEntry, located: Located) -> Region:
    given = entry.model_dump(exclude_none=True)
    base = {region.name: region for region in DEFAULT_REGIONS}.get(entry.name)
    if base is None:
        for required in ("latitude", "longitude"):
            if required not in given:
                raise TopologyError(
                    located.at(
                        ("regions", index, required), f"required for a new region {entry.name!r}"
                    )
                )
        base = Region(entry.name, given["latitude"], given["longitude"])
    return replace(base, **given)


def build(parsed: TopologyFile, located: Located) -> Topology:
    base = default_topology()
    regions = base.regions
    if parsed.regions is not None:
        regions = tuple(_region(i, entry, located) for i, entry in enumerate(parsed.regions))
        for index in _duplicates([region.name for region in regions]):
            name = regions[index].name
            raise TopologyError(located.at(("regions", index, "name"), f"duplicate {name!r}"))
    names = frozenset(region.name for region in regions)

    origin_region = parsed.origin_region or base.origin_region
    if origin_region not in names:
        where = ("origin_region",) if parsed.origin_region else ("regions",)
        raise TopologyError(
            located.at(where, f"origin_region {origin_region!r} is not a listed region")
        )

    overrides = {pair: rtt for pair, rtt in base.rtt_overrides_ms.items() if pair <= names}
    for index, link in enumerate(parsed.rtt_ms or []):
        for end, name in (("from", link.from_region), ("to", link.to_region)):
            if name not in names:
                raise TopologyError(located.at(("rtt_ms", index, end), f"unknown region {name!r}"))
        if link.from_region == link.to_region:
            raise TopologyError(
                located.at(
                    ("rtt_ms", index), "from and to must differ (same-region RTT is edge_rtt_ms)"
                )
            )
        overrides[frozenset((link.from_region, link.to_region))] = link.rtt_ms

    nodes: tuple[NodeSpec, ...] = ()
    if parsed.nodes is not None:
        nodes = tuple(NodeSpec(**entry.model_dump()) for entry in parsed.nodes)
        for index, spec in enumerate(nodes):
            if spec.region not in names:
                raise TopologyError(
                    located.at(("nodes", index, "region"), f"unknown region {spec.region!r}")
                )
        for index in _duplicates([spec.name for spec in nodes]):
            raise TopologyError(
                located.at(("nodes", index, "name"), f"duplicate name {nodes[index].name!r}")
            )
        for role in ("control_plane", "origin"):
            if sum(spec.role == role for spec in nodes) != 1:
                raise TopologyError(located.at(("nodes",), f"exactly one {role} is needed"))

    cached = frozenset(
        name
        for name, options in (parsed.kv_namespaces or {}).items()
        if options.mode == KV_MODE_CLOUDFLARE
    )
    topology = Topology(
        regions=regions,
        origin_region=origin_region,
        intra_site_rtt_ms=(
            parsed.intra_site_rtt_ms
            if parsed.intra_site_rtt_ms is not None
            else base.intra_site_rtt_ms
        ),
        rtt_overrides_ms=overrides,
        emulate_delay=parsed.emulate_delay,
        nodes=nodes,
        kv_cached_namespaces=cached,
        hibernate_after_s=parsed.objects.hibernate_after_s,
        evict_idle_after_s=parsed.objects.evict_idle_after_s,
        sql_database_bytes_max=parsed.sql.database_bytes_max,
    )
    if not topology.pop_regions():
        raise TopologyError(located.at(("regions",), "at least one region needs pop_nodes >= 1"))
    return topology
