"""Histories of a real sequential object seen through concurrent clients, for the checker's
tests: linearizable by construction.

Each client runs one operation at a time; every operation takes effect at one random
instant inside its interval, and the outputs are what a sequential counter or register
returns when the effects are applied in the order of those instants. An indeterminate
("info") operation takes effect or not at random and its output is lost.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from edgectl.chaos.history import Op


@dataclass
class Planned:
    op: Op
    effect_s: float | None  # None: an indeterminate op that never took effect


def simulate(
    rng: random.Random,
    kind: str,
    *,
    clients: int = 12,
    ops: int = 1000,
    info_rate: float = 0.01,
    read_rate: float = 0.3,
    latency_s: float = 0.2,
    key: str = "",
) -> list[Op]:
    """`ops` ops of a "counter" or "register" from `clients` overlapping clients."""
    key = key or ("do:Counter/c" if kind == "counter" else "kv:chaos/k")
    planned: list[Planned] = []
    clock = [rng.uniform(0, latency_s) for _ in range(clients)]
    for index in range(ops):
        client = index % clients
        invoke_s = clock[client]
        duration_s = rng.expovariate(1 / latency_s) + 0.001
        complete_s = invoke_s + duration_s
        clock[client] = complete_s + rng.uniform(0, latency_s / 10)
        reading = rng.random() < read_rate
        if kind == "counter":
            f, value = ("get", None) if reading else ("increment", None)
        else:
            f, value = ("get", None) if reading else ("put", f"v{index}")
        meta: dict[str, Any] = {"consistency": "strong"} if f == "get" else {}
        op = Op(index, f"c{client}", key, f, invoke_s, value, "ok", None, complete_s, meta)
        effect_s: float | None = rng.uniform(invoke_s, complete_s)
        if rng.random() < info_rate:
            op.status = "info"
            if rng.random() < 0.5:
                effect_s = None
            else:
                # It may take effect after the client gave up.
                effect_s = rng.uniform(invoke_s, complete_s + 2 * latency_s)
        planned.append(Planned(op, effect_s))
    state: Any = 0 if kind == "counter" else None
    for item in sorted(
        (item for item in planned if item.effect_s is not None),
        key=lambda item: item.effect_s or 0.0,
    ):
        op = item.op
        if op.f == "increment":
            state += 1
            output: Any = state
        elif op.f == "put":
            state = op.input
            output = None
        else:
            output = state
        if op.status == "ok":
            op.output = output
    return [item.op for item in planned]
