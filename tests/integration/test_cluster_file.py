"""`cluster.json` under concurrent edgectl processes: no pid is lost, no node left behind.

Issue 17: parallel `edgectl node start`s each rewrote the whole file from what they had
read, so the last writer put back the others' old pids; `node kill` then said "not
running", `cluster down` left those nodes running. Every command here is the real CLI in
a subprocess; what is running is checked by PID from each node's data dir and by
scanning /proc for processes whose command line holds the cluster's data dir.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgectl.launcher import Cluster, ClusterError, pid_alive
from edgepop.lifecycle import READY_FILE_NAME
from tests.conftest import FAST_TOPOLOGY
from tests.integration.cli import COMMAND_TIMEOUT_S, edgectl
from tests.integration.processes import processes_holding

pytestmark = pytest.mark.cluster

POPS = ["tokyo-1", "tokyo-2", "london-1"]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "cluster"
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump(FAST_TOPOLOGY))
    try:
        up = edgectl(directory, "cluster", "up", "--detach", "--topology", str(topology))
        assert up.returncode == 0, up.stderr
        yield directory
    finally:
        with contextlib.suppress(ClusterError):
            Cluster.open(directory).down()


def _state(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((data_dir / "cluster.json").read_text())
    return state


def _ready_pids(data_dir: Path) -> dict[str, int]:
    """The pid each running node wrote in its own ready file."""
    pids = {}
    for name in _state(data_dir)["nodes"]:
        with contextlib.suppress(FileNotFoundError):
            pids[name] = json.loads((data_dir / name / READY_FILE_NAME).read_text())["pid"]
    return pids


def _start_in_parallel(data_dir: Path, names: list[str]) -> list[subprocess.CompletedProcess[str]]:
    starts = [
        subprocess.Popen(
            [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), "node", "start", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = []
    for start in starts:
        stdout, stderr = start.communicate(timeout=COMMAND_TIMEOUT_S)
        results.append(subprocess.CompletedProcess(start.args, start.returncode, stdout, stderr))
    return results


def test_parallel_node_starts_keep_every_pid_and_down_leaves_nothing_running(
    data_dir: Path,
) -> None:
    for name in POPS:
        stopped = edgectl(data_dir, "node", "stop", name)
        assert stopped.returncode == 0, stopped.stderr

    for result in _start_in_parallel(data_dir, POPS):
        assert result.returncode == 0, result.stderr

    # Every start is recorded: the file's pid is the one the node itself reports.
    recorded = {name: node["pid"] for name, node in _state(data_dir)["nodes"].items()}
    ready = _ready_pids(data_dir)
    assert set(ready) == set(recorded)
    assert recorded == ready and all(pid_alive(pid) for pid in ready.values())

    killed = edgectl(data_dir, "node", "kill", "tokyo-1")
    assert killed.returncode == 0, killed.stderr
    assert f"killed tokyo-1 (pid {ready['tokyo-1']})" in killed.stdout
    assert not pid_alive(ready["tokyo-1"])
    again = edgectl(data_dir, "node", "kill", "tokyo-1")
    assert again.returncode == 0 and "tokyo-1 is not running" in again.stdout

    down = edgectl(data_dir, "cluster", "down")
    assert down.returncode == 0, down.stderr
    assert [name for name, pid in ready.items() if pid_alive(pid)] == []
    assert processes_holding(data_dir) == {}


def test_kill_of_a_running_node_the_file_lost_is_an_error_and_down_still_stops_it(
    data_dir: Path,
) -> None:
    """A cluster.json written by something that lost a pid (as the old race did)."""
    pid = _ready_pids(data_dir)["london-1"]
    state = _state(data_dir)
    state["nodes"]["london-1"]["pid"] = 0
    (data_dir / "cluster.json").write_text(json.dumps(state))

    killed = edgectl(data_dir, "node", "kill", "london-1")
    assert killed.returncode == 1
    assert f"london-1 is running as pid {pid}" in killed.stderr
    assert "cluster.json records no pid" in killed.stderr
    assert pid_alive(pid), "refused: nothing was killed"
    started = edgectl(data_dir, "node", "start", "london-1")
    assert started.returncode == 1 and f"already running (pid {pid})" in started.stderr

    down = edgectl(data_dir, "cluster", "down")
    assert down.returncode == 0, down.stderr
    assert not pid_alive(pid)
    assert processes_holding(data_dir) == {}
