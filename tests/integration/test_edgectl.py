"""edgectl end to end: the real command line against small clusters of real processes.

Every command runs as `python -m edgectl …` in a subprocess, exactly as a user's shell
would run it; a module-wide cluster is started with `edgectl cluster up --detach` and
stopped with `edgectl cluster down` (then by PID, whatever happened). Tests that stop
whole clusters start their own.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from edgectl import views
from edgectl.client import ClusterMonitor, NodeSample
from edgectl.launcher import Cluster, ClusterError, pid_alive
from tests.conftest import FAST_TOPOLOGY, poll_until
from tests.integration.cli import edgectl, edgectl_json

pytestmark = pytest.mark.cluster

STATUS_KEYS = {
    "name",
    "role",
    "region",
    "pid",
    "grpc_address",
    "http_address",
    "metrics_address",
    "healthy",
}
NODE_NAMES = {"control-plane", "origin", "tokyo-1", "tokyo-2", "london-1"}


def write_topology(directory: Path) -> Path:
    path = directory / "topology.yaml"
    path.write_text(yaml.safe_dump(FAST_TOPOLOGY))
    return path


def stop_by_pid(data_dir: Path) -> None:
    """The safety net behind `cluster down`: whatever a test did, no process survives."""
    with contextlib.suppress(ClusterError):
        Cluster.open(data_dir).down()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("edgectl")
    topology = write_topology(directory)
    try:
        result = edgectl(directory, "cluster", "up", "--detach", "--topology", str(topology))
        assert result.returncode == 0, result.stderr
        yield directory
    finally:
        edgectl(directory, "cluster", "down")
        stop_by_pid(directory)


def status(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in edgectl_json(data_dir, "cluster", "status")}


def test_status_json_lists_every_node_healthy_with_the_contract_keys(data_dir: Path) -> None:
    rows = edgectl_json(data_dir, "cluster", "status")
    assert {row["name"] for row in rows} == NODE_NAMES
    for row in rows:
        assert set(row) == STATUS_KEYS
        assert row["healthy"] is True
        assert row["pid"] > 0 and pid_alive(row["pid"])
        assert row["grpc_address"] and row["metrics_address"]


def test_prometheus_config_scrapes_every_node(data_dir: Path) -> None:
    config = yaml.safe_load((data_dir / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    assert targets == {row["metrics_address"] for row in status(data_dir).values()}


def test_put_from_tokyo_is_read_from_london_after_propagation(data_dir: Path) -> None:
    key = f"greeting-{uuid.uuid4().hex}"
    put = edgectl_json(data_dir, "kv", "put", "--from", "tokyo", key, "hello")
    assert put["seq"] > 0
    assert put["node"] in ("tokyo-1", "tokyo-2") and put["from_region"] == "tokyo"
    assert put["latency_ms"] > 0

    def read_in_london() -> Any:
        got = edgectl_json(data_dir, "kv", "get", "--from", "london", key)
        return got if got["found"] else None

    got = poll_until(read_in_london, timeout=10, what=f"{key} at london")
    assert got["value"] == "hello" and got["value_encoding"] == "utf-8"
    assert got["node"] == "london-1" and got["applied_seq"] >= put["seq"]

    # Human output: the raw value on stdout, where it was read and how fast on stderr.
    human = edgectl(data_dir, "kv", "get", "--from", "london", key)
    assert human.returncode == 0, human.stderr
    assert human.stdout == "hello"
    assert "london-1" in human.stderr and " ms" in human.stderr


def test_kv_json_outputs_carry_metadata_expiration_binary_values_and_pages(
    data_dir: Path, tmp_path: Path
) -> None:
    prefix = f"json-{uuid.uuid4().hex}/"
    put = edgectl_json(
        data_dir, "kv", "put", "--origin", "-n", "app", f"{prefix}a", "1",
        "--metadata", '{"owner": "ops"}', "--ttl", "3600",
    )  # fmt: skip
    got = edgectl_json(data_dir, "kv", "get", "--origin", "-n", "app", f"{prefix}a")
    assert got["found"] and got["metadata"] == {"owner": "ops"}
    assert got["expiration"] > time.time() + 3000
    assert got["node"] == "origin" and got["applied_seq"] >= put["seq"]

    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\x00edge")
    edgectl_json(
        data_dir, "kv", "put", "--origin", "-n", "app", f"{prefix}b", "--file", str(binary)
    )
    got = edgectl_json(data_dir, "kv", "get", "--consistency", "strong", "-n", "app", f"{prefix}b")
    assert got["value_encoding"] == "base64" and got["value"] == "/wBlZGdl"

    listing = edgectl_json(
        data_dir, "kv", "list", "--origin", "-n", "app", "--prefix", prefix, "--limit", "1", "--all"
    )
    assert [key["name"] for key in listing["keys"]] == [f"{prefix}a", f"{prefix}b"]
    assert listing["list_complete"] and listing["pages"] >= 2

    deleted = edgectl_json(data_dir, "kv", "delete", "--origin", "-n", "app", f"{prefix}a")
    assert deleted["seq"] > put["seq"]
    gone = edgectl_json(data_dir, "kv", "get", "--origin", "-n", "app", f"{prefix}a")
    assert gone["found"] is False and gone["value"] is None
    missing = edgectl(data_dir, "kv", "get", "--origin", "-n", "app", f"{prefix}a")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr


def test_bad_requests_exit_1_with_the_status_code_and_no_traceback(data_dir: Path) -> None:
    too_long = edgectl(data_dir, "kv", "get", "--from", "tokyo", "k" * 600)
    assert too_long.returncode == 1
    assert "error: INVALID_ARGUMENT" in too_long.stderr
    assert "Traceback" not in too_long.stderr

    nowhere = edgectl(data_dir, "kv", "put", "--from", "atlantis", "key", "value")
    assert nowhere.returncode == 1 and "INVALID_ARGUMENT" in nowhere.stderr

    no_node = edgectl(data_dir, "kv", "get", "--pop", "mars-1", "key")
    assert no_node.returncode == 1 and "NOT_FOUND" in no_node.stderr
    assert "Traceback" not in nowhere.stderr + no_node.stderr


def test_node_stop_then_start_shows_unhealthy_then_healthy(data_dir: Path) -> None:
    before = status(data_dir)["tokyo-2"]
    stopped = edgectl(data_dir, "node", "stop", "tokyo-2")
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_alive(before["pid"])
    poll_until(
        lambda: status(data_dir)["tokyo-2"]["healthy"] is False, timeout=5, what="tokyo-2 down"
    )

    started = edgectl(data_dir, "node", "start", "tokyo-2")
    assert started.returncode == 0, started.stderr
    after = poll_until(
        lambda: (row := status(data_dir)["tokyo-2"])["healthy"] and row,
        timeout=5,
        what="tokyo-2 healthy again",
    )
    assert after["pid"] != before["pid"]
    # Restarted on the same ports: clients and peers keep finding it.
    assert after["grpc_address"] == before["grpc_address"]


def test_nodes_json_is_the_control_plane_registry(data_dir: Path) -> None:
    infos = poll_until(
        lambda: (infos := edgectl_json(data_dir, "nodes")) and all(i["healthy"] for i in infos)
        and infos,
        timeout=5,
        what="every node healthy in the registry",
    )  # fmt: skip
    assert {info["name"] for info in infos} == NODE_NAMES
    roles = {info["name"]: info["role"] for info in infos}
    assert roles["control-plane"] == "control_plane" and roles["origin"] == "origin"
    assert roles["london-1"] == "pop"
    for info in infos:
        assert {"name", "role", "region", "healthy", "grpc_address", "metrics_address"} <= set(info)


def test_live_view_shows_seq_lag_request_rate_and_cpu_of_each_node(data_dir: Path) -> None:
    cluster = Cluster.open(data_dir)
    with futures.ThreadPoolExecutor(max_workers=len(NODE_NAMES) + 1) as pool:
        monitor = ClusterMonitor(cluster, pool)
        try:
            monitor.sample()  # the first scrape is the baseline of every rate
            key = f"live-{uuid.uuid4().hex}"
            put = edgectl_json(data_dir, "kv", "put", "--pop", "london-1", key, "v")

            def served_and_applied() -> dict[str, NodeSample] | None:
                rows = {row.name: row for row in monitor.sample()}
                london = rows["london-1"]
                done = london.requests_per_s and (london.seq or 0) >= put["seq"]
                # CPU is a rate between two samples of /proc: known from the second on.
                done = done and all(row.cpu_percent is not None for row in rows.values())
                return rows if done else None

            rows = poll_until(served_and_applied, timeout=10, what="london-1 traffic in the view")
        finally:
            monitor.close()
    assert set(rows) == NODE_NAMES
    assert all(row.alive and row.healthy for row in rows.values())
    assert (rows["origin"].seq or 0) >= put["seq"]
    assert rows["london-1"].lag_s is not None
    # Every live node ran (its Status answered) and its wait is a share of a second.
    for row in rows.values():
        assert row.cpu_percent is not None and row.cpu_wait_percent is not None
        assert row.cpu_wait_percent >= 0 and 0 <= row.cpu_percent <= 100 * os.cpu_count()
    assert rows["london-1"].cpu_percent > 0
    screen = Console(record=True, width=240, file=io.StringIO())
    screen.print(views.live_view(list(rows.values()), data_dir, time.monotonic()))
    text = screen.export_text()
    assert all(name in text for name in NODE_NAMES) and "req/s" in text
    assert "cpu wait" in text


def test_cluster_down_leaves_no_process_alive(tmp_path: Path) -> None:
    topology = write_topology(tmp_path)
    try:
        up = edgectl(tmp_path, "cluster", "up", "--detach", "--topology", str(topology), "--json")
        assert up.returncode == 0, up.stderr
        pids = [row["pid"] for row in json.loads(up.stdout)]
        assert len(pids) == len(NODE_NAMES) and all(pid_alive(pid) for pid in pids)

        down = edgectl(tmp_path, "cluster", "down")
        assert down.returncode == 0, down.stderr
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert all(row["pid"] == 0 for row in edgectl_json(tmp_path, "cluster", "status"))
    finally:
        stop_by_pid(tmp_path)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_foreground_cluster_up_stops_every_node_on_signal(
    tmp_path: Path, signum: signal.Signals
) -> None:
    topology = write_topology(tmp_path)
    data_dir = tmp_path / "cluster"
    with (tmp_path / "stdout").open("wb") as out, (tmp_path / "stderr").open("wb") as err:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "edgectl", "cluster", "up"),
                *("--data-dir", str(data_dir), "--topology", str(topology)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:

        def all_healthy() -> list[int] | None:
            try:
                rows = Cluster.open(data_dir).status()
            except ClusterError:
                return None
            healthy = len(rows) == len(NODE_NAMES) and all(row["healthy"] for row in rows)
            return [row["pid"] for row in rows] if healthy else None

        pids = poll_until(all_healthy, timeout=30, what="foreground cluster healthy")
        # The launcher says when it is past Cluster.up: the signal must reach the live view.
        poll_until(
            lambda: "stops every node" in (tmp_path / "stderr").read_text(),
            what="the live view running",
        )
        assert process.poll() is None
        process.send_signal(signum)
        assert process.wait(timeout=30) == 0, (tmp_path / "stderr").read_text()
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert "every node stopped" in (tmp_path / "stderr").read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stop_by_pid(data_dir)
