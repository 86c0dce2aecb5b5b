"""`edgectl do` end to end: call, id, placements and connect against real processes.

The cluster is real processes with the seed's delays on (tokyo x2, london x1; the origin
and control plane in us-east-1), started once for the module with `cluster up --detach`.
What a user reads (human output, sessions on stdin/stdout) runs `python -m edgectl …` in
a subprocess, as a shell would; the many JSON checks call `edgectl.cli.main` in this
process (`Cli`), which is the same code without a Python start-up per command. Each test
uses objects of its own (names carry a uuid), so tests do not depend on order.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from edgectl import cli
from edgectl.launcher import Cluster, ClusterError
from edgepop import objectid

pytestmark = pytest.mark.cluster

COMMAND_TIMEOUT_S = 60.0
TOPOLOGY: dict[str, Any] = {
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}
TOKYO = {"tokyo-1", "tokyo-2"}
# A warm call from the owner's region: the edge RTT (tokyo: 8 ms) plus the standby sync
# and the handler; generous, because the machine is shared.
WARM_CALL_MS_MAX = 80.0


def edgectl_argv(data_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), *args]


def edgectl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real CLI; the caller checks the exit status."""
    return subprocess.run(
        edgectl_argv(data_dir, *args),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def fails_with(data_dir: Path, code: str, *args: str) -> str:
    """Run a command that must fail as `error: CODE: …` with exit 1; returns stderr."""
    result = edgectl(data_dir, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"error: {code}: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@dataclass
class Cli:
    """edgectl in this process: exit code, stdout and stderr of one command."""

    data_dir: Path
    capsys: pytest.CaptureFixture[str]

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli.main(["--data-dir", str(self.data_dir), *args])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, *args: str) -> Any:
        code, out, err = self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)

    def fails(self, code: str, *args: str) -> str:
        """A command that must fail as `error: CODE: …` with exit 1; returns stderr."""
        status, out, err = self.run(*args)
        assert status == 1, (out, err)
        assert err.startswith(f"error: {code}: "), err
        return err


@pytest.fixture
def edge(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(data_dir, capsys)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    directory = tmp_path_factory.mktemp("edgectl-do")
    topology = directory / "topology.yaml"
    topology.write_text(yaml.safe_dump(TOPOLOGY))
    try:
        result = edgectl(directory, "cluster", "up", "--detach", "--topology", str(topology))
        assert result.returncode == 0, result.stderr
        yield directory
    finally:
        edgectl(directory, "cluster", "down")
        with contextlib.suppress(ClusterError):
            Cluster.open(directory).down()


# -- do call ---------------------------------------------------------------------------


def test_call_places_the_counter_near_the_caller_and_returns_result_owner_epoch_id(
    edge: Cli, data_dir: Path
) -> None:
    name = unique("hits")
    first = edge.json("do", "call", "Counter", name, "increment", '{"by": 1}', "--from", "tokyo")
    assert first["result"] == 1
    assert first["node"] in TOKYO and first["epoch"] >= 1
    assert first["id"] == objectid.id_from_name("Counter", name).hex()
    assert first["from_region"] == "tokyo" and first["entry"] in TOKYO

    # Positional (array), one bare value, keyword (object): the same method.
    args = ("do", "call", "Counter", name, "increment")
    assert edge.json(*args, "[2]", "--from", "tokyo")["result"] == 3
    assert edge.json(*args, "5", "--from", "tokyo")["result"] == 8
    warm = edge.json(*args, '{"by": 2}', "--from", "tokyo")
    assert warm["result"] == 10 and warm["node"] == first["node"]
    assert warm["epoch"] == first["epoch"]
    assert 0 < warm["latency_ms"] < WARM_CALL_MS_MAX, warm

    # Human output, from a real shell: the result JSON alone on stdout, owner · epoch ·
    # latency on stderr.
    human = edgectl(data_dir, "do", "call", "Counter", name, "get", "--from", "tokyo")
    assert human.returncode == 0, human.stderr
    assert human.stdout == "10\n"
    assert re.search(rf"{first['node']} · epoch {first['epoch']} · .*[\d.]+ ms", human.stderr)


def test_a_call_entering_elsewhere_is_forwarded_to_the_one_owner(edge: Cli) -> None:
    name = unique("forwarded")
    owner = edge.json("do", "call", "Counter", name, "increment", "--from", "tokyo")
    london = edge.json("do", "call", "Counter", name, "increment", "--from", "london")
    assert london["entry"] == "london-1" and london["node"] == owner["node"]
    assert london["result"] == 2 and london["epoch"] == owner["epoch"]
    # London -> its PoP -> the owner in Tokyo: far more than London's 5 ms edge RTT.
    assert london["latency_ms"] > 50

    code, out, err = edge.run("do", "call", "Counter", name, "get", "--pop", "london-1")
    assert code == 0, err
    assert out == "2\n"
    assert f"{owner['node']} · epoch" in err and "via london-1 (london)" in err


def test_call_by_id_reaches_the_object_named_by_the_same_name(edge: Cli) -> None:
    name = unique("by-id")
    edge.json("do", "call", "Counter", name, "increment", "[7]", "--from", "london")
    code, out, err = edge.run("do", "id", "Counter", name)
    assert code == 0, err
    object_id = out.strip()
    assert object_id == objectid.id_from_name("Counter", name).hex()
    by_id = edge.json("do", "call", "Counter", "--id", object_id, "get")
    assert by_id["result"] == 7 and by_id["id"] == object_id


def test_location_hint_places_the_object_there_and_placements_list_it(
    edge: Cli, data_dir: Path
) -> None:
    name = unique("hinted")
    placed = edge.json(
        "do", "call", "Counter", name, "increment", "--from", "tokyo", "--location-hint", "london"
    )
    assert placed["node"] == "london-1"

    placements = edge.json("do", "placements")
    mine = [p for p in placements if p["id"] == placed["id"]]
    assert mine == [
        {
            "namespace": "Counter",
            "id": placed["id"],
            "owner": "london-1",
            "standby": mine[0]["standby"],
            "epoch": placed["epoch"],
        }
    ]
    # London has one node: the standby is the nearest PoP elsewhere.
    assert mine[0]["standby"] in TOKYO

    only_locks = edge.json("do", "placements", "--namespace", "Lock")
    assert all(p["namespace"] == "Lock" for p in only_locks)

    table = edgectl(data_dir, "do", "placements", "--namespace", "Counter")
    assert table.returncode == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if placed["id"][:12] in line)
    assert "london-1" in row and mine[0]["standby"] in row
    assert re.search(r"\d+ objects? placed", table.stderr)


def test_do_id_from_a_name_a_string_or_at_random(edge: Cli) -> None:
    named = edge.json("do", "id", "Lock", "door")
    assert named["id"] == objectid.id_from_name("Lock", "door").hex() and named["from"] == "name"
    checked = edge.json("do", "id", "Lock", "--string", named["id"])
    assert checked["id"] == named["id"]

    randoms = {edge.json("do", "id", "Lock", "--unique")["id"] for _ in range(2)}
    assert len(randoms) == 2
    for random_id in randoms:
        assert re.fullmatch(r"[0-9a-f]{64}", random_id)
        assert objectid.id_from_string("Lock", random_id).hex() == random_id

    # An id is tagged with its class: another class refuses it.
    wrong_class = edge.fails("INVALID_ARGUMENT", "do", "id", "Counter", "--string", named["id"])
    assert "namespace 'Counter'" in wrong_class
    edge.fails("INVALID_ARGUMENT", "do", "id", "Lock", "--string", "xyz")
    edge.fails("INVALID_ARGUMENT", "do", "id", "Lock")


def test_errors_exit_1_with_their_code_and_the_object_keeps_working(
    edge: Cli, data_dir: Path
) -> None:
    name = unique("errors")
    call = ("do", "call", "Counter", name)
    assert edge.json(*call, "increment", "--from", "tokyo")["result"] == 1

    # From a real shell: one line, the code, no traceback.
    remote = fails_with(
        data_dir, "UNKNOWN", *call, "increment", '{"by": "many"}', "--from", "tokyo"
    )
    assert "remote ValueError" in remote
    edge.fails("NOT_FOUND", "do", "call", "NoSuchClass", name, "get")
    edge.fails("UNIMPLEMENTED", *call, "explode")
    edge.fails("INVALID_ARGUMENT", *call, "increment", "{by: 1}")
    edge.fails("INVALID_ARGUMENT", *call)  # no METHOD
    edge.fails("INVALID_ARGUMENT", "do", "call", "Counter", "--id", "00ff", "get")
    # A hint matters (and is checked) when an object is placed, i.e. on its first call.
    edge.fails(
        "INVALID_ARGUMENT",
        *("do", "call", "Counter", unique("nowhere"), "get", "--location-hint", "atlantis"),
    )

    # The failed call changed nothing and the object still serves.
    assert edge.json(*call, "increment", "--from", "tokyo")["result"] == 2


def test_placements_need_the_cluster_token(edge: Cli, data_dir: Path, tmp_path: Path) -> None:
    address = Cluster.open(data_dir).control_plane.grpc_address
    elsewhere = Cli(tmp_path, edge.capsys)  # a data dir without the cluster token
    stderr = elsewhere.fails("UNAUTHENTICATED", "--control-plane", address, "do", "placements")
    assert "no cluster token" in stderr
    # Calls need no token: any client may call an object.
    opened = elsewhere.json("--control-plane", address, "do", "call", "Counter", unique("o"), "get")
    assert opened["result"] == 0


# -- do connect ------------------------------------------------------------------------


def read_json_line(stream: IO[str]) -> dict[str, Any]:
    line = stream.readline()
    assert line, "the session ended early"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def op(value: str) -> str:
    return json.dumps({"type": "op", "op": value})


def test_connect_sessions_see_every_op_in_one_order(edge: Cli, data_dir: Path) -> None:
    doc = unique("doc")
    # A listener in London that only joins (hello) and waits for three messages.
    listener = subprocess.Popen(
        edgectl_argv(
            data_dir, "do", "connect", "DocumentSession", doc, "--from", "london",
            "--send", json.dumps({"type": "hello", "last_seen": 0}),
            "--count", "3", "--json", "--timeout", "30",
        ),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert listener.stdout is not None
        opened = read_json_line(listener.stdout)
        assert opened["type"] == "opened" and opened["node"] == "london-1"
        assert opened["id"] == objectid.id_from_name("DocumentSession", doc).hex()

        # A writer in Tokyo: its own ops come back with their seqs (the acknowledgement),
        # then the session closes because its input ended.
        writer = edgectl(
            data_dir, "do", "connect", "DocumentSession", doc, "--from", "tokyo",
            "--send", op("a"), "--send", op("b"),
        )  # fmt: skip
        assert writer.returncode == 0, writer.stderr
        acks = [json.loads(line) for line in writer.stdout.splitlines()]
        assert [(m["seq"], m["op"]) for m in acks] == [(1, "a"), (2, "b")]
        assert "connected to DocumentSession/" in writer.stderr
        assert "via tokyo-" in writer.stderr and "closed: client disconnected" in writer.stderr

        # A plain call appends too and is broadcast to the sessions.
        call = edge.json("do", "call", "DocumentSession", doc, "apply", '["c"]')
        assert call["result"] == 3

        out, err = listener.communicate(timeout=COMMAND_TIMEOUT_S)
        assert listener.returncode == 0, err
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait()
    messages = [json.loads(line) for line in out.splitlines()]
    assert [m["type"] for m in messages] == ["data"] * 3
    seen = [json.loads(m["data"]) for m in messages]
    assert [(m["seq"], m["op"]) for m in seen] == [(1, "a"), (2, "b"), (3, "c")]

    # A late joiner asks for everything after seq 0 and gets the same history.
    late = edgectl(
        data_dir, "do", "connect", "DocumentSession", doc, "--pop", "tokyo-2",
        "--send", json.dumps({"type": "hello", "last_seen": 0}), "--count", "3",
    )  # fmt: skip
    assert late.returncode == 0, late.stderr
    assert [json.loads(line)["op"] for line in late.stdout.splitlines()] == ["a", "b", "c"]


def test_connect_sends_each_stdin_line_and_ends_at_eof(data_dir: Path) -> None:
    doc = unique("stdin")
    session = subprocess.Popen(
        edgectl_argv(data_dir, "do", "connect", "DocumentSession", doc, "--from", "tokyo"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert session.stdin is not None and session.stdout is not None
        session.stdin.write(op("first") + "\n")
        session.stdin.flush()
        first = read_json_line(session.stdout)
        assert (first["seq"], first["op"]) == (1, "first")
        session.stdin.write("\n" + op("second") + "\n")  # a blank line is not sent
        session.stdin.close()  # EOF: the session ends once the object answered
        session.wait(timeout=COMMAND_TIMEOUT_S)
        assert session.stderr is not None
        out, err = session.stdout.read(), session.stderr.read()
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert session.returncode == 0, err
    assert [json.loads(line)["seq"] for line in out.splitlines()] == [2]
    assert "connected to DocumentSession/" in err and "closed: client disconnected" in err


def test_connect_errors(data_dir: Path) -> None:
    quiet = fails_with(
        data_dir, "DEADLINE_EXCEEDED",
        "do", "connect", "DocumentSession", unique("quiet"), "--count", "2", "--timeout", "1",
    )  # fmt: skip
    assert "0 of 2 messages" in quiet
    fails_with(data_dir, "NOT_FOUND", "do", "connect", "NoSuchClass", "x", "--send", "hi")
    fails_with(data_dir, "INVALID_ARGUMENT", "do", "connect", "DocumentSession")
    fails_with(
        data_dir, "INVALID_ARGUMENT", "do", "connect", "DocumentSession", "x", "--count", "0"
    )
