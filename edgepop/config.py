"""Process configuration shared by every role, and the command-line flags that build it.

Each role's `__main__` only parses flags into a config and runs the node. Role-specific
settings live in subclasses beside the role (e.g. `pop_node.config.PopConfig`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from edgepop.auth import TOKEN_FILE_NAME
from edgepop.storage import MAP_SIZE_BYTES_DEFAULT
from edgepop.topology import Topology, default_topology, load_topology

HEARTBEAT_INTERVAL_S_DEFAULT = 0.5
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


def common_kwargs(args: argparse.Namespace) -> dict[str, object]:
    """NodeConfig fields from parsed common flags."""
    data_dir: Path = args.data_dir.resolve()
    token_file: Path = args.token_file or data_dir.parent / TOKEN_FILE_NAME
    return {
        "name": args.name,
        "region": args.region,
        "data_dir": data_dir,
        "token_file": token_file.resolve(),
        "host": args.host,
        "advertise_host": args.advertise_host,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "http_port": args.http_port,
        "control_plane_address": args.control_plane,
        "topology_file": args.topology,
        "topology": load_topology(args.topology),
        "map_size_bytes": args.map_size_mb * 2**20,
        "drain_s": args.drain_s,
        "log_level": args.log_level,
    }
