"""`edgectl cluster up|down|status` and `edgectl node stop|kill|start`: the cluster's
local processes, as the launcher (`edgectl.launcher`) starts, watches and stops them.

Both groups act on the processes recorded in DIR/cluster.json, not through the control
plane, so they live together; the control plane's view of the nodes (`nodes`,
`http-address`) is `edgectl.commands.nodes`. `cluster up` in the foreground also runs
the live view, the web console and (with --prometheus) Prometheus until Ctrl-C, and
deploys the startup bundles (`--workers`) as `edgectl deploy` does.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

from rich.live import Live

from edge.v1 import workers_pb2
from edgectl import deploys, observe, views
from edgectl.client import CliError, ClusterMonitor, EdgeClient
from edgectl.commands.deploy import deploy_and_wait, fail_if_lagging, rollout_summary
from edgectl.console import cli as console_cli
from edgectl.launcher import (
    START_TIMEOUT_S_DEFAULT,
    STATE_FILE_NAME,
    Cluster,
    ClusterError,
    pid_alive,
)
from edgectl.signals import interrupted_by_signals

if TYPE_CHECKING:
    from edgectl.cli import CommandSet
    from edgectl.console.app import ConsoleServer

LIVE_REFRESH_S = 1.0


def register_cluster(commands: CommandSet) -> None:
    cluster = commands.group("cluster", "start, stop and inspect a local cluster")
    up = cluster.add(
        "up",
        cmd_cluster_up,
        "start every node of the topology; stays in the foreground with a live view "
        "(Ctrl-C stops every node) unless --detach",
        json_output=True,
    )
    up.add_argument("--detach", action="store_true", help="return once every node is SERVING")
    up.add_argument("--topology", type=Path, metavar="FILE", help="topology YAML file")
    up.add_argument(
        "--base-port", type=int, metavar="N", help="ports from N on (default: any free port)"
    )
    up.add_argument(
        "--start-timeout",
        type=float,
        metavar="SECONDS",
        default=START_TIMEOUT_S_DEFAULT,
        help=f"give up starting after this long (default: {START_TIMEOUT_S_DEFAULT:g})",
    )
    up.add_argument(
        "--workers",
        dest="worker_dirs",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="deploy these workers once every node is SERVING (repeatable): a bundle folder "
        "or a folder of bundle folders (`make cluster` passes --workers workers)",
    )
    up.add_argument(
        "--no-workers", action="store_true", help="deploy no workers, even with --workers"
    )
    up.add_argument(
        "--prometheus",
        action="store_true",
        help="also run Prometheus (deploy/prometheus rules, targets following the nodes) "
        "until the cluster stops; not with --detach (use `edgectl observe` then)",
    )
    up.add_argument(
        "--prometheus-port",
        type=int,
        metavar="N",
        help=f"Prometheus's port (default: {observe.PROMETHEUS_PORT_DEFAULT} if free)",
    )
    up.add_argument(
        "--console-port",
        type=int,
        metavar="N",
        help=f"the web console's port (default: {console_cli.PORT_DEFAULT} if free); "
        "the console runs with the foreground cluster",
    )
    up.add_argument("--no-console", action="store_true", help="do not serve the web console")
    up.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS for every gRPC and HTTP connection (certificates in DIR/tls/, "
        "made when missing); later commands follow, as cluster.json records it",
    )
    cluster.add("down", cmd_cluster_down, "stop every node (PoPs, origin, control plane)")
    cluster.add(
        "status", cmd_cluster_status, "every node: process, health, addresses", json_output=True
    )


def register_node(commands: CommandSet) -> None:
    node = commands.group("node", "stop, kill or start one node by name")
    for action, help in (
        ("stop", "SIGTERM: the node drains and closes its store"),
        ("kill", "SIGKILL: no drain (crash testing)"),
        ("start", "start a stopped node on its previous ports and data dir"),
    ):
        parser = node.add(action, cmd_node, help)
        parser.add_argument("name", metavar="NAME")
        parser.set_defaults(action=action)


def cmd_cluster_up(args: argparse.Namespace) -> int:
    cluster = Cluster(
        args.data_dir,
        topology_file=args.topology,
        base_port=args.base_port,
        tls=args.tls,
        # In the foreground the nodes are this command's: they stop when it ends, even
        # by SIGKILL or a closed terminal. Detached, they outlive it.
        stop_with_launcher=not args.detach,
    )
    bundles = _startup_bundles(args)
    if args.prometheus:
        if args.detach:
            raise CliError(
                "INVALID_ARGUMENT",
                "--prometheus runs with the foreground cluster; after --detach run "
                "`edgectl observe` (make observe)",
            )
        # Before any node starts: an install takes a while and may fail.
        observe.ensure_prometheus(report=observe.say)
    if not args.detach:
        return _run_foreground(cluster, args, bundles)
    _start(cluster, args.start_timeout)
    try:
        _deploy_startup_bundles(cluster, bundles, deploys.ROLLOUT_TIMEOUT_S_DEFAULT)
    except BaseException:
        # As when a node fails to start: nothing is left running half set up.
        cluster.down()
        raise
    rows = cluster.status()
    if args.json:
        views.print_json(rows)
    else:
        views.stdout.print(views.status_table(rows, title=f"cluster up in {cluster.data_dir}"))
    return 0


def _start(cluster: Cluster, timeout_s: float) -> None:
    """Cluster.up with a progress bar; on failure the error carries the node's log tail."""
    total = len(cluster.topology.node_specs())
    with views.start_progress() as progress:
        task = progress.add_task("starting", total=total)

        def on_ready(name: str, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total, description=f"{name} ready")

        started = time.monotonic()
        cluster.up(timeout=timeout_s, progress=on_ready)
        progress.update(task, description="all SERVING")
    if not views.stderr.is_terminal:
        views.stderr.print(
            f"{total} nodes SERVING in {time.monotonic() - started:.1f} s ({cluster.data_dir})"
        )


def _startup_bundles(args: argparse.Namespace) -> list[tuple[Path, workers_pb2.WorkerBundle]]:
    """The bundles `cluster up` deploys, read and checked before any node starts."""
    if args.no_workers:
        return []
    return [(folder, deploys.read(folder)) for folder in deploys.bundle_dirs(args.worker_dirs)]


def _deploy_startup_bundles(
    cluster: Cluster, bundles: list[tuple[Path, workers_pb2.WorkerBundle]], timeout_s: float
) -> None:
    """Deploy every bundle, then wait for all at every PoP; one line per deploy on stderr."""
    if not bundles:
        return
    with EdgeClient.for_data_dir(cluster.data_dir) as client:
        requests = [workers_pb2.DeployRequest(bundle=bundle) for _, bundle in bundles]
        deployed = deploy_and_wait(client, requests, timeout_s)
    for (folder, _), (response, seen, elapsed) in zip(bundles, deployed, strict=True):
        assert seen is not None
        views.stderr.print(
            f"deployed {response.name} {deploys.short(response.version)} from {folder}"
            f"{'' if response.changed else ' (unchanged)'} · {rollout_summary(seen, elapsed)}",
            markup=False,
            highlight=False,
        )
    for response, seen, _ in deployed:
        assert seen is not None
        fail_if_lagging(response, seen, timeout_s)


def _run_foreground(
    cluster: Cluster,
    args: argparse.Namespace,
    bundles: list[tuple[Path, workers_pb2.WorkerBundle]],
) -> int:
    """`cluster up` without --detach: deploy, live view until Ctrl-C/SIGTERM, stop all.

    A reader that goes away (`| tee log` ended by the same Ctrl-C) makes writes fail with
    EPIPE: that stops the cluster as a signal does, and the shutdown's own messages are
    best effort, so a lost terminal never leaves nodes running. (Should this process die
    all the same, its nodes stop by themselves: see Cluster's stop_with_launcher.)
    """
    with interrupted_by_signals(), _broken_pipe_unwinds():
        try:
            # Cluster.up stops whatever it started when it fails or is interrupted.
            _start(cluster, args.start_timeout)
        except (KeyboardInterrupt, BrokenPipeError) as stopped:
            if isinstance(stopped, BrokenPipeError):
                _silence_output()
            # Also when the interruption came just after Cluster.up returned.
            _stop_all(cluster, None)
            return 0
        observer: observe.Observer | None = None
        console: ConsoleServer | None = None
        try:
            _deploy_startup_bundles(cluster, bundles, deploys.ROLLOUT_TIMEOUT_S_DEFAULT)
            if args.prometheus:
                observer = observe.start_observer(cluster.data_dir, args.prometheus_port)
            if not args.no_console:
                console = _start_console(cluster, args.console_port)
            views.stderr.print("Ctrl-C or SIGTERM stops every node")
            if args.json:
                views.print_json(cluster.status())
                _wait_while_alive(cluster)
            else:
                _live(cluster)
        except KeyboardInterrupt:
            pass
        except BrokenPipeError:
            _silence_output()
        finally:
            if console is not None:
                console.stop()
            _stop_all(cluster, observer)
    return 0


def _start_console(cluster: Cluster, port: int | None) -> ConsoleServer | None:
    """The web console beside the live view; a console that cannot start (its port is
    taken) is said and skipped: the cluster is what the user asked for."""
    try:
        server = console_cli.start_console(cluster.data_dir, "127.0.0.1", port)
    except CliError as error:
        views.stderr.print(f"console not started: {error.details}", markup=False)
        return None
    views.stderr.print(f"console: {server.url}", markup=False, soft_wrap=True)
    return server


def _stop_all(cluster: Cluster, observer: observe.Observer | None) -> None:
    """Stop the observer and every node, immune to a second Ctrl-C (it would orphan nodes)."""
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminate = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        if observer is not None:
            observer.stop()
        cluster.reload()  # nodes restarted by `edgectl node start` have new pids
        running = [name for name in cluster.running() if name in cluster.nodes]
        _say(f"stopping {len(running)} nodes …")
        cluster.down()
        _say("every node stopped")
    finally:
        signal.signal(signal.SIGINT, interrupt)
        signal.signal(signal.SIGTERM, terminate)


@contextlib.contextmanager
def _broken_pipe_unwinds() -> Iterator[None]:
    """On EPIPE rich ends the process (SystemExit from inside whatever write failed); in
    the foreground the error must instead unwind to the code that stops the nodes."""

    def on_broken_pipe() -> None:
        _silence_output()
        raise BrokenPipeError(errno.EPIPE, "the reader of this command's output is gone")

    consoles = (views.stdout, views.stderr)
    previous = [console.on_broken_pipe for console in consoles]
    for console in consoles:
        console.on_broken_pipe = on_broken_pipe  # type: ignore[method-assign]
    try:
        yield
    finally:
        for console, handler in zip(consoles, previous, strict=True):
            console.on_broken_pipe = handler  # type: ignore[method-assign]


def _say(message: str) -> None:
    """A message on stderr that cannot fail: once the reader is gone, output goes nowhere."""
    try:
        views.stderr.print(message)
    except OSError:
        _silence_output()


def _silence_output() -> None:
    """After EPIPE: stdout and stderr go to /dev/null, so later writes (rich's, the
    interpreter's flush at exit) cannot fail again and cut the shutdown short."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def _wait_while_alive(cluster: Cluster) -> None:
    while True:
        cluster.reload()
        if not any(pid_alive(node.pid) for node in cluster.nodes.values()):
            views.stderr.print("every node has exited")
            return
        time.sleep(LIVE_REFRESH_S)


def _live(cluster: Cluster) -> None:
    started_at = time.monotonic()
    pool = futures.ThreadPoolExecutor(
        max_workers=len(cluster.nodes) + 1, thread_name_prefix="edgectl-probe"
    )
    monitor = ClusterMonitor(cluster, pool)
    try:
        with Live(console=views.stdout, auto_refresh=False) as live:
            while True:
                tick = time.monotonic()
                samples = monitor.sample()
                live.update(views.live_view(samples, cluster.data_dir, started_at), refresh=True)
                if not any(sample.alive for sample in samples):
                    views.stderr.print("every node has exited")
                    return
                time.sleep(max(0.0, LIVE_REFRESH_S - (time.monotonic() - tick)))
    finally:
        # Probes still running finish on their own (each has a short deadline).
        pool.shutdown(wait=False, cancel_futures=True)
        monitor.close()


def cmd_cluster_down(args: argparse.Namespace) -> int:
    cluster = Cluster.open(args.data_dir)
    # Every process of the cluster, whether cluster.json still knows its pid or not.
    running = [name for name in cluster.running() if name in cluster.nodes]
    cluster.down()
    views.stdout.print(f"stopped {len(running)} of {len(cluster.nodes)} nodes")
    return 0


def cmd_cluster_status(args: argparse.Namespace) -> int:
    rows = Cluster.open(args.data_dir).status()
    if args.json:
        views.print_json(rows)
    else:
        views.stdout.print(views.status_table(rows))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    cluster = Cluster.open(args.data_dir)
    node = cluster.node(args.name)
    pid = node.pid
    if args.action == "start":
        cluster.start(args.name)
        node = cluster.node(args.name)
        views.stdout.print(f"started {node.name} (pid {node.pid}) on {node.grpc_address}")
        return 0
    running = cluster.pids_of(args.name)
    if not running:
        views.stdout.print(f"{node.name} is not running")
        return 0
    if pid not in running:
        # Found by its ready file or command line, not by cluster.json: whatever wrote the
        # file lost it. Saying "not running" would leave it to hold its ports.
        recorded = f"pid {pid}" if pid else "no pid"
        raise ClusterError(
            f"{node.name} is running as pid {', '.join(map(str, running))} but "
            f"{STATE_FILE_NAME} records {recorded}; `edgectl cluster down` stops it"
        )
    if args.action == "stop":
        cluster.stop(args.name)
        views.stdout.print(f"stopped {node.name} (pid {pid})")
    else:
        cluster.kill(args.name)
        views.stdout.print(f"killed {node.name} (pid {pid})")
    return 0
