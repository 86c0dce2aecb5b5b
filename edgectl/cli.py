"""edgectl's command line: the framework that parses arguments and runs one handler.

Commands are registered group by group (`COMMAND_GROUPS`): each verb group is a module
of `edgectl.commands` (as kubectl's `cmd/`) with a `register_*` function that declares
its arguments and points at its handlers, which live beside it; `console`, `observe`
and `chaos` register from their own packages. A handler takes the parsed arguments and
returns the exit code. The logic the handlers call lives in the library modules of
`edgectl` (`launcher`, `client`, `net`, `probe`, `objects`, `deploys`, `certs`). Every
failure a user can cause or meet ends as `error: CODE: details` on stderr with exit
status 1, never a traceback (`main`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from edgectl import observe, views
from edgectl.chaos import cli as chaos_cli
from edgectl.client import RPC_TIMEOUT_S_DEFAULT, CliError
from edgectl.commands import certs, cluster, d1, deploy, do, kv, net, nodes, probe, token
from edgectl.console import cli as console_cli
from edgectl.launcher import ClusterError
from edgepop.tls import TlsError
from edgepop.topology import TopologyError

DATA_DIR_ENV = "EDGEPOP_DATA_DIR"
DATA_DIR_DEFAULT = ".cluster"

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


COMMAND_GROUPS: tuple[Callable[[CommandSet], None], ...] = (
    cluster.register_cluster,
    console_cli.register_console,
    cluster.register_node,
    nodes.register_nodes,
    kv.register_kv,
    net.register_net,
    probe.register_probe,
    do.register_do,
    d1.register_d1,
    deploy.register_deploy,
    deploy.register_workers,
    token.register_token,
    nodes.register_http_address,
    certs.register_certs,
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
