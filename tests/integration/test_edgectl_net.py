"""`edgectl net` and `edgectl probe` end to end: output, JSON, errors.

Every command runs as `python -m edgectl …` in a subprocess, as a user's shell would run
it, against the shared default cluster. These tests check what the commands print and
how they fail, not delay accuracy (tests/integration/test_network.py does that); every
fault they set is healed in a `finally`, so the shared cluster is left as it was found.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.v1 import control_plane_pb2 as cp_pb2
from edgectl import cli
from edgectl.client import EdgeClient
from edgectl.launcher import Cluster
from tests.integration.cli import edgectl, edgectl_json

pytestmark = pytest.mark.cluster


def directed(faults: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(fault["from_region"], fault["to_region"]): fault for fault in faults}


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster, with every fault healed afterwards whatever the test did."""
    try:
        yield shared_cluster
    finally:
        with EdgeClient.for_data_dir(shared_cluster.data_dir) as client:
            client.clear_faults(cp_pb2.ClearFaultsRequest())


def test_delay_sets_both_directions_and_show_lists_it(cluster: Cluster) -> None:
    data_dir = cluster.data_dir
    set_reply = edgectl_json(
        data_dir, "net", "delay", "tokyo", "us-east-1", "50ms", "--jitter", "5"
    )
    faults = directed(set_reply["faults"])
    assert set(faults) == {("tokyo", "us-east-1"), ("us-east-1", "tokyo")}
    for fault in faults.values():
        assert fault["delay_ms"] == 50.0 and fault["jitter_ms"] == 5.0
        assert fault["loss"] == 0.0 and fault["partitioned"] is False
        assert fault["expires_at"] is None and fault["heals_in_s"] is None
    assert directed(edgectl_json(data_dir, "net", "show")["faults"]) == faults

    # The table: one row for a pair faulted alike both ways, values in ms.
    shown = edgectl(data_dir, "net", "show")
    assert shown.returncode == 0, shown.stderr
    assert "tokyo <-> us-east-1" in shown.stdout
    assert "+50 ms" in shown.stdout and "5 ms" in shown.stdout
    assert "until healed" in shown.stdout

    healed = edgectl_json(data_dir, "net", "heal", "tokyo", "us-east-1")
    assert healed["faults"] == []
    assert edgectl_json(data_dir, "net", "show")["faults"] == []


def test_each_command_changes_only_its_own_field(cluster: Cluster) -> None:
    data_dir = cluster.data_dir
    edgectl_json(data_dir, "net", "delay", "london", "us-east-1", "0.01s")
    edgectl_json(data_dir, "net", "loss", "london", "us-east-1", "20%")
    reply = edgectl_json(data_dir, "net", "jitter", "london", "us-east-1", "3", "--one-way")
    faults = directed(reply["faults"])
    there = faults[("london", "us-east-1")]
    back = faults[("us-east-1", "london")]
    assert (there["delay_ms"], there["jitter_ms"], there["loss"]) == (10.0, 3.0, 0.2)
    assert (back["delay_ms"], back["jitter_ms"], back["loss"]) == (10.0, 0.0, 0.2)

    # Differing directions show as two one-way rows; loss as a percentage.
    shown = edgectl(data_dir, "net", "show")
    assert "london -> us-east-1" in shown.stdout and "us-east-1 -> london" in shown.stdout
    assert "20%" in shown.stdout

    one_way = edgectl_json(data_dir, "net", "heal", "london", "us-east-1", "--one-way")
    assert set(directed(one_way["faults"])) == {("us-east-1", "london")}


def test_partition_for_a_duration_reports_when_it_heals(cluster: Cluster) -> None:
    data_dir = cluster.data_dir
    before = time.time()
    reply = edgectl_json(data_dir, "net", "partition", "sydney", "us-east-1", "--for", "2m")
    faults = directed(reply["faults"])
    assert all(fault["partitioned"] for fault in faults.values()) and len(faults) == 2
    for fault in faults.values():
        assert before + 120 <= fault["expires_at"] <= time.time() + 120
        assert 110 < fault["heals_in_s"] <= 120

    # Human output: what changed on stderr, the table on stdout.
    human = edgectl(data_dir, "net", "partition", "sydney", "us-east-1", "--for", "90s")
    assert human.returncode == 0, human.stderr
    assert "sydney <-> us-east-1: partitioned for 90 s" in human.stderr
    assert "partitioned" in human.stdout
    assert re.search(r"in (89|90)\.\d s", human.stdout), human.stdout

    everything = edgectl(data_dir, "net", "heal")
    assert everything.returncode == 0, everything.stderr
    assert "healed every link" in everything.stderr
    assert "no link faults in force" in everything.stdout


def test_show_matrix_prints_the_base_rtt_of_every_pair(cluster: Cluster) -> None:
    data_dir = cluster.data_dir
    data = edgectl_json(data_dir, "net", "show", "--matrix")
    matrix = data["matrix"]
    assert matrix["origin_region"] == "us-east-1"
    assert matrix["rtt_ms"]["tokyo"]["us-east-1"] == 170.0
    assert matrix["rtt_ms"]["us-east-1"]["sydney"] == 210.0
    assert matrix["rtt_ms"]["tokyo"]["tokyo"] == 8.0  # a client to its own PoP
    assert set(matrix["rtt_ms"]) == set(matrix["regions"])

    edgectl_json(data_dir, "net", "delay", "mumbai", "us-east-1", "10")
    table = edgectl(data_dir, "net", "show", "--matrix")
    assert table.returncode == 0, table.stderr
    assert "base round-trip time (ms)" in table.stdout
    assert "190*" in table.stdout  # the faulted pair is marked
    assert "170" in table.stdout and "mumbai <-> us-east-1" in table.stdout


def test_unknown_region_exits_1_with_invalid_argument(cluster: Cluster) -> None:
    data_dir = cluster.data_dir
    for args in (
        ("net", "delay", "mars", "us-east-1", "10ms"),
        ("net", "partition", "tokyo", "atlantis"),
        ("net", "heal", "mars", "tokyo"),
        ("probe", "--region", "mars", "--calls", "1"),
    ):
        result = edgectl(data_dir, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("error: INVALID_ARGUMENT: "), (args, result.stderr)
        assert "mars" in result.stderr or "atlantis" in result.stderr
        assert "Traceback" not in result.stderr
    assert edgectl_json(data_dir, "net", "show")["faults"] == []


def test_bad_values_are_refused_before_anything_is_sent(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Argument errors exit 2 with argparse's usage message, before any call is made.
    Checked in-process (the same `main` the console script runs) to spare an interpreter
    start per case; one case runs as a subprocess for the real exit status."""
    data_dir = str(cluster.data_dir)
    cases = {
        ("net", "loss", "tokyo", "us-east-1", "20"): "give a fraction (0.2) or a percentage",
        ("net", "loss", "tokyo", "us-east-1", "99%"): "loss must be at most",
        ("net", "delay", "tokyo", "us-east-1", "fast"): "is not a time in ms",
        ("net", "delay", "tokyo", "us-east-1", "5", "--for", "0s"): "more than 0",
        ("net", "jitter", "tokyo", "us-east-1", "-3"): "is not a time in ms",
    }
    for args, message in cases.items():
        with pytest.raises(SystemExit) as exited:
            cli.main(["--data-dir", data_dir, *args])
        assert exited.value.code == 2, args
        assert message in capsys.readouterr().err, args
    for args in (("net", "heal", "tokyo"), ("probe", "--calls", "0")):
        assert cli.main(["--data-dir", data_dir, *args]) == 1
        assert capsys.readouterr().err.startswith("error: INVALID_ARGUMENT: "), args

    real = edgectl(cluster.data_dir, "net", "loss", "tokyo", "us-east-1", "20")
    assert real.returncode == 2 and "give a fraction" in real.stderr
    assert edgectl_json(cluster.data_dir, "net", "show")["faults"] == []


def test_without_the_cluster_token_fault_commands_say_what_is_missing(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A data dir without cluster.token: a clear error naming the file, nothing sent;
    reading (`net show`) needs no token. A wrong token is refused by the control plane."""
    address = cluster.control_plane.grpc_address
    no_token = tmp_path / "elsewhere"
    no_token.mkdir()
    result = edgectl(no_token, "--control-plane", address, "net", "partition", "tokyo", "london")
    assert result.returncode == 1
    assert result.stderr.startswith("error: UNAUTHENTICATED: no cluster token at ")
    assert str(no_token / "cluster.token") in result.stderr
    heal = edgectl(no_token, "--control-plane", address, "net", "heal")
    assert heal.returncode == 1 and "no cluster token" in heal.stderr
    shown = edgectl(no_token, "--control-plane", address, "net", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["faults"] == []

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "cluster.token").write_text("not-the-token\n")
    refused = edgectl(wrong, "--control-plane", address, "net", "delay", "tokyo", "london", "5")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: UNAUTHENTICATED: ")
    assert edgectl_json(cluster.data_dir, "net", "show")["faults"] == []


def test_probe_prints_the_table_and_the_headline(cluster: Cluster) -> None:
    result = edgectl(cluster.data_dir, "probe", "--region", "tokyo", "london", "--calls", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "median of 5 calls" in out
    assert "Tokyo" in out and "London" in out and "origin: us-east-1" in out
    assert "For a page that makes 5 sequential API calls, a user in Tokyo saves" in out
    assert "probed 2 regions" in result.stderr

    rows = edgectl_json(cluster.data_dir, "probe", "--region", "new-york", "--calls", "3")
    assert [row["region"] for row in rows] == ["new-york"]
    row = rows[0]
    assert row["calls"] == 3 and row["pop"].startswith("new-york-")
    assert row["edge_target_ms"] == 2.0 and row["origin_target_ms"] == 5.0
    assert row["sequential_saving_target_ms"] == 15.0
    for key in ("edge_ms", "origin_ms", "saving_ms", "edge_deviation_pct", "within_tolerance"):
        assert key in row
