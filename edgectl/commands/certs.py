"""`edgectl certs`: the cluster CA and every node's and client's certificate in DIR/tls/
(made by `Cluster.ensure_certs`, over `edgectl.certs`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from edgectl import views
from edgectl.launcher import STATE_FILE_NAME, Cluster

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


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
