"""Planted bugs for proving the fault runs' checkers (as FoundationDB's BUGGIFY).

Test-only. `EDGEPOP_BUGGIFY` holds a comma-separated list of bug names; a process reads
it once at import (cluster processes inherit it from their launcher). A checker that
cannot catch a planted bug cannot be trusted to catch a real one.

- `promote-unsynced`: when an owner is gone, the control plane promotes the object's
  next standby whether or not it ever took a copy, and the new owner skips the check of
  its copy against the last confirmed seq. Seeded fault runs must then report lost
  acknowledged writes.
- `no-fsync`: every store that should be durable (origin, control plane, Durable
  Objects) commits without fsync, as a build with sync turned off would: replies still
  wait for the commit, which only reached the page cache. A process crash cannot tell;
  the power-loss test (`tests/integration/test_power_loss.py`) must then report lost
  acknowledged writes.
- `sql-forget-requests`: the SQL primary does not look a write's request id up, so a
  retry of a write that committed (its answer lost to a kill, a pause or a partition)
  runs again. Seeded fault runs with origin faults must then report SQL rows applied
  twice.
"""

from __future__ import annotations

import logging
import os

ENV_VAR = "EDGEPOP_BUGGIFY"
PROMOTE_UNSYNCED = "promote-unsynced"
NO_FSYNC = "no-fsync"
SQL_FORGET_REQUESTS = "sql-forget-requests"
KNOWN = frozenset({PROMOTE_UNSYNCED, NO_FSYNC, SQL_FORGET_REQUESTS})

log = logging.getLogger(__name__)

_enabled = frozenset(name.strip() for name in os.environ.get(ENV_VAR, "").split(",") if name)
for _unknown in sorted(_enabled - KNOWN):
    log.warning("%s names an unknown planted bug %r", ENV_VAR, _unknown)


def enabled(name: str) -> bool:
    """Whether the planted bug `name` is switched on in this process."""
    return name in _enabled
