"""Replayable random draws, for tests: `EDGEPOP_RANDOM_SEED`.

Unset (`make cluster`, production), every node draws from the OS's entropy as before.
Set, a node derives every random draw that shapes what a client sees from that seed
and its own name, and starts them again from a known point at the moments a test acts:

- its network emulator (jitter, loss) from the seed, its name and the fault table, at
  start and whenever the table changes: a test that sets a fault starts those draws;
- Python's `random` module (a worker's own draws, such as the A/B example's bucket)
  from the seed, its name and the worker versions live at this PoP, whenever that set
  changes: a test that deploys starts those draws.

So a statistical test that sets its fault or deploys its worker and then draws gets
the same draws for the same seed whatever ran before it, and a failure replays. Calls
run concurrently, so which call gets which draw may differ from run to run; the draws
themselves, and so a count of lost calls or of buckets, do not.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable

RANDOM_SEED_ENV = "EDGEPOP_RANDOM_SEED"


def seed_from_env() -> str | None:
    """The seed this process was started with (None: draw from the OS's entropy)."""
    return os.environ.get(RANDOM_SEED_ENV) or None


def derive(seed: str, *parts: object) -> str:
    """A seed for one generator (strings seed `random` the same way in every process)."""
    return "/".join([seed, *(str(part) for part in parts)])


def reseed_module(node: str, live: Iterable[str]) -> None:
    """Seed Python's `random` from the seed, the node and what is live (if seeded)."""
    seed = seed_from_env()
    if seed is not None:
        random.seed(derive(seed, node, *sorted(live)))
