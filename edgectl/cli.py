"""edgectl's command line: argument parsing and one small handler per command.

Commands are registered group by group (`COMMAND_GROUPS`); a handler takes the parsed
arguments and returns the exit code. Adding a command is one `register_*` function that
declares its arguments and points at its handler; the logic of a group lives beside it
(`net`, `probe`, `objects` for `do`, `workers` for deploy/workers/token), and the `kv`
and `d1` groups live whole in their own modules (`kv`, `d1`). Every failure
a user can cause or meet ends as `error: CODE: details` on stderr with exit status 1,
never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from rich.live import Live
from rich.table import Table

from edge.v1 import control_plane_pb2 as cp_pb2
from edge.v1 import objects_pb2, workers_pb2
from edgectl import d1, net, observe, probe, views
from edgectl import kv as kv_cli
from edgectl import objects as do
from edgectl import workers as deploys
from edgectl.chaos import cli as chaos_cli
from edgectl.client import (
    RPC_TIMEOUT_S_DEFAULT,
    CliError,
    ClusterMonitor,
    EdgeClient,
    Target,
)
from edgectl.console import cli as console_cli
from edgectl.console.app import ConsoleConfig, ConsoleServer
from edgectl.launcher import (
    START_TIMEOUT_S_DEFAULT,
    STATE_FILE_NAME,
    Cluster,
    ClusterError,
    pid_alive,
)
from edgectl.signals import interrupted_by_signals
from edgepop.tls import TlsError
from edgepop.topology import TopologyError

DATA_DIR_ENV = "EDGEPOP_DATA_DIR"
DATA_DIR_DEFAULT = ".cluster"
LIVE_REFRESH_S = 1.0

Handler = Callable[[argparse.Namespace], int]


# -- registration ----------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options every command takes, before or after its name.

    The copies on each subcommand default to SUPPRESS so that they only override the
    top-level value when given there (`edgectl --data-dir X kv get` and
    `edgectl kv get --data-dir X` mean the same).
    """

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        default=default(Path(os.environ.get(DATA_DIR_ENV, DATA_DIR_DEFAULT))),
        help=f"the cluster's data dir (default: ${DATA_DIR_ENV} or {DATA_DIR_DEFAULT})",
    )
    parser.add_argument(
        "--control-plane",
        metavar="HOST:PORT",
        default=default(None),
        help="the control plane's gRPC address (default: from DIR/cluster.json)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=default(RPC_TIMEOUT_S_DEFAULT),
        help=f"deadline of each RPC (default: {RPC_TIMEOUT_S_DEFAULT:g})",
    )


@dataclass
class CommandSet:
    """A level of subcommands (`edgectl …`, `edgectl kv …`) that commands attach to."""

    subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    common: argparse.ArgumentParser

    def group(self, name: str, help: str) -> CommandSet:
        parser = self.subparsers.add_parser(
            name, help=help, description=help, parents=[self.common]
        )
        subparsers = parser.add_subparsers(metavar="COMMAND", required=True)
        return CommandSet(subparsers, self.common)

    def add(
        self,
        name: str,
        handler: Handler,
        help: str,
        *,
        json_output: bool = False,
        parents: tuple[argparse.ArgumentParser, ...] = (),
    ) -> argparse.ArgumentParser:
        parser = self.subparsers.add_parser(
            name, help=help, description=help, parents=[self.common, *parents]
        )
        parser.set_defaults(handler=handler)
        if json_output:
            parser.add_argument("--json", action="store_true", help="print JSON to stdout")
        return parser


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


def register_nodes(commands: CommandSet) -> None:
    commands.add(
        "nodes", cmd_nodes, "the control plane's node registry with health", json_output=True
    )


def _arg_type(parse: Callable[[str], float], name: str) -> Callable[[str], float]:
    """An argparse type from a parser raising ValueError (argparse prints the message)."""

    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = name  # argparse names the type in its fallback message
    return convert


MS = _arg_type(net.parse_ms, "ms")
DURATION = _arg_type(net.parse_duration, "duration")
LOSS = _arg_type(net.parse_loss, "loss")


def _fault_options() -> argparse.ArgumentParser:
    """The pair and how long: shared by every command that sets a fault."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("from_region", metavar="FROM", help="a region")
    parser.add_argument("to_region", metavar="TO", help="another region")
    parser.add_argument(
        "--one-way",
        action="store_true",
        help="only messages from FROM to TO (default: both directions)",
    )
    parser.add_argument(
        "--for",
        dest="duration_s",
        type=DURATION,
        metavar="DURATION",
        help="heal by itself after this long (30s, 2m, 500ms, or seconds)",
    )
    return parser


def register_net(commands: CommandSet) -> None:
    group = commands.group(
        "net",
        "break the emulated network on purpose: per region pair, live, pushed to every node "
        "(changes need the cluster token)",
    )
    fault = _fault_options()
    delay = group.add(
        "delay",
        cmd_net_set,
        "add one-way delay to every message between FROM and TO (on top of the matrix)",
        json_output=True,
        parents=(fault,),
    )
    delay.add_argument("delay_ms", metavar="MS", type=MS, help="extra delay: 100, 100ms, 0.1s")
    delay.add_argument(
        "--jitter", dest="jitter_ms", type=MS, metavar="MS", help="also jitter (standard deviation)"
    )
    delay.set_defaults(fault="delay")

    jitter = group.add(
        "jitter",
        cmd_net_set,
        "add jitter: a normal term with this standard deviation on each message's delay",
        json_output=True,
        parents=(fault,),
    )
    jitter.add_argument("jitter_ms", metavar="MS", type=MS, help="standard deviation")
    jitter.set_defaults(fault="jitter")

    loss = group.add(
        "loss",
        cmd_net_set,
        "lose messages: each loss costs a 200 ms retransmission (doubling), as TCP",
        json_output=True,
        parents=(fault,),
    )
    loss.add_argument("loss", metavar="FRACTION_OR_PERCENT", type=LOSS, help="0.2 or 20%%")
    loss.set_defaults(fault="loss")

    partition = group.add(
        "partition",
        cmd_net_set,
        "cut FROM off from TO: calls across fail at their deadline, streams stop",
        json_output=True,
        parents=(fault,),
    )
    partition.set_defaults(fault="partition")

    heal = group.add(
        "heal",
        cmd_net_heal,
        "remove the fault between FROM and TO, or every fault when no pair is given",
        json_output=True,
    )
    heal.add_argument("regions", nargs="*", metavar="FROM TO", help="the pair (default: all)")
    heal.add_argument("--one-way", action="store_true", help="only FROM -> TO")

    show = group.add(
        "show",
        cmd_net_show,
        "the faults in force (and with --matrix the base RTT matrix)",
        json_output=True,
    )
    show.add_argument("--matrix", action="store_true", help="also the base RTT matrix (ms)")


def register_probe(commands: CommandSet) -> None:
    parser = commands.add(
        "probe",
        cmd_probe,
        "measure the seed's latency table: per region, median RTT to the nearest PoP and "
        "to the origin against the topology's targets",
        json_output=True,
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=probe.CALLS_DEFAULT,
        metavar="N",
        help=f"timed calls per target (default: {probe.CALLS_DEFAULT})",
    )
    parser.add_argument(
        "--region",
        dest="regions",
        action="extend",
        nargs="+",
        metavar="R",
        help="only these regions (default: every PoP region)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=probe.PARALLEL_DEFAULT,
        metavar="N",
        help="regions whose origin round trips are timed at once (edge round trips are "
        f"timed one at a time) (default: {probe.PARALLEL_DEFAULT})",
    )


def _object_options() -> argparse.ArgumentParser:
    """Where a `do` command enters the cluster and as whom (as for kv, without --origin)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--from",
        dest="from_region",
        metavar="REGION",
        help="the caller's region: enters at its nearest healthy PoP and pays that RTT",
    )
    parser.add_argument("--pop", metavar="NODE", help="enter at this PoP")
    return parser


def _placement_options() -> argparse.ArgumentParser:
    """Which object (`--id` instead of NAME) and where to place it on first use."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--id", dest="object_id", metavar="HEX", help="the object's id (64 hex) instead of NAME"
    )
    parser.add_argument(
        "--location-hint",
        default="",
        metavar="REGION",
        help="on first use, place the object in this region (default: nearest the caller)",
    )
    return parser


def register_do(commands: CommandSet) -> None:
    group = commands.group(
        "do",
        "Durable Objects: call a method, make an id, list placements, open a session",
    )
    where = _object_options()
    placement = _placement_options()

    call = group.add(
        "call",
        cmd_do_call,
        "call METHOD on the object NAME of class CLASS (placed on first use, then always "
        "run by its one owner); the result JSON on stdout, owner, epoch and latency on stderr",
        json_output=True,
        parents=(where, placement),
    )
    call.usage = "edgectl do call CLASS (NAME | --id HEX) METHOD [JSON] [options]"
    call.add_argument("namespace", metavar="CLASS", help="Counter, RateLimiter, Lock, ...")
    call.add_argument(
        "words",
        nargs="+",
        metavar="NAME METHOD [JSON]",
        help="JSON arguments: an array for positional, an object for keyword arguments, "
        "a bare value for one positional argument",
    )

    ident = group.add(
        "id",
        cmd_do_id,
        "an object id: from NAME (the same name gives the same id), from --string (checked "
        "against CLASS), or --unique (random)",
        json_output=True,
        parents=(where,),
    )
    ident.add_argument("namespace", metavar="CLASS")
    ident.add_argument("name", nargs="?", metavar="NAME")
    ident.add_argument("--string", metavar="HEX", help="check and normalise this id")
    ident.add_argument("--unique", action="store_true", help="a new random id")

    placements = group.add(
        "placements",
        cmd_do_placements,
        "every placed object: owner, standby and epoch (needs the cluster token)",
        json_output=True,
    )
    placements.add_argument("--namespace", metavar="CLASS", help="only objects of this class")

    connect = group.add(
        "connect",
        cmd_do_connect,
        "a session with one object (ObjectConnect): each line of stdin is sent as a message, "
        "each message from the object is printed as a line",
        json_output=True,
        parents=(where, placement),
    )
    connect.add_argument("namespace", metavar="CLASS", help="e.g. DocumentSession")
    connect.add_argument("name", nargs="?", metavar="NAME")
    connect.add_argument(
        "--send",
        dest="sends",
        action="append",
        default=[],
        metavar="TEXT",
        help="send TEXT instead of reading stdin (repeatable, in order)",
    )
    connect.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="exit after N data messages from the object (failing after --timeout)",
    )


def register_deploy(commands: CommandSet) -> None:
    deploy = commands.add(
        "deploy",
        cmd_deploy,
        "deploy the worker bundle in DIR (a wrangler config and its main module, or worker.py "
        "+ worker.yaml) to every PoP, or roll a "
        "worker back to its previous version; waits until every healthy PoP serves it",
        json_output=True,
    )
    deploy.usage = "edgectl deploy (DIR | --rollback NAME) [options]"
    deploy.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="a bundle folder")
    deploy.add_argument(
        "--rollback", metavar="NAME", help="make the version before the active one active again"
    )
    deploy.add_argument(
        "--wait-timeout",
        type=float,
        default=deploys.ROLLOUT_TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help="fail when a PoP does not serve the version after this long "
        f"(default: {deploys.ROLLOUT_TIMEOUT_S_DEFAULT:g})",
    )
    deploy.add_argument(
        "--no-wait", action="store_true", help="return once the control plane stored it"
    )


def register_workers(commands: CommandSet) -> None:
    workers = commands.add(
        "workers",
        cmd_workers,
        "every deployed worker: its versions, the active one, and the PoPs serving each now "
        "with their cold starts; `workers trigger NAME --cron EXPR` runs a worker's "
        "scheduled handler now",
        json_output=True,
    )
    workers.usage = "edgectl workers [--json] | edgectl workers trigger NAME [--cron EXPR]"
    workers.add_argument("action", nargs="?", choices=["trigger"], help=argparse.SUPPRESS)
    workers.add_argument("name", nargs="?", metavar="NAME", help=argparse.SUPPRESS)
    workers.add_argument(
        "--cron",
        default="* * * * *",
        metavar="EXPR",
        help="trigger: the cron expression the handler is told fired (default: * * * * *)",
    )
    workers.add_argument(
        "--from",
        dest="from_region",
        metavar="REGION",
        help="trigger: run it at the PoP nearest REGION (default: any healthy PoP)",
    )


def register_token(commands: CommandSet) -> None:
    token = commands.group("token", "JWTs from the origin's auth server")
    issue = token.add(
        "issue",
        cmd_token_issue,
        "print a JWT signed by the origin (accepted by the jwt-auth and api-router workers)",
        json_output=True,
    )
    issue.add_argument("--sub", required=True, metavar="NAME", help="the token's subject")
    issue.add_argument(
        "--alg", choices=deploys.TOKEN_ALGORITHMS, default="RS256", help="default: RS256"
    )
    issue.add_argument(
        "--ttl",
        type=int,
        default=deploys.TOKEN_TTL_S_DEFAULT,
        metavar="SECONDS",
        help=f"valid this long (default: {deploys.TOKEN_TTL_S_DEFAULT})",
    )


def register_certs(commands: CommandSet) -> None:
    parser = commands.add(
        "certs",
        cmd_certs,
        "make a cluster CA and certificates for every node and for clients in DIR/tls/ "
        "(mutual TLS); keeps what is still good",
        json_output=True,
    )
    parser.add_argument(
        "--topology", type=Path, metavar="FILE", help="the nodes (default: DIR/cluster.json's)"
    )
    parser.add_argument(
        "--san",
        dest="sans",
        action="append",
        default=[],
        metavar="NAME",
        help="another DNS name or IP for every node certificate (repeatable); {name} "
        "becomes the node's name, e.g. '{name}.edgepop.svc.cluster.local'",
    )
    parser.add_argument(
        "--renew", action="store_true", help="issue every certificate again (the CA is kept)"
    )


def register_http_address(commands: CommandSet) -> None:
    parser = commands.add(
        "http-address",
        cmd_http_address,
        "host:port of a node's HTTP ingress (the origin's: its application), or of the PoP "
        "nearest --from REGION: for curl",
        json_output=True,
    )
    parser.add_argument("name", nargs="?", metavar="NODE")
    parser.add_argument(
        "--from", dest="from_region", metavar="REGION", help="the PoP a user there reaches"
    )


COMMAND_GROUPS: tuple[Callable[[CommandSet], None], ...] = (
    register_cluster,
    console_cli.register_console,
    register_node,
    register_nodes,
    kv_cli.register_kv,
    register_net,
    register_probe,
    register_do,
    d1.register_d1,
    register_deploy,
    register_workers,
    register_token,
    register_http_address,
    register_certs,
    observe.register_observe,
    chaos_cli.register_chaos,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgectl",
        description="Run and use an edgepop cluster: PoPs, an origin and a control plane.",
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = CommandSet(parser.add_subparsers(metavar="COMMAND", required=True), common)
    for register in COMMAND_GROUPS:
        register(commands)
    return parser


# -- cluster ---------------------------------------------------------------------------


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
        deployed = _deploy_and_wait(client, requests, timeout_s)
    for (folder, _), (response, seen, elapsed) in zip(bundles, deployed, strict=True):
        assert seen is not None
        views.stderr.print(
            f"deployed {response.name} {deploys.short(response.version)} from {folder}"
            f"{'' if response.changed else ' (unchanged)'} · {_rollout_summary(seen, elapsed)}",
            markup=False,
            highlight=False,
        )
    for response, seen, _ in deployed:
        assert seen is not None
        _fail_if_lagging(response, seen, timeout_s)


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
    config = ConsoleConfig(
        cluster.data_dir, "127.0.0.1", console_cli.port_or_free("127.0.0.1", port)
    )
    try:
        server = console_cli.start_console(config)
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


def _client(args: argparse.Namespace) -> EdgeClient:
    return EdgeClient.for_args(args)


def cmd_nodes(args: argparse.Namespace) -> int:
    with _client(args) as client:
        infos = client.list_nodes()
    if args.json:
        views.print_json([views.node_info_json(info) for info in infos])
    else:
        views.stdout.print(views.nodes_table(infos))
    return 0


# -- net -------------------------------------------------------------------------------


def _fault_request(args: argparse.Namespace) -> cp_pb2.SetLinkFaultRequest:
    return net.fault_request(
        args.fault,
        args.from_region,
        args.to_region,
        delay_ms=getattr(args, "delay_ms", None),
        jitter_ms=getattr(args, "jitter_ms", None),
        loss=getattr(args, "loss", None),
        one_way=args.one_way,
        duration_s=args.duration_s,
    )


def _print_faults(args: argparse.Namespace, faults: list[cp_pb2.LinkFault], done: str) -> None:
    now = time.time()
    faults = net.in_force(faults, now)
    if args.json:
        views.print_json({"faults": [net.fault_json(fault, now) for fault in faults]})
        return
    views.stderr.print(done, markup=False)
    if faults:
        views.stdout.print(views.faults_table(faults, now))
    else:
        views.stdout.print("no link faults in force")


def cmd_net_set(args: argparse.Namespace) -> int:
    request = _fault_request(args)
    with _client(args) as client:
        faults = client.set_link_fault(request)
    arrow = "->" if args.one_way else "<->"
    pair = f"{args.from_region} {arrow} {args.to_region}"
    changed = next(
        (f for f in faults if (f.from_region, f.to_region) == (args.from_region, args.to_region)),
        None,
    )
    done = f"{pair}: {net.describe(changed) if changed else 'no fault'}"
    if args.duration_s:
        done += f" for {args.duration_s:g} s"
    _print_faults(args, faults, done)
    return 0


def cmd_net_heal(args: argparse.Namespace) -> int:
    if len(args.regions) not in (0, 2):
        raise CliError("INVALID_ARGUMENT", "give a pair FROM TO, or nothing to heal every fault")
    if args.one_way and not args.regions:
        raise CliError("INVALID_ARGUMENT", "--one-way needs a pair FROM TO")
    with _client(args) as client:
        if args.regions:
            # The control plane clears an unknown pair as a no-op; a typo should not
            # look like a successful heal.
            unknown = net.unknown_regions(client.topology(), args.regions)
            if unknown:
                raise CliError("INVALID_ARGUMENT", f"unknown region {unknown[0]!r}")
            from_region, to_region = args.regions
            request = cp_pb2.ClearFaultsRequest(
                from_region=from_region, to_region=to_region, one_way=args.one_way
            )
            done = f"healed {from_region} {'->' if args.one_way else '<->'} {to_region}"
        else:
            request = cp_pb2.ClearFaultsRequest()
            done = "healed every link"
        faults = client.clear_faults(request)
    _print_faults(args, faults, done)
    return 0


def cmd_net_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        topology = client.topology()
    now = time.time()
    faults = net.in_force(topology.faults, now)
    matrix = net.rtt_matrix(topology)
    if args.json:
        data: dict[str, Any] = {"faults": [net.fault_json(fault, now) for fault in faults]}
        if args.matrix:
            data["matrix"] = matrix.to_json()
        views.print_json(data)
        return 0
    if faults:
        views.stdout.print(views.faults_table(faults, now))
    else:
        views.stdout.print("no link faults in force")
    if args.matrix:
        views.stdout.print(views.rtt_matrix_table(matrix, net.faulted_pairs(faults)))
    return 0


# -- probe -----------------------------------------------------------------------------


def cmd_probe(args: argparse.Namespace) -> int:
    if args.calls < 1:
        raise CliError("INVALID_ARGUMENT", "--calls must be at least 1")
    if args.parallel < 1:
        raise CliError("INVALID_ARGUMENT", "--parallel must be at least 1")
    started = time.monotonic()
    with _client(args) as client:
        topology = client.topology()
        plans = probe.plan(client, topology, args.regions)
        per_region = 2 * (args.calls + 1)  # edge and origin, each with its warm-up
        with views.probe_progress() as progress:
            tasks = {
                p.region: progress.add_task(f"{p.region} via {p.pop.name}", total=per_region)
                for p in plans
            }

            def advance(region: str) -> None:
                progress.advance(tasks[region])

            results = probe.run_probe(
                client, topology, plans, args.calls, advance, parallel=args.parallel
            )
    if args.json:
        views.print_json([result.to_json() for result in results])
        return 0
    views.stdout.print(views.probe_table(results))
    views.stdout.print(probe.headline(results), markup=False)
    if not views.stderr.is_terminal:
        views.stderr.print(
            f"probed {len(results)} regions x 2 targets x {args.calls} calls "
            f"in {time.monotonic() - started:.1f} s",
            markup=False,
        )
    return 0


# -- Durable Objects -------------------------------------------------------------------


def _object_target(client: EdgeClient, args: argparse.Namespace) -> Target:
    return client.resolve(from_region=args.from_region, pop=args.pop, origin_hint=False)


def cmd_do_call(args: argparse.Namespace) -> int:
    words = do.parse_call(args.namespace, args.words, args.object_id)
    request = objects_pb2.ObjectCallRequest(
        namespace=words.ref.namespace,
        name=words.ref.name,
        id=words.ref.id,
        method=words.method,
        args_json=words.args_json,
        location_hint=args.location_hint,
    )
    with _client(args) as client:
        target = _object_target(client, args)
        timed = client.object_call(target, request)
    reply = timed.response
    if args.json:
        views.print_json(
            {
                "result": views.metadata_value(reply.result_json),
                "node": reply.node,
                "epoch": reply.epoch,
                "id": reply.id,
                "latency_ms": round(timed.latency_ms, 3),
                "entry": target.name,
                "from_region": target.caller_region,
            }
        )
        return 0
    sys.stdout.write(reply.result_json + "\n")
    sys.stdout.flush()
    views.stderr.print(views.object_via(reply, target, timed.latency_ms), style="dim", markup=False)
    return 0


def cmd_do_id(args: argparse.Namespace) -> int:
    given = [args.name is not None, args.string is not None, args.unique]
    if sum(given) != 1:
        raise CliError("INVALID_ARGUMENT", "give one of NAME, --string HEX or --unique")
    request = objects_pb2.ObjectIdRequest(
        namespace=args.namespace, name=args.name or "", id=args.string or ""
    )
    with _client(args) as client:
        timed = client.object_id(_object_target(client, args), request)
    kind = "name" if args.name is not None else "string" if args.string is not None else "unique"
    if args.json:
        views.print_json({"namespace": args.namespace, "id": timed.response.id, "from": kind})
    else:
        views.stdout.print(timed.response.id, markup=False)
    return 0


def cmd_do_placements(args: argparse.Namespace) -> int:
    with _client(args) as client:
        placements = client.list_placements()
    if args.namespace:
        placements = [p for p in placements if p.namespace == args.namespace]
    placements.sort(key=lambda p: (p.namespace, p.owner, p.id))
    if args.json:
        views.print_json([do.placement_json(p) for p in placements])
        return 0
    if placements:
        views.stdout.print(views.placements_table(placements))
    count = len(placements)
    views.stderr.print(
        f"{count} object{'' if count == 1 else 's'} placed", style="dim", markup=False
    )
    return 0


def cmd_do_connect(args: argparse.Namespace) -> int:
    ref = do.object_ref(args.namespace, args.name, args.object_id)
    if args.count is not None and args.count < 1:
        raise CliError("INVALID_ARGUMENT", "--count must be at least 1")

    def show(message: objects_pb2.ObjectServerMessage, seen: do.SessionResult) -> None:
        if args.json:
            sys.stdout.write(json.dumps(do.message_json(message), ensure_ascii=False) + "\n")
            sys.stdout.flush()
            return
        kind = message.WhichOneof("kind")
        if kind == "data":
            sys.stdout.write(message.data + "\n")
            sys.stdout.flush()
        elif kind == "opened":
            opened = message.opened
            where = [f"connected to {ref.label} on {opened.node}", f"epoch {opened.epoch}"]
            if target.name != opened.node:
                where.append(f"via {target.name} ({target.region})")
            if target.caller_region != target.region:
                where.append(f"from {target.caller_region}")
            where.append(f"session {opened.session_id}")
            if seen.open_ms is not None:
                where.append(views.fmt_ms(seen.open_ms))
            views.stderr.print(" · ".join(where), style="dim", markup=False)
        elif kind == "closed":
            views.stderr.print(f"closed: {message.closed.reason}", style="dim", markup=False)

    with _client(args) as client:
        target = _object_target(client, args)
        do.run_session(
            client,
            target,
            ref,
            location_hint=args.location_hint,
            sends=args.sends,
            count=args.count,
            timeout_s=args.timeout,
            on_message=show,
        )
    return 0


# -- workers ---------------------------------------------------------------------------


Deployed = tuple[workers_pb2.DeployResponse, deploys.Rollout | None, float]


def _deploy_and_wait(
    client: EdgeClient,
    requests: list[workers_pb2.DeployRequest],
    timeout_s: float,
    wait: bool = True,
) -> list[Deployed]:
    """Deploy each request, then poll the PoPs healthy at deploy time until all serve them.

    Each result is (response, rollout or None without `wait`, seconds to roll out).
    """
    pops = deploys.healthy_pops(client)
    responses = [client.deploy(request) for request in requests]
    if not wait:
        return [(response, None, 0.0) for response in responses]
    wanted = [(response.name, response.version) for response in responses]
    if len(wanted) == 1:
        description = f"{wanted[0][0]} {deploys.short(wanted[0][1])}"
    else:
        description = f"{len(wanted)} workers"
    with views.rollout_progress() as progress:
        task = progress.add_task(description, total=len(pops) * len(wanted))

        def advance(current: list[deploys.Rollout]) -> None:
            progress.update(
                task,
                completed=sum(len(seen.ready) for seen in current),
                total=sum(seen.total for seen in current),
            )

        rollouts = deploys.wait_rollouts(client, wanted, pops, timeout_s, advance)
    return [
        (response, seen, elapsed)
        for response, (seen, elapsed) in zip(responses, rollouts, strict=True)
    ]


def _rollout_summary(seen: deploys.Rollout, elapsed_s: float) -> str:
    if not seen.total:
        return "no healthy PoP to serve it"
    text = f"{seen.coverage} after {elapsed_s:.2f} s"
    stats = deploys.cold_start_json(seen.cold_start_ms)
    if stats is not None:
        text += f" · cold start max {stats['max']:.1f} ms (median {stats['median']:.1f} ms)"
    if not seen.done:
        text += f" · lagging: {seen.lag_text()}"
    return text


def _fail_if_lagging(
    response: workers_pb2.DeployResponse, seen: deploys.Rollout, timeout_s: float
) -> None:
    if not seen.done:
        raise CliError(
            "DEADLINE_EXCEEDED",
            f"{response.name} {deploys.short(response.version)}: {seen.coverage} serve it "
            f"after {timeout_s:g} s; lagging: {seen.lag_text()}",
        )


def cmd_deploy(args: argparse.Namespace) -> int:
    if (args.folder is None) == (args.rollback is None):
        raise CliError("INVALID_ARGUMENT", "give a bundle folder DIR or --rollback NAME")
    if args.wait_timeout <= 0:
        raise CliError("INVALID_ARGUMENT", "--wait-timeout must be positive")
    if args.rollback is not None:
        request = workers_pb2.DeployRequest(rollback=True, name=args.rollback)
    else:
        request = workers_pb2.DeployRequest(bundle=deploys.read(args.folder))
    with _client(args) as client:
        [(response, seen, elapsed)] = _deploy_and_wait(
            client, [request], args.wait_timeout, wait=not args.no_wait
        )
    short = deploys.short(response.version)
    if args.json:
        data: dict[str, Any] = {
            "name": response.name,
            "version": response.version,
            "changed": response.changed,
            "rollback": request.rollback,
        }
        if seen is not None:
            data.update(seen.to_json(), rollout_s=round(elapsed, 3))
        views.print_json(data)
    else:
        if request.rollback:
            done = f"rolled {response.name} back to {short}"
        elif response.changed:
            done = f"deployed {response.name} {short}"
        else:
            done = f"{response.name} {short} unchanged (already the active version)"
        views.stdout.print(done, markup=False, highlight=False)
        if seen is not None:
            views.stdout.print(_rollout_summary(seen, elapsed), markup=False, highlight=False)
    if seen is not None:
        _fail_if_lagging(response, seen, args.wait_timeout)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    if args.action == "trigger":
        return cmd_workers_trigger(args)
    if args.name is not None:
        raise CliError("INVALID_ARGUMENT", f"unexpected argument {args.name!r}")
    with _client(args) as client:
        versions = client.list_workers()
        pops = deploys.poll_pops(client, deploys.healthy_pops(client))
    summaries = deploys.summarize(versions, pops)
    if args.json:
        views.print_json([summary.to_json() for summary in summaries])
        return 0
    if not summaries:
        views.stderr.print("no workers deployed (edgectl deploy DIR)", markup=False)
        return 0
    views.stdout.print(views.workers_table(summaries))
    return 0


def cmd_workers_trigger(args: argparse.Namespace) -> int:
    """Run NAME's `scheduled` handler now at one PoP, as a cron trigger would."""
    if not args.name:
        raise CliError("INVALID_ARGUMENT", "workers trigger needs the worker's NAME")
    if len(args.cron.split()) != 5:
        raise CliError("INVALID_ARGUMENT", f"--cron {args.cron!r}: a 5-field cron expression")
    with _client(args) as client:
        if args.from_region is not None:
            route = client.route(args.from_region)
            node, address = route.name, route.http_address
        else:
            pops = deploys.healthy_pops(client)
            if not pops:
                raise CliError("UNAVAILABLE", "no healthy PoP to run it")
            node, address = pops[0].name, pops[0].http_address
        answer = client.trigger_scheduled(address, args.name, args.cron, int(time.time() * 1000))
    if args.json:
        views.print_json({"worker": args.name, "cron": args.cron, "node": node, "answer": answer})
    else:
        views.stdout.print(answer, markup=False, highlight=False)
    return 0


def cmd_token_issue(args: argparse.Namespace) -> int:
    if args.ttl < 1:
        raise CliError("INVALID_ARGUMENT", "--ttl must be at least 1 second")
    if not args.sub:
        raise CliError("INVALID_ARGUMENT", "--sub must not be empty")
    with _client(args) as client:
        token = client.issue_token(args.sub, args.alg, args.ttl)
    claims = deploys.token_claims(token)
    if args.json:
        views.print_json(
            {
                "token": token,
                "sub": claims.get("sub"),
                "alg": args.alg,
                "expires_at": claims.get("exp"),
            }
        )
        return 0
    sys.stdout.write(token + "\n")
    sys.stdout.flush()
    if views.stdout.is_terminal:
        # Only for a person reading the token; `$(edgectl token issue …)` stays quiet.
        expires = claims.get("exp")
        views.stderr.print(
            f"{claims.get('sub')} · {args.alg} · expires "
            f"{views.fmt_unix(expires) if isinstance(expires, int | float) else '?'}",
            style="dim",
            markup=False,
        )
    return 0


def cmd_http_address(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.from_region is None):
        raise CliError("INVALID_ARGUMENT", "give a NODE or --from REGION")
    with _client(args) as client:
        if args.name is not None:
            info = client.node_info(args.name)
            name, region, address = info.name, info.region, info.http_address
        else:
            route = client.route(args.from_region)
            name, region, address = route.name, route.region, route.http_address
    if not address:
        raise CliError("NOT_FOUND", f"{name} has no HTTP address")
    if args.json:
        views.print_json({"name": name, "region": region, "http_address": address})
    else:
        views.stdout.print(address, markup=False, highlight=False)
    return 0


# -- certs -----------------------------------------------------------------------------


def cmd_certs(args: argparse.Namespace) -> int:
    if args.topology is None and (args.data_dir / STATE_FILE_NAME).exists():
        cluster = Cluster.open(args.data_dir)
    else:
        cluster = Cluster(args.data_dir, topology_file=args.topology)
    issued = cluster.ensure_certs(extra_sans=args.sans, renew=args.renew)
    if args.json:
        views.print_json(
            [
                {
                    "name": item.name,
                    "cert_file": str(item.cert_file),
                    "key_file": str(item.key_file),
                    "sans": list(item.sans),
                    "not_after": item.not_after.isoformat(),
                    "made": item.made,
                }
                for item in issued
            ]
        )
        return 0
    table = Table(title=f"certificates in {cluster.tls_dir}", title_justify="left")
    for column in ("name", "SANs", "valid until", ""):
        table.add_column(column)
    for item in issued:
        table.add_row(
            item.name,
            ", ".join(item.sans) or "(client only)",
            f"{item.not_after:%Y-%m-%d}",
            "made" if item.made else "kept",
        )
    views.stdout.print(table)
    return 0


# -- entry point -----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CliError as error:
        views.error(f"{error.code}: {error.details}")
    except grpc.RpcError as error:
        failure = CliError.from_rpc(error)
        views.error(f"{failure.code}: {failure.details}")
    except (ClusterError, TopologyError, TlsError) as error:
        views.error(str(error))
    except OSError as error:
        if isinstance(error, BrokenPipeError):
            # The reader (`| head`) left: stop quietly, as other Unix tools do.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 1
        views.error(f"{error.strerror or error}: {error.filename or ''}".rstrip(": "))
    except KeyboardInterrupt:
        return 130
    return 1
