"""`python -m control_plane`: parse flags, build the config, run the node."""

from __future__ import annotations

import argparse

from control_plane.node import ControlPlane, ControlPlaneConfig
from control_plane.registry import NODE_LEASE_S_DEFAULT
from edgepop.config import HEARTBEAT_INTERVAL_S_DEFAULT, add_common_arguments, common_kwargs
from edgepop.lifecycle import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="control_plane", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--lease-s", type=float, default=NODE_LEASE_S_DEFAULT)
    parser.add_argument("--heartbeat-interval-s", type=float, default=HEARTBEAT_INTERVAL_S_DEFAULT)
    args = parser.parse_args()
    config = ControlPlaneConfig(
        **common_kwargs(args),  # type: ignore[arg-type]
        lease_s=args.lease_s,
        heartbeat_interval_s=args.heartbeat_interval_s,
    )
    run(ControlPlane(config))


if __name__ == "__main__":
    main()
