"""Process configuration shared by every role, and the command-line flags that build it.

Each role's `__main__` only parses flags into a config and runs the node. Role-specific
settings live in subclasses beside the role (e.g. `pop_node.config.PopConfig`).

TLS is a process-wide setting as well as a config field: a node has one identity, and
the channels it opens deep inside its roles (`edgepop.rpc.channel`) take it from
`edgepop.tls.process_tls()`, which `common_kwargs` sets once the files check out.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from edgepop.auth import TOKEN_FILE_NAME
from edgepop.storage import MAP_SIZE_BYTES_DEFAULT
from edgepop.tls import HTTP_CLIENT_CERT_CHOICES, TlsConfig, TlsError, use_process_tls
from edgepop.topology import Topology, default_topology, load_topology

# A lease (control_plane.registry) spans 2.5 heartbeats: a heartbeat may take up to a
# lease less an interval (1.5 s) to come back before the lease lapses. Each heartbeat is
# a wake-up of the node and of the control plane: at 0.5 s they were half of an idle
# 32-PoP cluster's control-plane CPU.
HEARTBEAT_INTERVAL_S_DEFAULT = 1.0
DRAIN_S_DEFAULT = 2.0


@dataclass
class NodeConfig:
    name: str
    region: str
    # Holds the node's LMDB environment and ready file; survives restarts.
    data_dir: Path
    # Where the cluster token lives (shared by every node of a cluster).
    token_file: Path
    # The address to bind, and the one to tell others (a DNS name in Kubernetes, where a
    # pod binds 0.0.0.0 and is reached as pod.service). Empty advertise_host = host.
    host: str = "127.0.0.1"
    advertise_host: str = ""
    # 0 = any free port; the bound ports are written to the ready file.
    grpc_port: int = 0
    metrics_port: int = 0
    http_port: int = 0
    control_plane_address: str = ""
    topology_file: Path | None = None
    topology: Topology = field(default_factory=default_topology)
    map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT
    drain_s: float = DRAIN_S_DEFAULT
    log_level: str = "INFO"
    # Mutual TLS for gRPC and HTTPS (None = plaintext); also the process-wide setting.
    tls: TlsConfig | None = None


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="node name, unique in the cluster")
    parser.add_argument("--region", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument(
        "--token-file", type=Path, help=f"cluster token (default: DATA_DIR/../{TOKEN_FILE_NAME})"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind")
    parser.add_argument(
        "--advertise-host", default="", help="address others reach this node at (default: --host)"
    )
    parser.add_argument("--grpc-port", type=int, default=0)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--control-plane", default="", help="host:port of the control plane")
    parser.add_argument("--topology", type=Path, help="topology YAML (default: built in)")
    parser.add_argument(
        "--map-size-mb", type=int, default=MAP_SIZE_BYTES_DEFAULT // 2**20, help="LMDB map size"
    )
    parser.add_argument("--drain-s", type=float, default=DRAIN_S_DEFAULT)
    parser.add_argument("--log-level", default="INFO")
    tls = parser.add_argument_group("mutual TLS (off unless --tls-dir or all of --tls-ca/cert/key)")
    tls.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="DIR/ca.crt and DIR/NAME.crt, DIR/NAME.key (as `edgectl certs` writes them)",
    )
    tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="the cluster CA certificate")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="this node's certificate")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="this node's private key")
    tls.add_argument(
        "--tls-http-client-cert",
        choices=HTTP_CLIENT_CERT_CHOICES,
        default="required",
        help="whether the HTTP server demands a client certificate (a PoP's public "
        "ingress: optional; one presented is verified either way)",
    )


def common_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """NodeConfig fields from parsed common flags."""
    data_dir: Path = args.data_dir.resolve()
    token_file: Path = args.token_file or data_dir.parent / TOKEN_FILE_NAME
    topology = load_topology(args.topology)
    # A topology that lists node addresses (a deployment) fills what flags leave out.
    control_plane = args.control_plane
    if not control_plane and (listed := topology.node_address("control_plane")):
        control_plane = listed.grpc_address
    advertise_host = args.advertise_host
    if not advertise_host and (own := topology.node_address("", args.name)):
        advertise_host = own.grpc_address.rsplit(":", 1)[0]
    return {
        "name": args.name,
        "region": args.region,
        "data_dir": data_dir,
        "token_file": token_file.resolve(),
        "host": args.host,
        "advertise_host": advertise_host,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "http_port": args.http_port,
        "control_plane_address": control_plane,
        "topology_file": args.topology,
        "topology": topology,
        "map_size_bytes": args.map_size_mb * 2**20,
        "drain_s": args.drain_s,
        "log_level": args.log_level,
        "tls": tls_from_args(args),
    }


def tls_from_args(args: argparse.Namespace) -> TlsConfig | None:
    """The TLS flags as a checked config, installed for the process (None: plaintext).

    Explicit files override the directory's, so a Kubernetes Secret can be mounted
    under any names. Raises TlsError naming the file when the material is unusable.
    """
    files = (args.tls_ca, args.tls_cert, args.tls_key)
    if args.tls_dir is None and not any(files):
        use_process_tls(None)
        return None
    if args.tls_dir is None and not all(files):
        raise TlsError("mutual TLS needs --tls-dir or all of --tls-ca, --tls-cert, --tls-key")
    in_dir = TlsConfig.from_dir(args.tls_dir or Path(), args.name)
    tls = TlsConfig(
        ca_file=(args.tls_ca or in_dir.ca_file).resolve(),
        cert_file=(args.tls_cert or in_dir.cert_file).resolve(),
        key_file=(args.tls_key or in_dir.key_file).resolve(),
        http_client_cert=args.tls_http_client_cert,
    )
    tls.check()
    use_process_tls(tls)
    return tls
