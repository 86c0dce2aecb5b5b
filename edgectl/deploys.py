"""`edgectl deploy`, `workers`, `token issue` and `cluster up --workers`: the deploy
client's logic (the commands are `edgectl.commands.deploy`, `.token` and `.cluster`).

A deploy is two steps: the control plane stores the bundle's version and makes it
active (`ControlPlane.Deploy`), then every PoP learns of it through its topology watch
and loads it on its own. The control plane does not know when that happened; each PoP
says what it serves in `Pop.Status.workers` (with the version's cold start). So after a
deploy edgectl polls every healthy PoP until each serves the new version — the rollout —
and reports how long that took, the slowest cold start, and which PoPs lag.

Pure parts (unit-testable, no sockets): which folders are bundles, the rollout of one
version over a set of PoPs, and the per-worker summary `edgectl workers` prints.
`poll_pops` and `wait_rollouts` do the I/O.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import workers_pb2
from edgectl.client import CliError, EdgeClient
from edgepop import packages
from edgepop.bundle import (
    CONFIG_FILE,
    BundleError,
    WorkerConfig,
    check_bundle,
    is_bundle_folder,
    read_bundle,
)

# The promise is 2 s; this leaves room for a busy machine before calling it lag.
ROLLOUT_TIMEOUT_S_DEFAULT = 10.0
ROLLOUT_POLL_S = 0.05
# Each poll of a PoP's status; a PoP that misses it counts as lagging this round.
STATUS_TIMEOUT_S = 1.0
SHORT_VERSION_CHARS = 12


def short(version: str) -> str:
    return version[:SHORT_VERSION_CHARS]


# -- bundles ---------------------------------------------------------------------------


def bundle_dirs(paths: Sequence[Path]) -> list[Path]:
    """The bundle folders named by `--workers DIR`s, in order, each once.

    A DIR holding `worker.yaml` is a bundle; any other folder is a folder of bundles
    (its subfolders with a `worker.yaml`, by name).
    """
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CliError("INVALID_ARGUMENT", f"--workers {path}: not a folder")
        if is_bundle_folder(path):
            bundles = [path]
        else:
            bundles = sorted(p for p in path.iterdir() if is_bundle_folder(p))
            if not bundles:
                raise CliError(
                    "INVALID_ARGUMENT",
                    f"--workers {path}: neither a bundle ({CONFIG_FILE} or a wrangler "
                    "config) nor a folder of bundles",
                )
        for bundle in bundles:
            if bundle.resolve() not in {b.resolve() for b in found}:
                found.append(bundle)
    return found


def read(folder: Path) -> workers_pb2.WorkerBundle:
    """A folder's bundle, checked as the control plane will check it."""
    if not folder.is_dir():
        raise CliError("INVALID_ARGUMENT", f"{folder}: not a folder")
    if not is_bundle_folder(folder) and any(is_bundle_folder(child) for child in folder.iterdir()):
        raise CliError(
            "INVALID_ARGUMENT",
            f"{folder} is a folder of bundles: deploy one of them ({folder}/NAME), "
            "or all with `edgectl cluster up --workers`",
        )
    try:
        bundle = read_bundle(folder)
    except BundleError as error:
        raise CliError("INVALID_ARGUMENT", f"bundle {folder}: {error}") from None
    except OSError as error:
        raise CliError("INVALID_ARGUMENT", f"bundle {folder}: {error.strerror or error}") from None
    install_packages(folder, check_bundle(bundle))
    return bundle


def install_packages(folder: Path, config: WorkerConfig) -> None:
    """Install the worker's own packages on this machine before it is deployed: a package
    that cannot be had fails here, with pip's reason, and PoPs on this machine find them
    ready (`edgepop.packages`)."""
    if not config.dependencies or packages.is_installed(config.dependencies):
        return
    listed = ", ".join(config.dependencies)
    console = Console(stderr=True)
    try:
        with console.status(f"installing {config.name}'s packages: {listed}"):
            started = time.perf_counter()
            packages.install(config.dependencies)
    except packages.PackageError as error:
        raise CliError("FAILED_PRECONDITION", f"bundle {folder}: {error}") from None
    console.print(
        f"installed {config.name}'s packages ({listed}) in {time.perf_counter() - started:.1f} s",
        markup=False,
        highlight=False,
    )


# -- what the PoPs serve (pure) --------------------------------------------------------


@dataclass(frozen=True)
class PopWorkers:
    """What one PoP serves now: worker name -> loaded version; `error` when it did not answer."""

    node: str
    region: str
    loaded: dict[str, workers_pb2.LoadedWorker] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class Lag:
    """A PoP that does not serve the version: what it serves instead, or why unknown."""

    node: str
    has: str  # a short version, "nothing", or "unreachable: …"


@dataclass(frozen=True)
class Rollout:
    """One worker version over a set of PoPs."""

    name: str
    version: str
    ready: tuple[str, ...]
    lagging: tuple[Lag, ...]
    cold_start_ms: tuple[float, ...]

    @property
    def total(self) -> int:
        return len(self.ready) + len(self.lagging)

    @property
    def done(self) -> bool:
        return not self.lagging

    @property
    def coverage(self) -> str:
        return f"{len(self.ready)}/{self.total} PoPs"

    def lag_text(self) -> str:
        return ", ".join(f"{lag.node} ({lag.has})" for lag in self.lagging)

    def to_json(self) -> dict[str, Any]:
        return {
            "pops_total": self.total,
            "pops_ready": list(self.ready),
            "lagging": [{"node": lag.node, "has": lag.has} for lag in self.lagging],
            "cold_start_ms": cold_start_json(self.cold_start_ms),
        }


def rollout(name: str, version: str, pops: Sequence[PopWorkers]) -> Rollout:
    ready: list[str] = []
    lagging: list[Lag] = []
    cold: list[float] = []
    for pop in pops:
        loaded = pop.loaded.get(name)
        if pop.error:
            lagging.append(Lag(pop.node, f"unreachable: {pop.error}"))
        elif loaded is not None and loaded.version == version:
            ready.append(pop.node)
            cold.append(loaded.cold_start_ms)
        else:
            lagging.append(Lag(pop.node, short(loaded.version) if loaded else "nothing"))
    return Rollout(name, version, tuple(ready), tuple(lagging), tuple(cold))


def cold_start_json(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


@dataclass(frozen=True)
class VersionRow:
    """One stored version of a worker and the PoPs serving it now."""

    version: workers_pb2.WorkerVersion
    rollout: Rollout


@dataclass(frozen=True)
class WorkerSummary:
    name: str
    active: str  # the active version ("" when none is)
    versions: tuple[VersionRow, ...]  # newest first

    @property
    def active_rollout(self) -> Rollout | None:
        for row in self.versions:
            if row.version.active:
                return row.rollout
        return None

    def to_json(self) -> dict[str, Any]:
        active = next((row for row in self.versions if row.version.active), None)
        return {
            "name": self.name,
            "active_version": self.active,
            "routes": list(active.version.routes) if active else [],
            "deployed_at": active.version.deployed_at if active else None,
            **(active.rollout.to_json() if active else {}),
            "versions": [
                {
                    "version": row.version.version,
                    "active": row.version.active,
                    "deployed_at": row.version.deployed_at,
                    "routes": list(row.version.routes),
                    "pops": list(row.rollout.ready),
                }
                for row in self.versions
            ],
        }


def summarize(
    versions: Sequence[workers_pb2.WorkerVersion], pops: Sequence[PopWorkers]
) -> list[WorkerSummary]:
    """Per worker (by name): its versions, newest first, each with where it runs."""
    by_name: dict[str, list[workers_pb2.WorkerVersion]] = {}
    for version in versions:
        by_name.setdefault(version.name, []).append(version)
    summaries = []
    for name in sorted(by_name):
        ordered = sorted(by_name[name], key=lambda v: -v.deployed_at)
        rows = tuple(VersionRow(v, rollout(name, v.version, pops)) for v in ordered)
        active = next((v.version for v in ordered if v.active), "")
        summaries.append(WorkerSummary(name, active, rows))
    return summaries


# -- polling the PoPs (I/O) ------------------------------------------------------------


def healthy_pops(client: EdgeClient) -> list[cp_pb2.NodeInfo]:
    return [info for info in client.list_nodes() if info.role == cp_pb2.ROLE_POP and info.healthy]


def poll_pops(client: EdgeClient, pops: Sequence[cp_pb2.NodeInfo]) -> list[PopWorkers]:
    """What each PoP serves now (all asked at once)."""
    statuses = client.pop_statuses(pops, STATUS_TIMEOUT_S)
    result = []
    for info in pops:
        status = statuses[info.name]
        if isinstance(status, CliError):
            result.append(PopWorkers(info.name, info.region, error=status.code))
        else:
            loaded = {worker.name: worker for worker in status.workers}
            result.append(PopWorkers(info.name, info.region, loaded))
    return result


def wait_rollouts(
    client: EdgeClient,
    wanted: Sequence[tuple[str, str]],
    pops: Sequence[cp_pb2.NodeInfo],
    timeout_s: float,
    progress: Callable[[list[Rollout]], None] | None = None,
) -> list[tuple[Rollout, float]]:
    """Poll until every PoP serves each (name, version) in `wanted`, or `timeout_s` passed.

    One poll of every PoP serves all versions at once, so deploying several workers
    waits about as long as deploying one. Returns, per wanted version, the rollout and
    the seconds until it was done (or the last one seen and the time given up at).
    """
    started = time.monotonic()
    finished: dict[int, tuple[Rollout, float]] = {}
    while True:
        serving = poll_pops(client, pops)
        elapsed = time.monotonic() - started
        current = [rollout(name, version, serving) for name, version in wanted]
        for index, seen in enumerate(current):
            if index not in finished and seen.done:
                finished[index] = (seen, elapsed)
        if progress is not None:
            progress(current)
        if len(finished) == len(wanted) or elapsed >= timeout_s:
            return [finished.get(index, (seen, elapsed)) for index, seen in enumerate(current)]
        time.sleep(ROLLOUT_POLL_S)
