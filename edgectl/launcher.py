"""Start, stop and inspect the processes of a local cluster.

`Cluster` is what `edgectl cluster up|down|status`, `edgectl node stop|kill|start`,
`make cluster`, the tests and the benchmarks all use. Each node is a real process
(`python -m pop_node ...`) with its own data dir under the cluster's; its ports are
chosen at run time (or from --base-port), recorded in `DIR/cluster.json`, and reused
when the node is started again so that peers and clients keep finding it.

A cluster started with `tls` runs mutual TLS everywhere: `up` makes (or keeps) a CA and
certificates in `DIR/tls/` (edgectl.certs), every node gets `--tls-dir`, and the
launcher's own calls (readiness, ListNodes) and `channel()` — what edgectl and tests use
— present the client certificate. `cluster.json` records it, so later commands follow.

Several edgectl processes change `cluster.json` at once (parallel `node start`s), so every
change is a read-modify-write of only the nodes it concerns, under an exclusive lock on
`DIR/cluster.lock`, written to a temporary file and renamed over the old one: a reader
sees a whole file, and no writer puts back another's stale pids. Stopping does not trust
the file alone either: a node's processes are also found from its ready file and by
command line (`cluster_processes`), and a pid is signalled only while its command line
says it runs that node of this cluster (pids are reused).

A cluster started with `stop_with_launcher` (the foreground `edgectl cluster up`) hands
its nodes this process's identity (EDGEPOP_LAUNCHER, see edgepop.lifecycle): each node
stops by itself once the launcher is gone, however it ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import control_plane_pb2_grpc as cp_grpc
from edgepop.auth import TOKEN_FILE_NAME, ensure_token
from edgepop.lifecycle import LAUNCHER_ENV, READY_FILE_NAME, launcher_alive, launcher_spec
from edgepop.tls import CLIENT_NAME, TLS_DIR_NAME, TlsConfig
from edgepop.topology import NodeSpec, Topology, load_topology

if TYPE_CHECKING:
    from edgectl.certs import Issued

STATE_FILE_NAME = "cluster.json"
# Held (flock) by whoever changes cluster.json; a file of its own, as the rename replaces
# cluster.json's inode.
STATE_LOCK_FILE_NAME = "cluster.lock"
ZYGOTE_MODULE = "edgectl.zygote"
PROMETHEUS_FILE_NAME = "prometheus.yml"
ROLE_MODULES = {"control_plane": "control_plane", "origin": "origin_node", "pop": "pop_node"}
START_TIMEOUT_S_DEFAULT = 60.0
STOP_TIMEOUT_S_DEFAULT = 10.0
POLL_INTERVAL_S = 0.02
ZYGOTE_REAP_WAIT_S = 1.0


class ClusterError(RuntimeError):
    """The cluster cannot do what was asked (the message says why)."""


@dataclass
class NodeState:
    name: str
    role: str
    region: str
    data_dir: str
    log_file: str
    grpc_port: int = 0
    metrics_port: int = 0
    http_port: int = 0
    pid: int = 0
    grpc_address: str = ""
    http_address: str = ""
    metrics_address: str = ""
    # Extra flags for this node's process (e.g. --log-retain-entries 100).
    extra_args: list[str] = field(default_factory=list)


def client_tls_for(data_dir: Path) -> TlsConfig | None:
    """The client identity for the cluster in `data_dir`, or None when it is plaintext.

    `cluster.json` says whether the cluster runs TLS; without one (a cluster started
    elsewhere, reached with --control-plane), a client certificate in `DIR/tls/` does.
    """
    tls_dir = data_dir.resolve() / TLS_DIR_NAME
    try:
        state = json.loads((data_dir.resolve() / STATE_FILE_NAME).read_text())
        enabled = bool(state.get("tls", False))
    except (FileNotFoundError, json.JSONDecodeError):
        enabled = (tls_dir / f"{CLIENT_NAME}.crt").is_file()
    return TlsConfig.from_dir(tls_dir, CLIENT_NAME) if enabled else None


def secure_or_insecure_channel(
    address: str, tls: TlsConfig | None, options: Sequence[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A synchronous channel: mutual TLS with `tls` (a client identity), else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials, options=options)


# Below the kernel's ephemeral range: a port taken from it could be handed, between our
# probe and the node's bind, to any process binding port 0 or opening an outgoing
# connection (CI saw an origin fail to bind that way). Ports below it are only ever
# taken by someone asking for that number.
_PICKED_PORT_LOW = 20000
# "LOW-HIGH" (HIGH excluded): the ports this process and its children pick from. Two
# launchers that run side by side (make test's parallel workers) are given disjoint
# ranges: each one's probe-then-bind can then never race the other's.
PORT_RANGE_ENV = "EDGEPOP_PORT_RANGE"
# Not the seeded module RNG: processes given the same EDGEPOP_RANDOM_SEED must not all
# try the same ports.
_port_rng = random.SystemRandom()
_handed_out: set[int] = set()


def ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def picked_port_range(setting: str | None, ephemeral_start: int) -> tuple[int, int]:
    """The [low, high) range free_port picks from: `setting` ("LOW-HIGH", from
    EDGEPOP_PORT_RANGE) when given, else everything from 20000 up to the ephemeral range."""
    if not setting:
        return _PICKED_PORT_LOW, ephemeral_start
    try:
        low_text, high_text = setting.split("-")
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise ValueError(f"{PORT_RANGE_ENV}={setting!r}: expected LOW-HIGH") from None
    if not 1024 <= low < high <= 65536:
        raise ValueError(f"{PORT_RANGE_ENV}={setting!r}: expected 1024 <= LOW < HIGH <= 65536")
    return low, high


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago, outside the ephemeral range where possible.

    The node binds it without SO_REUSEPORT, so a clash fails loudly rather than sharing.
    """
    low, high = picked_port_range(os.environ.get(PORT_RANGE_ENV), ephemeral_low())
    if high - low >= 1000:
        for _ in range(64):
            port = _port_rng.randrange(low, high)
            if port in _handed_out:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (reaping it first if it is our exited child)."""
    if pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the parenthesised command name; Z = zombie, X = dead.
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    """The arguments `pid` was started with ([] once it has exited)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def _option(argv: list[str], name: str) -> str | None:
    """The value after `name` in `argv` (None when absent)."""
    for index, arg in enumerate(argv[:-1]):
        if arg == name:
            return argv[index + 1]
    return None


def _module(argv: list[str]) -> str | None:
    return _option(argv, "-m")


def cluster_processes(data_dir: Path) -> dict[int, str]:
    """Every live process of the cluster in `data_dir`, found by command line: pid -> name.

    A spawned node is `python -m ROLE ... --data-dir DIR/NAME`; the zygote is `python -m
    edgectl.zygote --cluster DIR`, and the nodes it forked keep its command line, so
    they map to "" (their names are in their ready files). edgectl's own commands
    (`--data-dir DIR`) are not nodes and are left out.
    """
    wanted = str(data_dir.resolve())
    found: dict[int, str] = {}
    try:
        entries = list(os.scandir("/proc"))
    except FileNotFoundError:  # no procfs: only recorded pids and ready files count
        return found
    for entry in entries:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        argv = _cmdline(pid)
        module = _module(argv)
        node_dir = _option(argv, "--data-dir")
        if module in ROLE_MODULES.values() and node_dir and os.path.dirname(node_dir) == wanted:
            found[pid] = _option(argv, "--name") or ""
        elif module == ZYGOTE_MODULE and _option(argv, "--cluster") == wanted:
            found[pid] = ""
    return {pid: name for pid, name in found.items() if pid_alive(pid)}


class Cluster:
    def __init__(
        self,
        data_dir: Path,
        *,
        topology_file: Path | None = None,
        base_port: int | None = None,
        host: str = "127.0.0.1",
        role_args: dict[str, list[str]] | None = None,
        node_args: dict[str, list[str]] | None = None,
        python: str = sys.executable,
        tls: bool = False,
        stop_with_launcher: bool = False,
    ) -> None:
        """`stop_with_launcher`: every node stops once this process is gone (the
        foreground `cluster up`); otherwise nodes run until stopped (detached)."""
        self.data_dir = data_dir.resolve()
        self.topology_file = topology_file.resolve() if topology_file else None
        self.base_port = base_port
        self.host = host
        self.role_args = role_args or {}
        self.node_args = node_args or {}
        self.python = python
        self.tls = tls
        # The EDGEPOP_LAUNCHER value for this cluster's nodes ("" = detached); a node
        # started later by another edgectl takes it from cluster.json while it runs.
        self.launcher = launcher_spec() if stop_with_launcher else ""
        self.nodes: dict[str, NodeState] = {}
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._zygote: subprocess.Popen[str] | None = None

    # -- state file ------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.data_dir / STATE_FILE_NAME

    @property
    def token_file(self) -> Path:
        return self.data_dir / TOKEN_FILE_NAME

    @property
    def token(self) -> str:
        return ensure_token(self.token_file)

    @property
    def topology(self) -> Topology:
        return load_topology(self.topology_file)

    # -- TLS -------------------------------------------------------------------------------

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / TLS_DIR_NAME

    @functools.cached_property
    def client_tls(self) -> TlsConfig | None:
        """The identity clients of this cluster present (None: a plaintext cluster).

        Read once and kept: gRPC reuses the credentials for every channel."""
        return TlsConfig.from_dir(self.tls_dir, CLIENT_NAME) if self.tls else None

    @property
    def http_scheme(self) -> str:
        """How the origin application and the PoP ingress are reached."""
        return "https" if self.tls else "http"

    def channel(
        self, address: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> grpc.Channel:
        """A synchronous channel to a node of this cluster (with the client certificate
        when the cluster runs TLS)."""
        return secure_or_insecure_channel(address, self.client_tls, options)

    def ensure_certs(self, extra_sans: Iterable[str] = (), renew: bool = False) -> list[Issued]:
        """CA and certificates for every node and for clients (kept when still good)."""
        # Imported here: cryptography is for TLS clusters, not every edgectl command's start.
        from edgectl.certs import ensure_certs

        names = [spec.name for spec in self.topology.node_specs()]
        names += [name for name in self.nodes if name not in names]
        return ensure_certs(
            self.tls_dir, names, hosts=[self.host], extra_sans=extra_sans, renew=renew
        )

    @classmethod
    def open(cls, data_dir: Path) -> Cluster:
        """The cluster recorded in `data_dir` by an earlier `up`."""
        state_file = data_dir.resolve() / STATE_FILE_NAME
        try:
            state = json.loads(state_file.read_text())
        except FileNotFoundError as error:
            raise ClusterError(
                f"no cluster in {data_dir} (no {STATE_FILE_NAME}); run `edgectl cluster up`"
            ) from error
        topology_file = state.get("topology_file")
        cluster = cls(
            data_dir,
            topology_file=Path(topology_file) if topology_file else None,
            base_port=state.get("base_port"),
            host=state.get("host", "127.0.0.1"),
            python=state.get("python", sys.executable),
            tls=bool(state.get("tls", False)),
        )
        cluster.nodes = {name: NodeState(**node) for name, node in state["nodes"].items()}
        cluster.launcher = state.get("launcher") or ""
        return cluster

    def reload(self) -> None:
        """Take pids and addresses from the state file again.

        Other `edgectl` processes (`node stop|start`) restart nodes and record the new
        pids there; a long-running launcher (the foreground `cluster up`) must stop
        those, not the pids it remembers from its own start.
        """
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        for name, recorded in state.get("nodes", {}).items():
            if name in self.nodes:
                self.nodes[name] = NodeState(**recorded)

    @contextlib.contextmanager
    def _state_lock(self) -> Iterator[None]:
        """Exclusive ownership of cluster.json among every edgectl process (flock)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / STATE_LOCK_FILE_NAME, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield  # closing the file releases the lock

    def _read_state(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return state

    def _write_state(self, state: dict[str, Any]) -> None:
        """Replace cluster.json atomically (a temporary file of this writer's own, renamed)."""
        descriptor, temporary = tempfile.mkstemp(
            dir=self.data_dir, prefix=f".{STATE_FILE_NAME}.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "w") as out:
                json.dump(state, out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.state_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def save(self, names: Iterable[str] | None = None) -> None:
        """Record every node (a new cluster), or only `names` in the file as it is now."""
        with self._state_lock():
            self._save_locked(names)

    def _save_locked(self, names: Iterable[str] | None) -> None:
        state = self._read_state() if names is not None else None
        if state is None or names is None:
            state = {"nodes": {}}
            names = list(self.nodes)
        state.update(
            topology_file=str(self.topology_file) if self.topology_file else None,
            base_port=self.base_port,
            host=self.host,
            python=self.python,
            tls=self.tls,
            launcher=self.launcher or None,
        )
        for name in names:
            state["nodes"][name] = asdict(self.nodes[name])
        self._write_state(state)

    def _refresh(self, name: str) -> None:
        """Take node `name` from the file again (another edgectl may have restarted it)."""
        recorded = (self._read_state() or {}).get("nodes", {}).get(name)
        if recorded is not None:
            self.nodes[name] = NodeState(**recorded)

    # -- addresses -------------------------------------------------------------------------

    def node(self, name: str) -> NodeState:
        try:
            return self.nodes[name]
        except KeyError as error:
            raise ClusterError(f"no node named {name!r} (see `edgectl nodes`)") from error

    def by_role(self, role: str) -> list[NodeState]:
        return [node for node in self.nodes.values() if node.role == role]

    @property
    def control_plane(self) -> NodeState:
        return self.by_role("control_plane")[0]

    @property
    def origin(self) -> NodeState:
        return self.by_role("origin")[0]

    @property
    def pops(self) -> list[NodeState]:
        return self.by_role("pop")

    def _address(self, port: int) -> str:
        return f"{self.host}:{port}"

    # -- starting --------------------------------------------------------------------------

    def _plan(self, specs: Iterable[NodeSpec]) -> None:
        """Assign data dirs and ports to every node the topology asks for."""
        for index, spec in enumerate(specs):
            node_dir = self.data_dir / spec.name
            node = NodeState(
                name=spec.name,
                role=spec.role,
                region=spec.region,
                data_dir=str(node_dir),
                log_file=str(self.data_dir / "logs" / f"{spec.name}.log"),
                extra_args=[*self.role_args.get(spec.role, []), *self.node_args.get(spec.name, [])],
            )
            if self.base_port is not None:
                node.grpc_port = self.base_port + 3 * index
                node.metrics_port = self.base_port + 3 * index + 1
                node.http_port = (
                    self.base_port + 3 * index + 2 if spec.role != "control_plane" else 0
                )
            else:
                # Picked up front, so all start at once (others are told the control
                # plane's and origin's addresses) and a restarted node gets its own
                # ports back: free_port keeps out of the range the kernel hands out.
                node.grpc_port = free_port(self.host)
                node.metrics_port = free_port(self.host)
                node.http_port = free_port(self.host) if spec.role != "control_plane" else 0
            self.nodes[spec.name] = node

    def _argv(self, node: NodeState) -> list[str]:
        argv = [
            self.python,
            "-m",
            ROLE_MODULES[node.role],
            "--name",
            node.name,
            "--region",
            node.region,
            "--data-dir",
            node.data_dir,
            "--token-file",
            str(self.token_file),
            "--host",
            self.host,
            "--grpc-port",
            str(node.grpc_port),
            "--metrics-port",
            str(node.metrics_port),
            "--http-port",
            str(node.http_port),
        ]
        if self.topology_file:
            argv += ["--topology", str(self.topology_file)]
        if node.role != "control_plane":
            argv += ["--control-plane", self._address(self.control_plane.grpc_port)]
        if node.role == "pop":
            argv += ["--origin", self._address(self.origin.grpc_port)]
        if self.tls:
            argv += ["--tls-dir", str(self.tls_dir)]
            if node.role == "pop":
                # The ingress is public: end users have no certificate (one sent is checked).
                argv += ["--tls-http-client-cert", "optional"]
        return argv + node.extra_args

    def _spawn(self, node: NodeState) -> None:
        ready = Path(node.data_dir) / READY_FILE_NAME
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        Path(node.log_file).parent.mkdir(parents=True, exist_ok=True)
        env = dict(self._node_env(), PYTHONUNBUFFERED="1")
        with open(node.log_file, "ab") as log:
            process = subprocess.Popen(
                self._argv(node),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: Ctrl-C in a terminal reaches only the launcher, which
                # then stops every node in order.
                start_new_session=True,
            )
        self._children[node.name] = process
        node.pid = process.pid

    def _node_env(self) -> dict[str, str]:
        """The environment of a node: this one, with EDGEPOP_LAUNCHER when it has one."""
        env = dict(os.environ)
        env.pop(LAUNCHER_ENV, None)  # never one inherited by accident
        # A launcher recorded by a foreground `cluster up` counts only while it runs: a
        # node handed a gone launcher would stop at once.
        if self.launcher and launcher_alive(self.launcher):
            env[LAUNCHER_ENV] = self.launcher
        return env

    def _start_zygote(self) -> subprocess.Popen[str] | None:
        """A fork server that has imported what the nodes share (see edgectl.zygote); None
        if it fails."""
        command = [self.python, "-m", ZYGOTE_MODULE, "--cluster", str(self.data_dir)]
        if self.tls:
            command.append("--tls")
        try:
            zygote = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                env=self._node_env(),
                start_new_session=True,
            )
        except OSError:
            return None
        assert zygote.stdout is not None
        ready = zygote.stdout.readline()
        if not ready.strip().startswith('{"ready"'):
            zygote.kill()
            zygote.wait()
            return None
        return zygote

    def _fork(self, zygote: subprocess.Popen[str], node: NodeState) -> None:
        ready = Path(node.data_dir) / READY_FILE_NAME
        with contextlib.suppress(FileNotFoundError):
            ready.unlink()
        Path(node.log_file).parent.mkdir(parents=True, exist_ok=True)
        argv = self._argv(node)
        request = {"module": f"{argv[2]}.__main__", "argv": argv[3:], "log": node.log_file}
        assert zygote.stdin is not None and zygote.stdout is not None
        zygote.stdin.write(json.dumps(request) + "\n")
        zygote.stdin.flush()
        node.pid = int(json.loads(zygote.stdout.readline())["pid"])

    def up(
        self,
        timeout: float = START_TIMEOUT_S_DEFAULT,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Start every node and return once all are SERVING and registered."""
        if self.state_file.exists():
            running = Cluster.open(self.data_dir).running()
        else:
            running = sorted(f"pid {pid}" for pid in cluster_processes(self.data_dir))
        if running:
            raise ClusterError(
                f"a cluster is already running in {self.data_dir} ({', '.join(running)});"
                " run `edgectl cluster down` first"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ensure_token(self.token_file)
        if self.tls:
            self.ensure_certs()
        self._plan(self.topology.node_specs())
        # Fork every node from one process that imported everything once: 14 processes
        # each importing grpc, aiohttp and friends would cost seconds of CPU on 2 cores.
        zygote = self._start_zygote()
        for node in self.nodes.values():
            if zygote is not None:
                self._fork(zygote, node)
            else:
                self._spawn(node)
        if zygote is not None:
            assert zygote.stdin is not None
            zygote.stdin.close()  # it stays only to reap the nodes, then exits
            self._zygote = zygote
        self.save()
        try:
            self.wait_ready(list(self.nodes), timeout, progress)
        except BaseException:
            self.down()
            raise
        self.save()
        self.write_prometheus_config()

    def start(self, name: str, timeout: float = START_TIMEOUT_S_DEFAULT) -> None:
        """Start a stopped node again, on its previous ports and data dir."""
        self.node(name)
        if self.tls:
            self.ensure_certs()  # renews a certificate that expired while it was down
        # Check and spawn under the lock: two starts of one node cannot both pass.
        with self._state_lock():
            self._refresh(name)
            node = self.node(name)
            running = self.pids_of(name)
            if running:
                raise ClusterError(f"{name} is already running (pid {running[0]})")
            self._spawn(node)
            self._save_locked([name])
        try:
            self.wait_ready([name], timeout)
        except BaseException:
            # A node that did not come up is stopped, not left half-started.
            self.stop(name)
            raise
        self.save([name])

    def wait_ready(
        self,
        names: list[str],
        timeout: float,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """Poll until each node wrote its ready file, answers SERVING and is registered."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                node = self.nodes[name]
                if not pid_alive(node.pid):
                    raise ClusterError(
                        f"{name} exited during start; see {node.log_file}:\n"
                        + _tail(Path(node.log_file))
                    )
                if self._read_ready(node):
                    pending.discard(name)
                    if progress is not None:
                        progress(name, len(names) - len(pending), len(names))
            if pending:
                if time.monotonic() > deadline:
                    # The log of a node that hangs says why (a port in use, a lock, ...).
                    slowest = self.nodes[sorted(pending)[0]]
                    raise ClusterError(
                        f"not ready after {timeout:.0f} s: {sorted(pending)}; "
                        f"see {slowest.log_file}:\n" + _tail(Path(slowest.log_file))
                    )
                time.sleep(POLL_INTERVAL_S)
        for name in names:
            self._wait_serving(self.nodes[name], deadline)
        self._wait_registered(names, deadline)

    def _read_ready(self, node: NodeState) -> bool:
        try:
            ready = json.loads((Path(node.data_dir) / READY_FILE_NAME).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        if ready.get("pid") != node.pid:
            return False
        node.grpc_address = ready["grpc_address"]
        node.metrics_address = ready["metrics_address"]
        node.http_address = ready.get("http_address", "")
        node.grpc_port = int(node.grpc_address.rsplit(":", 1)[1])
        node.metrics_port = int(node.metrics_address.rsplit(":", 1)[1])
        if node.http_address:
            node.http_port = int(node.http_address.rsplit(":", 1)[1])
        return True

    def _wait_serving(self, node: NodeState, deadline: float) -> None:
        with self.channel(node.grpc_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node.name} is not SERVING")
                time.sleep(POLL_INTERVAL_S)

    def _wait_registered(self, names: list[str], deadline: float) -> None:
        wanted = {name for name in names if self.nodes[name].role != "control_plane"}
        while wanted:
            try:
                healthy = {info.name for info in self.list_nodes() if info.healthy}
            except grpc.RpcError:
                healthy = set()
            wanted -= healthy
            if not wanted:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"not registered with the control plane: {sorted(wanted)}")
            time.sleep(POLL_INTERVAL_S)

    # -- stopping --------------------------------------------------------------------------

    def _ready_pid(self, node: NodeState) -> int:
        """The pid in the node's ready file (0: none), which the node writes itself."""
        try:
            return int(json.loads((Path(node.data_dir) / READY_FILE_NAME).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def _runs(self, pid: int, node: NodeState) -> bool:
        """Whether `pid` runs `node` of this cluster, by its command line (pids are reused)."""
        argv = _cmdline(pid)
        if _module(argv) == ZYGOTE_MODULE:
            # A fork of a zygote: of this cluster's (or of one too old to say which).
            return _option(argv, "--cluster") in (str(self.data_dir), None)
        return _option(argv, "--data-dir") == node.data_dir

    def pids_of(self, name: str, found: dict[int, str] | None = None) -> list[int]:
        """Every live process of node `name`: the pid recorded here, the one in its ready
        file, and any found by command line (`found`: a cluster_processes result)."""
        node = self.node(name)
        if found is None:
            found = cluster_processes(self.data_dir)
        candidates = {node.pid, self._ready_pid(node)}
        candidates |= {pid for pid, owner in found.items() if owner == name}
        return sorted(
            pid for pid in candidates if pid > 0 and pid_alive(pid) and self._runs(pid, node)
        )

    def running(self) -> list[str]:
        """The nodes with a live process, and "pid N" for any other process of the cluster."""
        found = cluster_processes(self.data_dir)
        names, known = [], set()
        for name in self.nodes:
            pids = self.pids_of(name, found)
            if pids:
                names.append(name)
                known.update(pids)
        return names + [f"pid {pid}" for pid in sorted(set(found) - known)]

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S_DEFAULT) -> None:
        """SIGTERM: the node drains and closes LMDB. SIGKILL if it overstays `timeout`."""
        self._terminate(self.pids_of(name), timeout)
        self._children.pop(name, None)

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no close (crash testing)."""
        pids = self.pids_of(name)
        _send(pids, signal.SIGKILL)
        _wait_exit(pids, STOP_TIMEOUT_S_DEFAULT)
        self._children.pop(name, None)

    def pause(self, name: str) -> list[int]:
        """SIGSTOP: the node freezes mid-whatever (a long GC pause, a stalled VM), its
        sockets open and its leases running out; returns the pids stopped."""
        pids = self.pids_of(name)
        _send(pids, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int]) -> None:
        """SIGCONT to processes `pause` stopped (harmless to one that runs)."""
        _send([pid for pid in pids if pid_alive(pid)], signal.SIGCONT)

    def down(self, timeout: float = STOP_TIMEOUT_S_DEFAULT) -> None:
        """Stop every node: PoPs first, then the origin, then the control plane; then any
        other process of this cluster (one the state file lost, a lingering zygote)."""
        found = cluster_processes(self.data_dir)
        recorded = (self._read_state() or {}).get("nodes", {})
        order = [*self.pops, *self.by_role("origin"), *self.by_role("control_plane")]
        stopping: list[int] = []
        for node in order:
            pids = set(self.pids_of(node.name, found))
            # The file's pid too: another edgectl may have restarted the node.
            other = int(recorded.get(node.name, {}).get("pid", 0))
            if other > 0 and pid_alive(other) and self._runs(other, node):
                pids.add(other)
            stopping += [pid for pid in sorted(pids) if pid not in stopping]
        self._terminate(stopping, timeout)
        self._children.clear()
        self._terminate(list(cluster_processes(self.data_dir)), timeout)
        if self._zygote is not None:
            # With every node gone the fork server exits by itself: reap it if it has
            # (it is our child); if not yet, it finishes on its own, nothing waits for it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._zygote.wait(timeout=ZYGOTE_REAP_WAIT_S)
            self._zygote = None

    @staticmethod
    def _terminate(pids: list[int], timeout: float) -> None:
        """SIGTERM `pids` (in order), then SIGKILL those that overstay `timeout`."""
        _send(pids, signal.SIGTERM)
        if not _wait_exit(pids, timeout):
            _send(pids, signal.SIGKILL)
            _wait_exit(pids, STOP_TIMEOUT_S_DEFAULT)

    def alive(self, name: str) -> bool:
        return pid_alive(self.node(name).pid)

    # -- queries ---------------------------------------------------------------------------

    def list_nodes(self, timeout: float = 2.0) -> list[cp_pb2.NodeInfo]:
        with self.channel(self._address(self.control_plane.grpc_port)) as channel:
            response = cp_grpc.ControlPlaneStub(channel).ListNodes(
                cp_pb2.ListNodesRequest(), timeout=timeout
            )
        return list(response.nodes)

    def status(self) -> list[dict[str, Any]]:
        """Every node with its process state and, when the control plane answers, health."""
        try:
            health = {info.name: info.healthy for info in self.list_nodes()}
        except grpc.RpcError:
            health = {}
        rows = []
        for node in self.nodes.values():
            alive = pid_alive(node.pid)
            rows.append(
                {
                    "name": node.name,
                    "role": node.role,
                    "region": node.region,
                    "pid": node.pid if alive else 0,
                    "grpc_address": node.grpc_address,
                    "http_address": node.http_address,
                    "metrics_address": node.metrics_address,
                    "healthy": alive and health.get(node.name, node.role == "control_plane"),
                }
            )
        return rows

    def write_prometheus_config(self) -> Path:
        """A prometheus.yml in the data dir that scrapes every node."""
        lines = [
            "# Written by `edgectl cluster up`: scrapes every node of this cluster.",
            "global:",
            "  scrape_interval: 5s",
            "scrape_configs:",
        ]
        for role in ("control_plane", "origin", "pop"):
            nodes = self.by_role(role)
            if not nodes:
                continue
            lines += [f"  - job_name: edgepop_{role}", "    static_configs:"]
            for node in nodes:
                lines += [
                    f"      - targets: ['{node.metrics_address}']",
                    f"        labels: {{node: '{node.name}', region: '{node.region}'}}",
                ]
        path = self.data_dir / PROMETHEUS_FILE_NAME
        path.write_text("\n".join(lines) + "\n")
        return path


def _send(pids: Iterable[int], signum: signal.Signals) -> None:
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def _wait_exit(pids: Sequence[int], timeout: float) -> bool:
    """Wait until every pid has exited; False if some still run after `timeout`."""
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL_S)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
