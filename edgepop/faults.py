"""Link faults per directed region pair, and how long one message takes to cross a link.

Pure: the table takes `now` and a random generator, so every rule here is unit-tested
without sockets. The control plane owns the table (durably) and pushes it to every node;
each server applies it to the calls it receives and the replies it sends.

Semantics follow tc-netem where it has them: `delay_ms` adds one-way latency per
message; `jitter_ms` is the standard deviation of a normal term (clipped at zero, and a
stream never reorders); `loss` is the chance a message is lost, each loss costing a
TCP-like retransmission timeout of 200 ms, doubling; `partitioned` holds everything.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

RETRANSMIT_TIMEOUT_S = 0.2
# A message lost this many times in a row stops doubling (TCP caps its backoff too).
RETRANSMITS_MAX = 6
LOSS_MAX = 0.95
# One added delay or jitter: a minute is far past any WAN; more is a typo (or infinity,
# which would hold every call across the pair like an unannounced partition).
LINK_DELAY_MS_MAX = 60_000.0
# A fault's `--for`: at most a day.
FAULT_DURATION_S_MAX = 86_400.0


class FaultError(ValueError):
    """A fault request that makes no sense (negative delay, loss >= 1, unknown region)."""


@dataclass(frozen=True)
class LinkFault:
    from_region: str
    to_region: str
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    partitioned: bool = False
    # Unix time at which it heals by itself; 0 = never.
    expires_at: float = 0.0

    def active(self, now: float) -> bool:
        return self.expires_at == 0.0 or now < self.expires_at

    def is_noop(self) -> bool:
        return not (self.delay_ms or self.jitter_ms or self.loss or self.partitioned)


def validate(fault: LinkFault, regions: Iterable[str]) -> None:
    known = set(regions)
    for end in (fault.from_region, fault.to_region):
        if end not in known:
            raise FaultError(f"unknown region {end!r}")
    for name, value in (("delay_ms", fault.delay_ms), ("jitter_ms", fault.jitter_ms)):
        # NaN compares false both ways: `not 0 <= x <= max` refuses it with infinity.
        if not 0.0 <= value <= LINK_DELAY_MS_MAX:
            raise FaultError(f"{name} must be within 0..{LINK_DELAY_MS_MAX:g} ms (got {value})")
    if not 0.0 <= fault.loss <= LOSS_MAX:
        raise FaultError(f"loss must be within 0..{LOSS_MAX}")


class FaultTable:
    """The faults in force, one per directed pair."""

    def __init__(self, faults: Iterable[LinkFault] = ()) -> None:
        self._faults: dict[tuple[str, str], LinkFault] = {}
        for fault in faults:
            self._faults[(fault.from_region, fault.to_region)] = fault

    def get(self, from_region: str, to_region: str, now: float) -> LinkFault | None:
        fault = self._faults.get((from_region, to_region))
        if fault is None or not fault.active(now):
            return None
        return fault

    def all(self) -> list[LinkFault]:
        return sorted(self._faults.values(), key=lambda f: (f.from_region, f.to_region))

    def set(
        self,
        from_region: str,
        to_region: str,
        *,
        now: float,
        one_way: bool = False,
        duration_s: float = 0.0,
        **changes: float | bool,
    ) -> list[LinkFault]:
        """Merge `changes` into the pair's fault (both directions unless one_way)."""
        pairs = [(from_region, to_region)]
        if not one_way and from_region != to_region:
            pairs.append((to_region, from_region))
        changed = []
        for a, b in pairs:
            current = self.get(a, b, now) or LinkFault(a, b)
            updated = replace(current, **changes)  # type: ignore[arg-type]
            if duration_s:
                updated = replace(updated, expires_at=now + duration_s)
            if updated.is_noop():
                self._faults.pop((a, b), None)
            else:
                self._faults[(a, b)] = updated
            changed.append(updated)
        return changed

    def clear(self, from_region: str = "", to_region: str = "", one_way: bool = False) -> None:
        if not from_region and not to_region:
            self._faults.clear()
            return
        self._faults.pop((from_region, to_region), None)
        if not one_way:
            self._faults.pop((to_region, from_region), None)

    def expire(self, now: float) -> bool:
        """Drop faults that healed by themselves; True if any did."""
        expired = [pair for pair, fault in self._faults.items() if not fault.active(now)]
        for pair in expired:
            del self._faults[pair]
        return bool(expired)

    def next_expiry(self) -> float:
        """The earliest `expires_at` in force (0 when none)."""
        times = [f.expires_at for f in self._faults.values() if f.expires_at]
        return min(times) if times else 0.0


def crossing_delay_s(base_s: float, fault: LinkFault | None, rng: random.Random) -> float:
    """One-way delay of one message over a link with base delay `base_s`."""
    if fault is None:
        return base_s
    delay = base_s + fault.delay_ms / 1000.0
    if fault.jitter_ms:
        delay = max(base_s, delay + rng.gauss(0.0, fault.jitter_ms / 1000.0))
    if fault.loss:
        timeout = RETRANSMIT_TIMEOUT_S
        retransmits = 0
        while rng.random() < fault.loss and retransmits < RETRANSMITS_MAX:
            delay += timeout
            timeout *= 2
            retransmits += 1
    return delay


def fault_to_pb(fault: LinkFault) -> Any:
    from edge.v1 import control_plane_pb2 as pb

    return pb.LinkFault(
        from_region=fault.from_region,
        to_region=fault.to_region,
        delay_ms=fault.delay_ms,
        jitter_ms=fault.jitter_ms,
        loss=fault.loss,
        partitioned=fault.partitioned,
        expires_at=fault.expires_at,
    )


def fault_from_pb(message: Any) -> LinkFault:
    return LinkFault(
        from_region=message.from_region,
        to_region=message.to_region,
        delay_ms=message.delay_ms,
        jitter_ms=message.jitter_ms,
        loss=message.loss,
        partitioned=message.partitioned,
        expires_at=message.expires_at,
    )
