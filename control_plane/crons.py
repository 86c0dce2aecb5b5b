"""Cron triggers: when each worker's `scheduled` handler is due, and at which PoP. Pure.

Cloudflare runs a cron trigger once per schedule, at one location, in UTC. The control
plane does the same for the cluster: at each minute a schedule fires, it picks one
healthy PoP (a hash of worker and time over the healthy PoPs, so runs spread across
regions and a PoP that is down is never picked) and asks it to run the handler.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cronsim import CronSim

# Cron names minutes: a schedule is looked at again at least this often.
CRON_CHECK_S_MAX = 60.0


@dataclass(frozen=True)
class CronRun:
    worker: str
    cron: str
    at: datetime.datetime  # UTC, whole minute


def next_runs(
    schedules: Mapping[str, Sequence[str]], after: datetime.datetime
) -> tuple[datetime.datetime | None, list[CronRun]]:
    """The next fire time strictly after `after`, and every run due then."""
    earliest: datetime.datetime | None = None
    due: list[CronRun] = []
    for worker, crons in sorted(schedules.items()):
        for cron in crons:
            at = next(CronSim(cron, after))
            if at <= after:  # cronsim may return `after` itself when it is a fire time
                at = next(CronSim(cron, after + datetime.timedelta(seconds=1)))
            if earliest is None or at < earliest:
                earliest, due = at, []
            if at == earliest:
                due.append(CronRun(worker, cron, at))
    return earliest, due


def pick_pop(run: CronRun, healthy_pops: Sequence[str]) -> str | None:
    """One PoP for the run, the same for the same run and PoPs; None when none is up."""
    if not healthy_pops:
        return None
    key = f"{run.worker}\x00{run.cron}\x00{run.at.isoformat()}".encode()
    index = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % len(healthy_pops)
    return sorted(healthy_pops)[index]
