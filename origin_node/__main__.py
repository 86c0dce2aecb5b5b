"""`python -m origin_node`: parse flags, build the config, run the node."""

from __future__ import annotations

import argparse

from edgepop.config import add_common_arguments, common_kwargs
from edgepop.lifecycle import run
from origin_node.node import (
    SWEEP_INTERVAL_S_DEFAULT,
    OriginConfig,
    OriginNode,
)
from origin_node.stream import STREAM_HEARTBEAT_INTERVAL_S_DEFAULT
from origin_node.writelog import LOG_RETAIN_ENTRIES_DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(prog="origin_node", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--log-retain-entries", type=int, default=LOG_RETAIN_ENTRIES_DEFAULT)
    parser.add_argument(
        "--stream-heartbeat-interval-s", type=float, default=STREAM_HEARTBEAT_INTERVAL_S_DEFAULT
    )
    parser.add_argument("--sweep-interval-s", type=float, default=SWEEP_INTERVAL_S_DEFAULT)
    args = parser.parse_args()
    config = OriginConfig(
        **common_kwargs(args),  # type: ignore[arg-type]
        log_retain_entries=args.log_retain_entries,
        stream_heartbeat_interval_s=args.stream_heartbeat_interval_s,
        sweep_interval_s=args.sweep_interval_s,
    )
    run(OriginNode(config))


if __name__ == "__main__":
    main()
