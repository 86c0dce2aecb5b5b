"""`edgectl do call|id|placements|connect`: Durable Objects from the command line.

Parsing a call's words, object references and sessions is `edgectl.objects`; this module
declares the commands and prints what they return.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from edge.v1 import objects_pb2
from edgectl import objects as do
from edgectl import views
from edgectl.client import CliError, EdgeClient, Target

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


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
    with EdgeClient.for_args(args) as client:
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
    with EdgeClient.for_args(args) as client:
        timed = client.object_id(_object_target(client, args), request)
    kind = "name" if args.name is not None else "string" if args.string is not None else "unique"
    if args.json:
        views.print_json({"namespace": args.namespace, "id": timed.response.id, "from": kind})
    else:
        views.stdout.print(timed.response.id, markup=False)
    return 0


def cmd_do_placements(args: argparse.Namespace) -> int:
    with EdgeClient.for_args(args) as client:
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

    with EdgeClient.for_args(args) as client:
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
