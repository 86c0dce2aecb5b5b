"""Prometheus for a local cluster: install it, configure it, keep its targets current.

`edgectl observe` (`make observe`) and `edgectl cluster up --prometheus` run Debian's
`prometheus` against a cluster's data dir. Everything lives under DATA_DIR/prometheus/:

- `prometheus.yml`, rendered from `deploy/prometheus/prometheus.yml` (rules are read
  from `deploy/prometheus/rules/`, so an edited rule needs only a restart);
- `targets/edgepop.json`, file-based service discovery: every node with its
  metrics_address and the labels node, region and role, from `cluster.json` merged with
  the control plane's registry, rewritten (only when it changes) every few seconds so
  that Prometheus follows nodes as they come and go;
- `data/` (the TSDB), `prometheus.log`, and `prometheus.json` (pid and URL of the
  running Prometheus, so that a second one for the same cluster is refused).

A stopped node stays a target: it is part of the cluster, and Prometheus reports it
with up == 0 (the NodeDown alert) instead of silently forgetting it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import yaml

from edgectl import views
from edgectl.client import role_name
from edgectl.launcher import Cluster, ClusterError, free_port, pid_alive
from edgectl.signals import interrupted_by_signals

if TYPE_CHECKING:
    from edge.v1 import control_plane_pb2 as cp_pb2
    from edgectl.cli import CommandSet

DEPLOY_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
TEMPLATE_FILE = DEPLOY_DIR / "prometheus.yml"
PROMETHEUS_DIR_NAME = "prometheus"
TARGETS_DIR_NAME = "targets"
TARGETS_FILE_NAME = "edgepop.json"
STATE_FILE_NAME = "prometheus.json"
PROMETHEUS_PORT_DEFAULT = 9090
SCRAPE_INTERVAL_S_DEFAULT = 2.0
EVALUATION_INTERVAL_S_DEFAULT = 2.0
REFRESH_INTERVAL_S_DEFAULT = 2.0
READY_TIMEOUT_S_DEFAULT = 60.0
STOP_TIMEOUT_S = 10.0
INSTALL_TIMEOUT_S = 900.0
HTTP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
# A local playground: a day of samples is plenty and keeps the data dir small.
RETENTION = "1d"
# Debian's package; the binaries land in /usr/bin, which a root shell's PATH may lack.
APT_PACKAGE = "prometheus"
BIN_DIRS = (Path("/usr/bin"), Path("/usr/local/bin"))
ROLE_ORDER = {"control_plane": 0, "origin": 1, "pop": 2}


class ObserveError(ClusterError):
    """Prometheus cannot be installed, configured or started (the message says why)."""


# -- installing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    prometheus: Path
    promtool: Path


def _which(name: str) -> Path | None:
    found = shutil.which(name)
    if found:
        return Path(found)
    for folder in BIN_DIRS:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def find_prometheus() -> Binaries | None:
    """The installed prometheus and promtool, or None if either is missing."""
    prometheus, promtool = _which("prometheus"), _which("promtool")
    if prometheus is None or promtool is None:
        return None
    return Binaries(prometheus, promtool)


def ensure_prometheus(report: Callable[[str], None] | None = None) -> Binaries:
    """prometheus and promtool, installed with apt-get first if missing (idempotent).

    The install is quiet and skips recommended packages (node-exporter and friends).
    Package lists are refreshed only when the install fails without them, so a machine
    that has the lists pays one apt-get call.
    """
    found = find_prometheus()
    if found is not None:
        return found
    apt_get = _which("apt-get")
    if apt_get is None:
        raise ObserveError(
            "prometheus is not installed and there is no apt-get to install it; "
            "install Prometheus 2.x so that `prometheus` and `promtool` are on PATH"
        )
    if os.geteuid() != 0:
        raise ObserveError(
            "prometheus is not installed; install it as root: "
            f"apt-get install -y --no-install-recommends {APT_PACKAGE}"
        )
    if report is not None:
        report(f"installing {APT_PACKAGE} with apt-get …")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [str(apt_get), "install", "-y", "-qq", "--no-install-recommends", APT_PACKAGE]
    result = _run(install, env)
    if result.returncode != 0:
        _run([str(apt_get), "update", "-qq"], env)
        result = _run(install, env)
    found = find_prometheus()
    if result.returncode != 0 or found is None:
        raise ObserveError(
            f"`{' '.join(install)}` failed (exit {result.returncode}):\n"
            + "\n".join(result.stdout.splitlines()[-20:])
        )
    return found


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ObserveError(f"`{' '.join(argv)}` took over {INSTALL_TIMEOUT_S:g} s") from error


# -- targets (file-based service discovery) ---------------------------------------------


@dataclass(frozen=True)
class ScrapeTarget:
    """One node's /metrics endpoint with the labels every series of it gets."""

    node: str
    region: str
    role: str
    address: str


def merge_targets(
    recorded: Iterable[ScrapeTarget], registered: Iterable[ScrapeTarget]
) -> list[ScrapeTarget]:
    """Every node once: the registry's entry where it has one, else the recorded one.

    `recorded` is what the launcher wrote to cluster.json (every node it started, the
    control plane included, whether running or not); `registered` is the control
    plane's registry (nodes that registered, healthy or not, wherever they run). The
    registry wins on an address because it holds the latest registration. Nodes
    without a metrics address (never started) are left out: there is nothing to scrape.
    """
    merged: dict[str, ScrapeTarget] = {}
    for source in (recorded, registered):
        for target in source:
            if target.address:
                merged[target.node] = target
    return sorted(merged.values(), key=lambda t: (ROLE_ORDER.get(t.role, 9), t.node))


def file_sd_groups(targets: Iterable[ScrapeTarget]) -> list[dict[str, Any]]:
    """The file_sd JSON: one group per node, so each carries its own labels."""
    return [
        {
            "targets": [target.address],
            "labels": {"node": target.node, "region": target.region, "role": target.role},
        }
        for target in targets
    ]


def recorded_targets(cluster: Cluster) -> list[ScrapeTarget]:
    return [
        ScrapeTarget(node.name, node.region, node.role, node.metrics_address)
        for node in cluster.nodes.values()
    ]


def registered_targets(infos: Iterable[cp_pb2.NodeInfo]) -> list[ScrapeTarget]:
    return [
        ScrapeTarget(info.name, info.region, role_name(info.role), info.metrics_address)
        for info in infos
    ]


def discover(data_dir: Path) -> list[ScrapeTarget]:
    """Every node of the cluster in `data_dir`, as Prometheus should scrape it now."""
    cluster = Cluster.open(data_dir)
    try:
        registered = registered_targets(cluster.list_nodes())
    except grpc.RpcError:
        # The control plane is down (itself a target, then reported down): the
        # launcher's record alone still names every node it started.
        registered = []
    return merge_targets(recorded_targets(cluster), registered)


def write_targets(path: Path, targets: Iterable[ScrapeTarget]) -> bool:
    """Write the file_sd file atomically; True if its content changed.

    Prometheus watches the folder: an unchanged file is not rewritten, so it does not
    re-read anything, and a rename means it never sees a half-written file.
    """
    text = json.dumps(file_sd_groups(targets), indent=2) + "\n"
    with contextlib.suppress(FileNotFoundError):
        if path.read_text() == text:
            return False
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return True


# -- configuration -----------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A Prometheus duration ("2s", "500ms"): it takes integers with a unit only."""
    milliseconds = round(seconds * 1000)
    if milliseconds <= 0:
        raise ObserveError(f"an interval must be positive, not {seconds:g} s")
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


def render_config(
    template: Path,
    targets_dir: Path,
    *,
    scrape_interval_s: float,
    evaluation_interval_s: float,
) -> str:
    """The template with absolute paths and the given intervals.

    Rule files stay where the template points (resolved against its folder), so the
    repository's rules are the ones loaded; file_sd globs move into `targets_dir`.
    """
    config = yaml.safe_load(template.read_text())
    settings = config.setdefault("global", {})
    settings["scrape_interval"] = duration(scrape_interval_s)
    settings["evaluation_interval"] = duration(evaluation_interval_s)
    # A timeout over the interval is a config error; the default (10 s) would be one.
    settings["scrape_timeout"] = duration(min(scrape_interval_s, 10.0))
    config["rule_files"] = [
        str(template.parent / pattern) for pattern in config.get("rule_files", [])
    ]
    for scrape in config.get("scrape_configs", []):
        for sd in scrape.get("file_sd_configs", []):
            sd["files"] = [str(targets_dir / Path(pattern).name) for pattern in sd["files"]]
    header = (
        f"# Rendered by edgectl from {template}; rewritten at every start (edit the template).\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


# -- the process -----------------------------------------------------------------------


def log_tail(path: Path, lines: int = 20) -> str:
    """The end of a log, for an error message that says why a process stopped."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _get_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode())


class Prometheus:
    """One prometheus process: started in its own session, stopped by its pid."""

    def __init__(
        self,
        binary: Path,
        config_file: Path,
        storage_dir: Path,
        log_file: Path,
        *,
        host: str,
        port: int,
    ) -> None:
        self.binary = binary
        self.config_file = config_file
        self.storage_dir = storage_dir
        self.log_file = log_file
        self.host = host
        self.port = port
        self.pid = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            str(self.binary),
            f"--config.file={self.config_file}",
            f"--storage.tsdb.path={self.storage_dir}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address={self.host}:{self.port}",
        ]

    def start(self, timeout_s: float = READY_TIMEOUT_S_DEFAULT) -> None:
        """Start and return once /-/ready answers; on failure the log's tail says why."""
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self._process = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: Ctrl-C reaches edgectl, which then stops it in order.
                start_new_session=True,
                # And it stops by itself if edgectl dies without stopping it (kill -9).
                preexec_fn=_terminate_with_parent,
            )
        self.pid = self._process.pid
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive():
                raise ObserveError(
                    f"prometheus exited during start; see {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ObserveError(
                    f"prometheus not ready after {timeout_s:g} s; see {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            time.sleep(POLL_INTERVAL_S)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        return pid_alive(self.pid)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Prometheus flushes its head block), SIGKILL if it overstays."""
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
            deadline = time.monotonic() + timeout_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL_S)
        if self._process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=timeout_s)

    # -- HTTP API --------------------------------------------------------------------------

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (`/api/v1/query`)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        reply = _get_json(url)
        if reply.get("status") != "success":
            raise ObserveError(f"query {expr!r} failed: {reply.get('error')}")
        return list(reply["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, pending and firing (`/api/v1/alerts`)."""
        reply = _get_json(f"{self.url}/api/v1/alerts")
        return list(reply["data"]["alerts"])


# -- the observer: config + targets + process ------------------------------------------


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class Observer:
    """Prometheus for the cluster in `data_dir`, with its targets kept current.

    `start()` writes the targets and the config, starts Prometheus and returns once it
    is ready; `refresh()` rewrites the targets (call it in a loop, or `start_refresher()`
    for a background thread); `stop()` stops both. Usable as a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        scrape_interval_s: float = SCRAPE_INTERVAL_S_DEFAULT,
        evaluation_interval_s: float = EVALUATION_INTERVAL_S_DEFAULT,
        refresh_interval_s: float = REFRESH_INTERVAL_S_DEFAULT,
        template: Path = TEMPLATE_FILE,
        binaries: Binaries | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self.scrape_interval_s = scrape_interval_s
        self.evaluation_interval_s = evaluation_interval_s
        self.refresh_interval_s = refresh_interval_s
        self.template = template
        self.binaries = binaries
        self.targets: list[ScrapeTarget] = []
        self.refresh_error: str = ""
        self.prometheus: Prometheus | None = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None

    @property
    def home(self) -> Path:
        return self.data_dir / PROMETHEUS_DIR_NAME

    @property
    def targets_file(self) -> Path:
        return self.home / TARGETS_DIR_NAME / TARGETS_FILE_NAME

    @property
    def config_file(self) -> Path:
        return self.home / "prometheus.yml"

    @property
    def state_file(self) -> Path:
        return self.home / STATE_FILE_NAME

    @property
    def url(self) -> str:
        assert self.prometheus is not None, "not started"
        return self.prometheus.url

    def _choose_port(self) -> int:
        if self.port is None:
            # The well-known port when free; another Prometheus (Debian's service, a
            # second cluster) may hold it, and a playground should still start.
            if _port_free(self.host, PROMETHEUS_PORT_DEFAULT):
                return PROMETHEUS_PORT_DEFAULT
            return free_port(self.host)
        return self.port or free_port(self.host)

    def _refuse_second(self) -> None:
        try:
            state = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return
        if pid_alive(int(state.get("pid", 0))):
            raise ObserveError(
                f"Prometheus already runs for {self.data_dir} at {state.get('url')} "
                f"(pid {state['pid']})"
            )

    def start(self, timeout_s: float = READY_TIMEOUT_S_DEFAULT) -> None:
        binaries = self.binaries or ensure_prometheus()
        self.home.mkdir(parents=True, exist_ok=True)
        self._refuse_second()
        # Targets before Prometheus: its first discovery pass already finds every node.
        self.refresh(raise_errors=True)
        self.config_file.write_text(
            render_config(
                self.template,
                self.targets_file.parent,
                scrape_interval_s=self.scrape_interval_s,
                evaluation_interval_s=self.evaluation_interval_s,
            )
        )
        self.prometheus = Prometheus(
            binaries.prometheus,
            self.config_file,
            self.home / "data",
            self.home / "prometheus.log",
            host=self.host,
            port=self._choose_port(),
        )
        self.prometheus.start(timeout_s)
        self.state_file.write_text(
            json.dumps({"pid": self.prometheus.pid, "url": self.prometheus.url}) + "\n"
        )

    def refresh(self, *, raise_errors: bool = False) -> bool:
        """Rewrite the targets from the cluster's state; True if they changed.

        A failure (the state file mid-rewrite, the control plane away) keeps the last
        targets and is remembered in `refresh_error`: Prometheus goes on scraping them.
        """
        try:
            targets = discover(self.data_dir)
            changed = write_targets(self.targets_file, targets)
        except Exception as error:
            # Broad on purpose: a refresher thread that died on an odd error would
            # freeze the targets without a word; this one says why and tries again.
            if raise_errors:
                raise
            self.refresh_error = f"{type(error).__name__}: {error}"
            return False
        self.refresh_error = ""
        self.targets = targets
        return changed

    def start_refresher(self) -> None:
        """Refresh every `refresh_interval_s` on a daemon thread until `stop()`."""

        def loop() -> None:
            while not self._stop.wait(self.refresh_interval_s):
                self.refresh()

        self._refresher = threading.Thread(target=loop, name="edgectl-targets", daemon=True)
        self._refresher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.join(timeout=STOP_TIMEOUT_S)
            self._refresher = None
        if self.prometheus is not None:
            self.prometheus.stop()
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()

    def __enter__(self) -> Observer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- edgectl observe --------------------------------------------------------------------


def register_observe(commands: CommandSet) -> None:
    parser = commands.add(
        "observe",
        cmd_observe,
        "run Prometheus against the cluster (installing Debian's prometheus if missing), "
        "with the rules of deploy/prometheus and targets that follow the nodes; "
        "Ctrl-C stops it",
    )
    parser.add_argument(
        "--port",
        type=int,
        metavar="N",
        help=f"Prometheus's port on 127.0.0.1 (default: {PROMETHEUS_PORT_DEFAULT} if free, "
        "else any free port; 0: any free port)",
    )
    parser.add_argument(
        "--scrape-interval",
        type=float,
        default=SCRAPE_INTERVAL_S_DEFAULT,
        metavar="SECONDS",
        help=f"scrape every node this often (default: {SCRAPE_INTERVAL_S_DEFAULT:g})",
    )
    parser.add_argument(
        "--evaluation-interval",
        type=float,
        default=EVALUATION_INTERVAL_S_DEFAULT,
        metavar="SECONDS",
        help=f"evaluate rules this often (default: {EVALUATION_INTERVAL_S_DEFAULT:g})",
    )
    parser.add_argument(
        "--install-only",
        action="store_true",
        help="install prometheus and promtool if missing, print where they are, exit",
    )


def say(message: str) -> None:
    views.stderr.print(message, markup=False)


def start_observer(data_dir: Path, port: int | None = None) -> Observer:
    """Prometheus for a cluster another thread runs (`cluster up --prometheus`)."""
    observer = Observer(data_dir, port=port)
    observer.start()
    observer.start_refresher()
    say(
        f"Prometheus {observer.url} · targets {observer.targets_file} · "
        f"rules {DEPLOY_DIR / 'rules'}"
    )
    return observer


def _alert_key(alert: dict[str, Any]) -> tuple[str, str]:
    labels = alert.get("labels", {})
    where = labels.get("node") or " -> ".join(
        filter(None, (labels.get("from_region"), labels.get("to_region")))
    )
    return str(labels.get("alertname", "?")), str(where or labels.get("namespace", ""))


def _report_changes(before: list[ScrapeTarget], after: list[ScrapeTarget]) -> None:
    old = {target.node: target for target in before}
    new = {target.node: target for target in after}
    changes = [f"+{name}" for name in new if name not in old]
    changes += [f"-{name}" for name in old if name not in new]
    changes += [f"~{name}" for name in new if name in old and new[name] != old[name]]
    if changes:
        say(f"targets: {' '.join(changes)} ({len(after)} nodes)")


def cmd_observe(args: argparse.Namespace) -> int:
    binaries = ensure_prometheus(report=say)
    if args.install_only:
        views.stdout.print(f"{binaries.prometheus}\n{binaries.promtool}", markup=False)
        return 0
    observer = Observer(
        args.data_dir,
        port=args.port,
        scrape_interval_s=args.scrape_interval,
        evaluation_interval_s=args.evaluation_interval,
        binaries=binaries,
    )
    with interrupted_by_signals():
        try:
            observer.start()
            assert observer.prometheus is not None
            views.stdout.print(observer.url, markup=False)
            say(
                f"scraping {len(observer.targets)} nodes every {args.scrape_interval:g} s · "
                f"targets {observer.targets_file} · rules {DEPLOY_DIR / 'rules'} · "
                "Ctrl-C stops Prometheus"
            )
            _watch(observer, observer.prometheus)
        except KeyboardInterrupt:
            pass
        finally:
            interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                observer.stop()
            finally:
                signal.signal(signal.SIGINT, interrupt)
    say("Prometheus stopped")
    return 0


def _watch(observer: Observer, prometheus: Prometheus) -> None:
    """Refresh the targets and report target and alert changes until interrupted."""
    firing: set[tuple[str, str]] = set()
    last_error = ""
    while True:
        before = observer.targets
        if observer.refresh():
            _report_changes(before, observer.targets)
        if observer.refresh_error and observer.refresh_error != last_error:
            say(f"targets unchanged: {observer.refresh_error}")
        last_error = observer.refresh_error
        if not prometheus.alive():
            raise ObserveError(
                f"prometheus exited; see {prometheus.log_file}:\n" + log_tail(prometheus.log_file)
            )
        with contextlib.suppress(urllib.error.URLError, OSError, KeyError, ValueError):
            now = {
                _alert_key(alert) for alert in prometheus.alerts() if alert.get("state") == "firing"
            }
            for name, where in sorted(now - firing):
                say(f"FIRING {name} {where}")
            for name, where in sorted(firing - now):
                say(f"resolved {name} {where}")
            firing = now
        time.sleep(observer.refresh_interval_s)


# prctl(2) option: the signal this process gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child: a dlopen between fork and exec could deadlock.
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM when edgectl's starting thread (its main thread:
    edgectl starts Prometheus from there) ends, however edgectl ends. Linux only."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
