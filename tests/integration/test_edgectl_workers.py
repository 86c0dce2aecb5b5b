"""`edgectl deploy`, `workers`, `token issue` and `cluster up --workers` end to end.

One small cluster of real processes for the module (tokyo x2, london x1, the seed's delays
on), started by `edgectl cluster up --detach --workers …` exactly as `make cluster` does,
with the jwt-auth example and a tiny `hello` worker. Requests go over real HTTP to each
PoP's ingress with a `Host` header, as curl would. What a user reads runs as
`python -m edgectl` in a subprocess; JSON checks call `edgectl.cli.main` in this process.
A few pure checks (which folders are bundles, how a rollout is summarised) need no
cluster.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from edge.v1 import workers_pb2
from edgectl import cli, deploys, tokens
from edgectl.client import CliError
from edgectl.launcher import Cluster, ClusterError
from edgepop.bundle import bundle_version, read_bundle
from tests.conftest import poll_until
from tests.integration.workerclient import http_get

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "workers"
COMMAND_TIMEOUT_S = 60.0
TOPOLOGY: dict[str, Any] = {
    "regions": [
        {"name": "us-east-1"},
        {"name": "tokyo", "pop_nodes": 2},
        {"name": "london", "pop_nodes": 1},
    ],
}
POPS = ("tokyo-1", "tokyo-2", "london-1")
# The issue's promise: every PoP serves a new version within 2 s of the deploy.
ROLLOUT_S_MAX = 2.0
HTTP_TIMEOUT_S = 10.0

HELLO_PY = """
from edgepop import worker_api as edge


async def fetch(request, env, ctx):
    return edge.Response(env.GREETING)
"""


def write_hello(folder: Path, greeting: str, name: str = "hello") -> Path:
    """A minimal worker answering `greeting` on hello.example.com (its version differs
    with the greeting)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "worker.py").write_text(HELLO_PY)
    config = {"name": name, "routes": [f"{name}.example.com/*"], "vars": {"GREETING": greeting}}
    (folder / "worker.yaml").write_text(yaml.safe_dump(config))
    return folder


def version_of(folder: Path) -> str:
    return bundle_version(read_bundle(folder))


def edgectl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
        check=False,
    )


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
        status, out, err = self.run(*args)
        assert status == 1, (out, err)
        assert err.startswith(f"error: {code}: "), err
        return err


@dataclass(frozen=True)
class Started:
    data_dir: Path
    up_stderr: str
    hello: Path  # the hello bundle deployed at start (greeting "start")

    def http_address(self, node: str) -> str:
        return Cluster.open(self.data_dir).node(node).http_address


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    directory = tmp_path_factory.mktemp("edgectl-workers")
    topology = directory / "topology.yaml"
    topology.write_text(yaml.safe_dump(TOPOLOGY))
    hello = write_hello(directory / "bundles" / "hello", "start")
    try:
        result = edgectl(
            directory, "cluster", "up", "--detach", "--topology", str(topology),
            "--workers", str(EXAMPLES / "jwt-auth"), "--workers", str(hello.parent),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        yield Started(directory, result.stderr, hello)
    finally:
        edgectl(directory, "cluster", "down")
        with contextlib.suppress(ClusterError):
            Cluster.open(directory).down()


@pytest.fixture
def edge(started: Started, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(started.data_dir, capsys)


def served_everywhere(started: Started, host: str, body: str) -> bool:
    return all(
        http_get(started.http_address(node), host) == (200, body) for node in POPS
    )  # fmt: skip


# -- cluster up --workers --------------------------------------------------------------


def test_cluster_up_deploys_the_workers_before_it_returns(started: Started, edge: Cli) -> None:
    for name in ("jwt-auth", "hello"):
        assert f"deployed {name} " in started.up_stderr
    assert started.up_stderr.count("3/3 PoPs after") == 2, started.up_stderr

    listed = {worker["name"]: worker for worker in edge.json("workers")}
    assert set(listed) >= {"jwt-auth", "hello"}
    for worker in (listed["jwt-auth"], listed["hello"]):
        assert sorted(worker["pops_ready"]) == sorted(POPS) and worker["lagging"] == []
        assert worker["cold_start_ms"]["max"] > 0
    # Served at once, at every PoP, with no request made before.
    assert served_everywhere(started, "hello.example.com", "start")


def test_cluster_up_checks_the_bundles_before_starting_anything(tmp_path: Path) -> None:
    missing = edgectl(tmp_path, "cluster", "up", "--detach", "--workers", str(tmp_path / "none"))
    assert missing.returncode == 1 and "error: INVALID_ARGUMENT: " in missing.stderr
    assert not (tmp_path / "cluster.json").exists()


# -- deploy, redeploy, rollback --------------------------------------------------------


def test_deploy_reaches_every_pop_within_2_s_and_redeploying_changes_nothing(
    started: Started, edge: Cli, tmp_path: Path
) -> None:
    bundle = write_hello(tmp_path / "hello", "one")
    deployed = edge.json("deploy", str(bundle), "--no-wait")
    assert deployed["name"] == "hello" and deployed["changed"] is True
    assert deployed["version"] == version_of(bundle)
    returned = time.monotonic()
    # Measured here, over HTTP: from the control plane's answer to every PoP serving it.
    poll_until(
        lambda: served_everywhere(started, "hello.example.com", "one"),
        timeout=ROLLOUT_S_MAX,
        interval=0.02,
        what="every PoP serving the new version",
    )
    measured_s = time.monotonic() - returned
    assert measured_s < ROLLOUT_S_MAX

    # Deploying the same folder again: the same version, nothing changes, nothing waits.
    again = edge.json("deploy", str(bundle))
    assert again["version"] == deployed["version"] and again["changed"] is False
    assert sorted(again["pops_ready"]) == sorted(POPS) and again["lagging"] == []
    assert again["rollout_s"] < ROLLOUT_S_MAX

    # A changed file is a new version; the CLI itself waits for it and says how long.
    write_hello(bundle, "two")
    changed = edgectl(started.data_dir, "deploy", str(bundle))
    assert changed.returncode == 0, changed.stderr
    first, summary = changed.stdout.splitlines()
    assert first.startswith("deployed hello ")
    assert summary.startswith("3/3 PoPs after ") and "cold start max" in summary
    rollout_s = float(summary.split()[3])
    assert rollout_s < ROLLOUT_S_MAX
    assert served_everywhere(started, "hello.example.com", "two")


def test_rollback_makes_the_previous_version_active_at_every_pop(
    started: Started, edge: Cli, tmp_path: Path
) -> None:
    bundle = write_hello(tmp_path / "rollback", "old", name="rollback")
    old = edge.json("deploy", str(bundle))
    write_hello(bundle, "new", name="rollback")
    new = edge.json("deploy", str(bundle))
    assert new["changed"] and new["version"] != old["version"]
    assert served_everywhere(started, "rollback.example.com", "new")

    back = edge.json("deploy", "--rollback", "rollback")
    assert back["rollback"] is True and back["version"] == old["version"]
    assert sorted(back["pops_ready"]) == sorted(POPS) and back["rollout_s"] < ROLLOUT_S_MAX
    assert served_everywhere(started, "rollback.example.com", "old")

    [listed] = [w for w in edge.json("workers") if w["name"] == "rollback"]
    assert listed["active_version"] == old["version"]
    assert [(v["version"], v["active"]) for v in listed["versions"]] == [
        (new["version"], False),
        (old["version"], True),
    ]
    assert sorted(listed["versions"][1]["pops"]) == sorted(POPS)
    assert listed["versions"][0]["pops"] == []

    # Nothing earlier than the first version.
    edge.fails("FAILED_PRECONDITION", "deploy", "--rollback", "rollback")


def test_workers_table_shows_versions_routes_and_where_each_runs(started: Started) -> None:
    shown = edgectl(started.data_dir, "workers")
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if "jwt-auth" in line)
    version = version_of(EXAMPLES / "jwt-auth")
    assert version[:12] in row and "active" in row
    assert "auth.example.com/*" in row and "3/3 PoPs" in row


def test_a_version_no_pop_can_load_is_reported_as_lagging(edge: Cli, tmp_path: Path) -> None:
    bundle = write_hello(tmp_path / "broken", "x", name="broken")
    (bundle / "worker.py").write_text("raise RuntimeError('cannot start')\n")
    stderr = edge.fails("DEADLINE_EXCEEDED", "deploy", str(bundle), "--wait-timeout", "1")
    assert "0/3 PoPs serve it after 1 s" in stderr
    for node in POPS:
        assert f"{node} (nothing)" in stderr


def test_deploy_errors_exit_1_with_their_code(edge: Cli, tmp_path: Path) -> None:
    edge.fails("INVALID_ARGUMENT", "deploy", str(tmp_path / "nowhere"))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    (no_config / "worker.py").write_text(HELLO_PY)
    assert "worker.yaml" in edge.fails("INVALID_ARGUMENT", "deploy", str(no_config))
    bad_name = write_hello(tmp_path / "bad-name", "x", name="Bad_Name")
    assert "worker.yaml:1: name: must be" in edge.fails("INVALID_ARGUMENT", "deploy", str(bad_name))
    assert "folder of bundles" in edge.fails("INVALID_ARGUMENT", "deploy", str(EXAMPLES))
    edge.fails("FAILED_PRECONDITION", "deploy", "--rollback", "never-deployed")
    edge.fails("INVALID_ARGUMENT", "deploy")


# -- tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_token_issue_gives_a_jwt_the_jwt_auth_worker_accepts_at_the_edge(
    started: Started, alg: str
) -> None:
    issued = edgectl(started.data_dir, "token", "issue", "--sub", "alice", "--alg", alg)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()
    assert issued.stdout == token + "\n" and token.count(".") == 2

    # A user in Tokyo, at the Tokyo PoP: verified there against the origin's JWKS.
    status, body = http_get(
        started.http_address("tokyo-1"),
        "auth.example.com",
        "/",
        Authorization=f"Bearer {token}",
        **{"x-edge-region": "tokyo"},
    )
    assert status == 200, body
    assert json.loads(body) == {"authenticated": True, "sub": "alice", "colo": "NRT"}

    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    status, body = http_get(
        started.http_address("london-1"),
        "auth.example.com",
        "/",
        Authorization=f"Bearer {tampered}",
    )
    assert status == 401, body


def test_token_issue_json_and_errors(edge: Cli, started: Started, tmp_path: Path) -> None:
    before = time.time()
    issued = edge.json("token", "issue", "--sub", "bob", "--alg", "ES256", "--ttl", "60")
    assert issued["sub"] == "bob" and issued["alg"] == "ES256"
    assert before + 59 <= issued["expires_at"] <= time.time() + 61
    assert tokens.token_claims(issued["token"])["sub"] == "bob"

    edge.fails("INVALID_ARGUMENT", "token", "issue", "--sub", "bob", "--ttl", "0")
    # Issuing needs the cluster token: a data dir without it cannot.
    address = Cluster.open(started.data_dir).control_plane.grpc_address
    elsewhere = Cli(tmp_path, edge.capsys)
    elsewhere.fails("UNAUTHENTICATED", "--control-plane", address, "token", "issue", "--sub", "x")


def test_http_address_names_a_pop_ingress(edge: Cli, started: Started) -> None:
    code, out, err = edge.run("http-address", "london-1")
    assert code == 0, err
    assert out.strip() == started.http_address("london-1")
    nearest = edge.json("http-address", "--from", "tokyo")
    assert nearest["name"] in ("tokyo-1", "tokyo-2") and nearest["http_address"]
    edge.fails("NOT_FOUND", "http-address", "control-plane")
    edge.fails("INVALID_ARGUMENT", "http-address")


# -- pure parts (no cluster) -----------------------------------------------------------


def test_bundle_dirs_takes_bundles_and_folders_of_bundles(tmp_path: Path) -> None:
    a = write_hello(tmp_path / "set" / "a", "a", name="a")
    b = write_hello(tmp_path / "set" / "b", "b", name="b")
    (tmp_path / "set" / "notes").mkdir()
    assert deploys.bundle_dirs([tmp_path / "set", a]) == [a, b]
    with pytest.raises(CliError, match="INVALID_ARGUMENT"):
        deploys.bundle_dirs([tmp_path / "set" / "notes"])
    shutil.rmtree(tmp_path / "set")
    with pytest.raises(CliError, match="not a folder"):
        deploys.bundle_dirs([tmp_path / "set"])


def test_rollout_and_summary_say_which_pops_lag_and_with_what() -> None:
    def loaded(version: str, cold_ms: float) -> workers_pb2.LoadedWorker:
        return workers_pb2.LoadedWorker(name="w", version=version, cold_start_ms=cold_ms)

    new, old = "n" * 64, "o" * 64
    pops = [
        deploys.PopWorkers("a-1", "a", {"w": loaded(new, 4.0)}),
        deploys.PopWorkers("a-2", "a", {"w": loaded(old, 3.0)}),
        deploys.PopWorkers("b-1", "b", {}),
        deploys.PopWorkers("c-1", "c", error="UNAVAILABLE"),
        deploys.PopWorkers("d-1", "d", {"w": loaded(new, 10.0)}),
    ]
    seen = deploys.rollout("w", new, pops)
    assert seen.ready == ("a-1", "d-1") and not seen.done and seen.coverage == "2/5 PoPs"
    assert seen.lag_text() == "a-2 (oooooooooooo), b-1 (nothing), c-1 (unreachable: UNAVAILABLE)"
    assert deploys.cold_start_json(seen.cold_start_ms) == {"median": 7.0, "max": 10.0}

    versions = [
        workers_pb2.WorkerVersion(name="w", version=old, deployed_at=1.0, active=False),
        workers_pb2.WorkerVersion(name="w", version=new, deployed_at=2.0, active=True),
    ]
    [summary] = deploys.summarize(versions, pops)
    assert summary.active == new
    assert [row.version.version for row in summary.versions] == [new, old]
    assert summary.versions[1].rollout.ready == ("a-2",)
