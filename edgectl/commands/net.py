"""`edgectl net delay|jitter|loss|partition|heal|show`: faults on the emulated network,
per region pair, set at the control plane and pushed to every node.

What the arguments mean and how a fault is shown is `edgectl.net` (pure); this module
declares the commands and makes the calls.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.v1 import control_plane_pb2 as cp_pb2
from edgectl import net, views
from edgectl.client import CliError, EdgeClient

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


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
    with EdgeClient.for_args(args) as client:
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
    with EdgeClient.for_args(args) as client:
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
    with EdgeClient.for_args(args) as client:
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
