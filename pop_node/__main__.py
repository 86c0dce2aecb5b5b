"""`python -m pop_node`: parse flags, build the config, run the node."""

from __future__ import annotations

import argparse

from edgepop.config import add_common_arguments, common_kwargs
from edgepop.lifecycle import run
from pop_node.node import PopConfig, PopNode
from pop_node.replication import STREAM_IDLE_TIMEOUT_S_DEFAULT


def main() -> None:
    parser = argparse.ArgumentParser(prog="pop_node", description=__doc__)
    add_common_arguments(parser)
    parser.add_argument("--origin", default="", help="host:port of the origin")
    parser.add_argument(
        "--stream-idle-timeout-s", type=float, default=STREAM_IDLE_TIMEOUT_S_DEFAULT
    )
    args = parser.parse_args()
    common = common_kwargs(args)
    origin = args.origin
    if not origin and (listed := common["topology"].node_address("origin")):  # type: ignore[attr-defined]
        origin = listed.grpc_address
    config = PopConfig(
        **common,  # type: ignore[arg-type]
        origin_address=origin,
        stream_idle_timeout_s=args.stream_idle_timeout_s,
    )
    run(PopNode(config))


if __name__ == "__main__":
    main()
