"""`edgectl net`: what the fault commands read from the command line and what they show.

Pure: parsing of the unit-bearing arguments (`100ms`, `30s`, `20%`), the JSON form of a
fault, the rows of the fault table (a pair whose two directions carry the same fault is
one row, `a <-> b`), and the base RTT matrix. The handlers in `edgectl.commands.net`
do the calls; everything they print is decided here or in `edgectl.views`.

Units: the control plane speaks milliseconds, fractions and unix seconds, and so does
every JSON field here (`delay_ms`, `loss`, `expires_at`, `heals_in_s`); arguments may
carry a unit so that `net delay a b 0.1s` and `net delay a b 100` mean the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edge.v1 import control_plane_pb2 as cp_pb2
from edgepop.faults import LOSS_MAX

_NUMBER = r"(?P<number>\d+(?:\.\d*)?|\.\d+)"
_MS_RE = re.compile(rf"^{_NUMBER}\s*(?P<unit>ms|s)?$")
_DURATION_RE = re.compile(rf"^{_NUMBER}\s*(?P<unit>ms|s|m|h)?$")
_LOSS_RE = re.compile(rf"^{_NUMBER}\s*(?P<percent>%)?$")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# One day: a fault meant to outlive that is one to clear by hand (`net heal`).
FAULT_DURATION_S_MAX = 86_400.0
# A delay or jitter beyond a minute is a typo (seconds given as ms), not a network.
DELAY_MS_MAX = 60_000.0


def _finite(value: float, text: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_ms(text: str) -> float:
    """Milliseconds from `100`, `100ms`, `0.1s` (a bare number is milliseconds)."""
    match = _MS_RE.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a time in ms (e.g. 100, 100ms, 0.1s)")
    value = _finite(float(match["number"]), text)
    if match["unit"] == "s":
        value *= 1000.0
    if value > DELAY_MS_MAX:
        raise ValueError(f"{text!r} is more than {DELAY_MS_MAX / 1000:g} s")
    return value


def parse_duration(text: str) -> float:
    """Seconds from `30s`, `2m`, `500ms`, `1h` or plain seconds (`30`, `1.5`); > 0."""
    match = _DURATION_RE.match(text.strip().lower())
    if match is None:
        raise ValueError(f"{text!r} is not a duration (e.g. 30s, 2m, 500ms, 30)")
    value = _finite(float(match["number"]), text) * _SECONDS_PER_UNIT[match["unit"] or "s"]
    if value <= 0:
        raise ValueError(f"{text!r}: a duration must be more than 0")
    if value > FAULT_DURATION_S_MAX:
        raise ValueError(f"{text!r} is more than {FAULT_DURATION_S_MAX / 3600:g} h")
    return value


def parse_loss(text: str) -> float:
    """A loss probability from a fraction (`0.2`) or a percentage (`20%`)."""
    match = _LOSS_RE.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a loss (e.g. 0.2 or 20%)")
    value = _finite(float(match["number"]), text)
    if match["percent"]:
        value /= 100.0
    elif value > 1.0:
        # `20` is ambiguous (20% or a typo); a fraction above 1 is not a probability.
        raise ValueError(f"{text!r}: give a fraction (0.2) or a percentage (20%)")
    if value > LOSS_MAX:
        raise ValueError(f"{text!r}: loss must be at most {LOSS_MAX:g} ({LOSS_MAX:.0%})")
    return value


# -- setting faults --------------------------------------------------------------------

# What `edgectl net KIND` (and the console's fault form) can set on a pair.
FAULT_KINDS = ("delay", "jitter", "loss", "partition")


def fault_request(
    kind: str,
    from_region: str,
    to_region: str,
    *,
    delay_ms: float | None = None,
    jitter_ms: float | None = None,
    loss: float | None = None,
    one_way: bool = False,
    duration_s: float | None = None,
) -> cp_pb2.SetLinkFaultRequest:
    """The SetLinkFault of one fault kind. Only the fields the kind names are sent: the
    control plane merges them into the pair's fault, so `jitter` after `delay` keeps the
    delay. ValueError names a value the kind needs and was not given."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault {kind!r} (one of {', '.join(FAULT_KINDS)})")
    request = cp_pb2.SetLinkFaultRequest(
        from_region=from_region,
        to_region=to_region,
        one_way=one_way,
        duration_s=duration_s or 0.0,
    )
    needed = {"delay": delay_ms, "jitter": jitter_ms, "loss": loss}
    if kind in needed and needed[kind] is None:
        raise ValueError(f"a {kind} fault needs its value")
    if kind == "delay":
        request.delay_ms = delay_ms or 0.0
        if jitter_ms is not None:
            request.jitter_ms = jitter_ms
    elif kind == "jitter":
        request.jitter_ms = jitter_ms or 0.0
    elif kind == "loss":
        request.loss = loss or 0.0
    else:
        request.partitioned = True
    return request


# -- showing faults --------------------------------------------------------------------


def in_force(faults: Iterable[cp_pb2.LinkFault], now: float) -> list[cp_pb2.LinkFault]:
    """Faults that have not healed by themselves yet (the control plane prunes them
    within moments; a listing taken in between must not show a healed fault)."""
    return [fault for fault in faults if not fault.expires_at or fault.expires_at > now]


def heals_in_s(fault: cp_pb2.LinkFault, now: float) -> float | None:
    """Seconds until a `--for` fault heals by itself (None: until cleared)."""
    if not fault.expires_at:
        return None
    return max(0.0, fault.expires_at - now)


def fault_json(fault: cp_pb2.LinkFault, now: float) -> dict[str, Any]:
    heals_in = heals_in_s(fault, now)
    return {
        "from_region": fault.from_region,
        "to_region": fault.to_region,
        "delay_ms": round(fault.delay_ms, 3),
        "jitter_ms": round(fault.jitter_ms, 3),
        "loss": round(fault.loss, 6),
        "partitioned": fault.partitioned,
        "expires_at": fault.expires_at or None,
        "heals_in_s": None if heals_in is None else round(heals_in, 3),
    }


def _same_fault(a: cp_pb2.LinkFault, b: cp_pb2.LinkFault) -> bool:
    return (a.delay_ms, a.jitter_ms, a.loss, a.partitioned, a.expires_at) == (
        b.delay_ms,
        b.jitter_ms,
        b.loss,
        b.partitioned,
        b.expires_at,
    )


@dataclass(frozen=True)
class FaultRow:
    """One row of the fault table: a direction, or both when they carry the same fault."""

    from_region: str
    to_region: str
    both_ways: bool
    fault: cp_pb2.LinkFault

    @property
    def pair(self) -> str:
        arrow = "<->" if self.both_ways else "->"
        return f"{self.from_region} {arrow} {self.to_region}"


def fault_rows(faults: Sequence[cp_pb2.LinkFault]) -> list[FaultRow]:
    """Rows for the table: symmetric faults (the default) merge into one row."""
    by_pair = {(fault.from_region, fault.to_region): fault for fault in faults}
    rows: list[FaultRow] = []
    shown: set[tuple[str, str]] = set()
    for (a, b), fault in sorted(by_pair.items()):
        if (a, b) in shown:
            continue
        reverse = by_pair.get((b, a))
        both = reverse is not None and _same_fault(fault, reverse)
        rows.append(FaultRow(a, b, both, fault))
        shown.add((a, b))
        if both:
            shown.add((b, a))
    return rows


def describe(fault: cp_pb2.LinkFault) -> str:
    """What a fault does, in words: `+100 ms, jitter 20 ms, loss 20%, partitioned`."""
    parts = []
    if fault.partitioned:
        parts.append("partitioned")
    if fault.delay_ms:
        parts.append(f"+{fault.delay_ms:g} ms")
    if fault.jitter_ms:
        parts.append(f"jitter {fault.jitter_ms:g} ms")
    if fault.loss:
        parts.append(f"loss {fault.loss * 100:.4g}%")
    return ", ".join(parts) or "no fault"


# -- the base RTT matrix -----------------------------------------------------------------


@dataclass(frozen=True)
class RttMatrix:
    """Base round-trip times from the topology, before faults.

    `rtt_ms[(a, b)]` for distinct regions is what a caller in `a` pays to a server in
    `b`; the diagonal is a client's RTT to its own region's PoP (`edge_rtt_ms`).
    """

    regions: tuple[str, ...]
    rtt_ms: dict[tuple[str, str], float]
    intra_site_rtt_ms: float
    origin_region: str

    def to_json(self) -> dict[str, Any]:
        return {
            "regions": list(self.regions),
            "origin_region": self.origin_region,
            "intra_site_rtt_ms": self.intra_site_rtt_ms,
            "rtt_ms": {
                a: {b: round(self.rtt_ms[(a, b)], 3) for b in self.regions if (a, b) in self.rtt_ms}
                for a in self.regions
            },
        }


def rtt_matrix(topology: cp_pb2.Topology) -> RttMatrix:
    regions = tuple(region.name for region in topology.regions)
    rtt = {(link.from_region, link.to_region): link.rtt_ms for link in topology.rtt}
    for region in topology.regions:
        rtt[(region.name, region.name)] = region.edge_rtt_ms
    return RttMatrix(regions, rtt, topology.intra_site_rtt_ms, topology.origin_region)


def faulted_pairs(faults: Iterable[cp_pb2.LinkFault]) -> set[frozenset[str]]:
    """Region pairs with a fault in either direction (marked in the matrix)."""
    return {frozenset((fault.from_region, fault.to_region)) for fault in faults}


def unknown_regions(topology: cp_pb2.Topology, names: Iterable[str]) -> list[str]:
    known = {region.name for region in topology.regions}
    return [name for name in names if name not in known]
