"""Running the real `edgectl` CLI from tests, as a user's shell runs it."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from edgectl.launcher import Cluster, ClusterError

# Generous: a probe of the whole default cluster, or a start under load, takes a while.
COMMAND_TIMEOUT_S = 120.0


def edgectl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def edgectl_json(data_dir: Path, *args: str) -> Any:
    """The command's --json output (it must succeed)."""
    result = edgectl(data_dir, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def origin_and_pops(*pop_regions: str, **extra: Any) -> dict[str, Any]:
    """A topology: the origin's region (us-east-1) and one PoP in each of `pop_regions`;
    `extra` adds top-level fields (e.g. `kv_namespaces`)."""
    regions = [{"name": "us-east-1"}, *({"name": name, "pop_nodes": 1} for name in pop_regions)]
    return {"regions": regions, **extra}


@contextlib.contextmanager
def cluster_up(
    directory: Path, topology: dict[str, Any], worker_dirs: Sequence[Path] = ()
) -> Iterator[tuple[Cluster, str]]:
    """`edgectl cluster up --detach` of `topology` with these workers deployed, as a user
    runs it; yields the cluster and the command's stderr, and stops every node after."""
    topology_file = directory / "topology.yaml"
    topology_file.write_text(yaml.safe_dump(topology))
    workers = [arg for folder in worker_dirs for arg in ("--workers", str(folder))]
    try:
        started = edgectl(
            directory, "cluster", "up", "--detach", "--topology", str(topology_file), *workers
        )
        assert started.returncode == 0, started.stderr
        yield Cluster.open(directory), started.stderr
    finally:
        edgectl(directory, "cluster", "down")
        with contextlib.suppress(ClusterError):
            Cluster.open(directory).down()


def write_wrangler_worker(folder: Path, config: dict[str, Any], entry: str) -> Path:
    """A Cloudflare-style worker folder: wrangler.jsonc and its `main` module."""
    main = folder / config["main"]
    main.parent.mkdir(parents=True, exist_ok=True)
    main.write_text(entry)
    (folder / "wrangler.jsonc").write_text(json.dumps(config))
    return folder
