"""Nodes of a foreground `edgectl cluster up` never outlive it; a detached cluster's do.

Every launcher here is the real CLI in a subprocess, as `make cluster` runs it, on a
three-node topology (control plane, origin, one PoP) to keep the machine free. Nodes are
found by the pids the launcher recorded and by their ready files; the safety net at the
end stops whatever a failed test left, by PID.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from edgectl.launcher import Cluster, ClusterError, pid_alive
from edgepop.lifecycle import LAUNCHER_ENV
from tests.conftest import poll_until
from tests.integration.cli import edgectl, edgectl_json
from tests.integration.processes import processes_holding

pytestmark = pytest.mark.cluster

TOPOLOGY: dict[str, Any] = {
    "emulate_delay": False,
    "regions": [{"name": "us-east-1"}, {"name": "london", "pop_nodes": 1}],
}
NODE_NAMES = {"control-plane", "origin", "london-1"}
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "cluster"
    yield directory
    # Whatever happened, no process of this cluster survives the test.
    with contextlib.suppress(ClusterError):
        Cluster.open(directory).down()


def _topology(tmp_path: Path) -> Path:
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(TOPOLOGY))
    return path


def _foreground(
    tmp_path: Path, data_dir: Path, stdout: int | IO[Any], stderr: int | IO[Any]
) -> subprocess.Popen[bytes]:
    """`edgectl cluster up` without --detach: the launcher `make cluster` runs."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "edgectl", "cluster", "up"),
            *("--data-dir", str(data_dir), "--topology", str(_topology(tmp_path))),
        ],
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def _serving_pids(data_dir: Path) -> dict[str, int] | None:
    """Every node's pid once all are healthy (None before)."""
    try:
        rows = Cluster.open(data_dir).status()
    except (ClusterError, ValueError):
        return None
    if {row["name"] for row in rows} != NODE_NAMES or not all(row["healthy"] for row in rows):
        return None
    return {row["name"]: row["pid"] for row in rows}


def _environ(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


def _close_reasons(data_dir: Path) -> dict[str, list[str]]:
    """What each node's log says it closed for ("closing (SIGTERM)" → "SIGTERM")."""
    reasons = {}
    for name in NODE_NAMES:
        log = (data_dir / "logs" / f"{name}.log").read_text()
        reasons[name] = [
            line.split("closing (", 1)[1].rstrip(")")
            for line in log.splitlines()
            if "closing (" in line
        ]
    return reasons


def _all_exited(pids: list[int]) -> bool:
    return not any(pid_alive(pid) for pid in pids)


def test_foreground_nodes_stop_cleanly_when_the_launcher_is_killed(
    tmp_path: Path, data_dir: Path
) -> None:
    with (tmp_path / "stderr").open("wb") as err:
        launcher = _foreground(tmp_path, data_dir, subprocess.DEVNULL, err)
    try:
        poll_until(lambda: _serving_pids(data_dir), timeout=START_TIMEOUT_S, what="serving")
        # A node restarted by another edgectl belongs to the foreground launcher too.
        assert edgectl(data_dir, "node", "stop", "london-1").returncode == 0
        restarted = edgectl(data_dir, "node", "start", "london-1")
        assert restarted.returncode == 0, restarted.stderr
        pids = poll_until(lambda: _serving_pids(data_dir), timeout=START_TIMEOUT_S, what="again")
        for pid in pids.values():
            assert f"{LAUNCHER_ENV}={launcher.pid}:".encode() in _environ(pid)

        launcher.kill()  # SIGKILL: no handler runs, nothing is stopped by the launcher
        launcher.wait()
        poll_until(
            lambda: _all_exited(list(pids.values())),
            timeout=STOP_TIMEOUT_S,
            what="every node gone after its launcher",
        )
        # The zygote too, once it has no node left to reap: nothing of the cluster runs.
        poll_until(
            lambda: processes_holding(data_dir) == {}, timeout=STOP_TIMEOUT_S, what="no process"
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    # Each drained and closed its store, as on SIGTERM.
    assert {
        name: reasons[-1] for name, reasons in _close_reasons(data_dir).items()
    } == dict.fromkeys(NODE_NAMES, "launcher gone")


def test_foreground_launcher_whose_output_pipe_closed_stops_every_node_on_ctrl_c(
    tmp_path: Path, data_dir: Path
) -> None:
    """`make cluster 2>&1 | tee log`, then Ctrl-C: tee goes first, the launcher gets EPIPE."""
    launcher = _foreground(tmp_path, data_dir, subprocess.PIPE, subprocess.PIPE)
    assert launcher.stdout is not None and launcher.stderr is not None
    try:
        heard = bytearray()
        os.set_blocking(launcher.stderr.fileno(), False)

        def live_view_running() -> bool:
            with contextlib.suppress(BlockingIOError):
                heard.extend(os.read(launcher.stderr.fileno(), 65536))  # type: ignore[union-attr]
            return b"stops every node" in heard

        poll_until(live_view_running, timeout=START_TIMEOUT_S, what="the live view running")
        pids = poll_until(lambda: _serving_pids(data_dir), timeout=START_TIMEOUT_S, what="serving")
        # The reader is gone: every write of the launcher from now on fails with EPIPE.
        launcher.stdout.close()
        launcher.stderr.close()
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=STOP_TIMEOUT_S)
        assert _all_exited(list(pids.values()))
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    # The launcher itself stopped them (SIGTERM from `cluster down`'s path), not their
    # own watch after it died of the broken pipe.
    assert {
        name: reasons[-1] for name, reasons in _close_reasons(data_dir).items()
    } == dict.fromkeys(NODE_NAMES, "SIGTERM")


def test_detached_cluster_keeps_serving_after_edgectl_exits(tmp_path: Path, data_dir: Path) -> None:
    up = edgectl(data_dir, "cluster", "up", "--detach", "--topology", str(_topology(tmp_path)))
    assert up.returncode == 0, up.stderr  # the edgectl that started the nodes has exited
    pids = poll_until(lambda: _serving_pids(data_dir), timeout=START_TIMEOUT_S, what="serving")
    for pid in pids.values():
        assert LAUNCHER_ENV.encode() not in _environ(pid)

    # Work that crosses every node after the launcher is gone: a write at the origin,
    # replicated to the PoP, read there.
    put = edgectl_json(data_dir, "kv", "put", "--origin", "after-launcher", "still-here")
    got = poll_until(
        lambda: (
            (got := edgectl_json(data_dir, "kv", "get", "--pop", "london-1", "after-launcher"))
            and got["found"]
            and got
        ),
        timeout=10,
        what="the write replicated to london-1",
    )
    assert got["value"] == "still-here" and got["applied_seq"] >= put["seq"]
    assert _serving_pids(data_dir) == pids
    assert all(reasons == [] for reasons in _close_reasons(data_dir).values())
