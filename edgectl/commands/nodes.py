"""`edgectl nodes` and `edgectl http-address`: the nodes as the control plane's registry
knows them (health, addresses), read over gRPC.

The local processes behind them (`cluster`, `node stop|kill|start`) are
`edgectl.commands.cluster`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from edgectl import views
from edgectl.client import CliError, EdgeClient

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


def register_nodes(commands: CommandSet) -> None:
    commands.add(
        "nodes", cmd_nodes, "the control plane's node registry with health", json_output=True
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


def cmd_nodes(args: argparse.Namespace) -> int:
    with EdgeClient.for_args(args) as client:
        infos = client.list_nodes()
    if args.json:
        views.print_json([views.node_info_json(info) for info in infos])
    else:
        views.stdout.print(views.nodes_table(infos))
    return 0


def cmd_http_address(args: argparse.Namespace) -> int:
    if (args.name is None) == (args.from_region is None):
        raise CliError("INVALID_ARGUMENT", "give a NODE or --from REGION")
    with EdgeClient.for_args(args) as client:
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
