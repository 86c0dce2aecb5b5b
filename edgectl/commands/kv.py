"""`edgectl kv …`: read and write edge KV (get, put, delete, list) at a PoP or the origin."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.v1 import kv_pb2
from edgectl import views
from edgectl.client import CliError, EdgeClient, Target, value_text
from edgepop.limits import LIST_LIMIT_MAX

if TYPE_CHECKING:
    from edgectl.cli import CommandSet

CONSISTENCY: dict[str, kv_pb2.Consistency.ValueType] = {
    "eventual": kv_pb2.CONSISTENCY_EVENTUAL,
    "bookmark": kv_pb2.CONSISTENCY_BOOKMARK,
    "strong": kv_pb2.CONSISTENCY_STRONG,
}


def _kv_options() -> argparse.ArgumentParser:
    """Where a KV command goes and as whom (shared by every kv subcommand)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--namespace", "-n", default="default", help="KV namespace")
    parser.add_argument(
        "--from",
        dest="from_region",
        metavar="REGION",
        help="the caller's region: routes to its nearest healthy PoP and pays that RTT",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--pop", metavar="NODE", help="talk to this PoP")
    where.add_argument("--origin", action="store_true", help="talk to the origin directly")
    return parser


def register_kv(commands: CommandSet) -> None:
    kv = commands.group("kv", "read and write edge KV")
    common = _kv_options()

    get = kv.add(
        "get",
        cmd_kv_get,
        "print a key's value (raw) on stdout; route and latency on stderr; "
        "exit 1 when the key is missing (with --json: found=false, exit 0)",
        json_output=True,
        parents=(common,),
    )
    get.add_argument("key", metavar="KEY")
    get.add_argument(
        "--consistency",
        choices=sorted(CONSISTENCY),
        help="eventual (local replica; the default), bookmark (replica at --min-seq), "
        "strong (origin)",
    )
    get.add_argument(
        "--min-seq",
        type=int,
        default=0,
        metavar="N",
        help="bookmark: implies --consistency bookmark",
    )

    put = kv.add("put", cmd_kv_put, "write a key", json_output=True, parents=(common,))
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE", nargs="?", help="the value (or --file)")
    put.add_argument(
        "--file", type=Path, metavar="PATH", help="read the value from PATH (- = stdin)"
    )
    put.add_argument("--ttl", type=int, metavar="SECONDS", help="expire this long from now")
    put.add_argument("--expiration", type=int, metavar="UNIX", help="expire at this unix time")
    put.add_argument("--metadata", metavar="JSON", help="metadata stored with the value")
    put.add_argument(
        "--if-seq",
        type=int,
        metavar="N",
        help="compare-and-set: write only if the key is still at version N (the `seq` "
        "`kv get --json` shows; 0 = only if absent), else FAILED_PRECONDITION",
    )

    delete = kv.add("delete", cmd_kv_delete, "delete a key", json_output=True, parents=(common,))
    delete.add_argument("key", metavar="KEY")

    listing = kv.add("list", cmd_kv_list, "list keys in order", json_output=True, parents=(common,))
    listing.add_argument("--prefix", default="", help="only keys starting with this")
    listing.add_argument(
        "--limit", type=int, default=0, help=f"keys per page, 1-{LIST_LIMIT_MAX} (default: max)"
    )
    listing.add_argument("--cursor", default="", help="continue after a previous page")
    listing.add_argument("--all", action="store_true", help="follow cursors to the end")
    listing.add_argument("--consistency", choices=sorted(CONSISTENCY))
    listing.add_argument("--min-seq", type=int, default=0, metavar="N")


def _target(client: EdgeClient, args: argparse.Namespace) -> Target:
    return client.resolve(from_region=args.from_region, pop=args.pop, origin=args.origin)


def _consistency(args: argparse.Namespace) -> kv_pb2.Consistency.ValueType:
    name = args.consistency or ("bookmark" if args.min_seq else "eventual")
    return CONSISTENCY[name]


def _route_json(target: Target, latency_ms: float) -> dict[str, Any]:
    return {
        "node": target.name,
        "region": target.region,
        "from_region": target.caller_region,
        "latency_ms": round(latency_ms, 3),
    }


def cmd_kv_get(args: argparse.Namespace) -> int:
    request = kv_pb2.KvGetRequest(
        namespace=args.namespace,
        key=args.key,
        consistency=_consistency(args),
        min_seq=args.min_seq,
    )
    with EdgeClient.for_args(args) as client:
        target = _target(client, args)
        timed = client.kv_get(target, request)
    got = timed.response
    if args.json:
        text, encoding = value_text(got.value) if got.found else (None, None)
        views.print_json(
            {
                "found": got.found,
                "value": text,
                "value_encoding": encoding,
                "metadata": views.metadata_value(got.metadata_json),
                "expiration": got.expiration,
                "seq": got.seq,
                "applied_seq": got.applied_seq,
                **_route_json(target, timed.latency_ms),
            }
        )
        return 0
    via = views.via(target, timed.latency_ms)
    if not got.found:
        views.error(f"NOT_FOUND: no key {args.key!r} in namespace {args.namespace!r} ({via})")
        return 1
    sys.stdout.buffer.write(got.value)
    if sys.stdout.isatty() and not got.value.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()
    details = [via, f"seq {got.seq}", f"applied_seq {got.applied_seq}"]
    if got.metadata_json:
        details.append(f"metadata {got.metadata_json}")
    if got.expiration:
        details.append(f"expires {views.fmt_expiration(got.expiration)}")
    views.stderr.print(" · ".join(details), style="dim", markup=False)
    return 0


def _put_value(args: argparse.Namespace) -> bytes:
    if args.file is not None and args.value is not None:
        raise CliError("INVALID_ARGUMENT", "give VALUE or --file, not both")
    if args.file is not None:
        if str(args.file) == "-":
            return sys.stdin.buffer.read()
        return bytes(args.file.read_bytes())
    if args.value is None:
        raise CliError("INVALID_ARGUMENT", "give VALUE or --file PATH")
    return str(args.value).encode("utf-8")


def cmd_kv_put(args: argparse.Namespace) -> int:
    if args.metadata is not None:
        try:
            json.loads(args.metadata)
        except json.JSONDecodeError as error:
            raise CliError("INVALID_ARGUMENT", f"--metadata is not valid JSON: {error}") from None
    request = kv_pb2.KvPutRequest(
        namespace=args.namespace,
        key=args.key,
        value=_put_value(args),
        metadata_json=args.metadata or "",
        expiration=args.expiration or 0,
        expiration_ttl=args.ttl or 0,
    )
    if args.if_seq is not None:
        if args.if_seq < 0:
            raise CliError("INVALID_ARGUMENT", "--if-seq must not be negative")
        request.if_seq = args.if_seq
    with EdgeClient.for_args(args) as client:
        target = _target(client, args)
        timed = client.kv_put(target, request)
    return _print_write(args, "put", target, timed.response.seq, timed.latency_ms)


def cmd_kv_delete(args: argparse.Namespace) -> int:
    request = kv_pb2.KvDeleteRequest(namespace=args.namespace, key=args.key)
    with EdgeClient.for_args(args) as client:
        target = _target(client, args)
        timed = client.kv_delete(target, request)
    return _print_write(args, "delete", target, timed.response.seq, timed.latency_ms)


def _print_write(
    args: argparse.Namespace, verb: str, target: Target, seq: int, latency_ms: float
) -> int:
    if args.json:
        views.print_json({"seq": seq, **_route_json(target, latency_ms)})
    else:
        views.stdout.print(
            f"{verb} {args.namespace}/{args.key}: seq {seq} · {views.via(target, latency_ms)}",
            markup=False,
        )
    return 0


def cmd_kv_list(args: argparse.Namespace) -> int:
    if not 0 <= args.limit <= LIST_LIMIT_MAX:
        raise CliError("INVALID_ARGUMENT", f"--limit must be 1-{LIST_LIMIT_MAX}")
    request = kv_pb2.KvListRequest(
        namespace=args.namespace,
        prefix=args.prefix,
        limit=args.limit,
        cursor=args.cursor,
        consistency=_consistency(args),
        min_seq=args.min_seq,
    )
    with EdgeClient.for_args(args) as client:
        target = _target(client, args)
        if args.all:
            replies = list(client.kv_list_pages(target, request))
        else:
            replies = [client.kv_list(target, request)]
    keys = [key for reply in replies for key in reply.response.keys]
    latency_ms = sum(reply.latency_ms for reply in replies)
    pages = len(replies)
    last = replies[-1].response
    if args.json:
        views.print_json(
            {
                "keys": [
                    {
                        "name": key.name,
                        "expiration": key.expiration,
                        "metadata": views.metadata_value(key.metadata_json),
                    }
                    for key in keys
                ],
                "list_complete": last.list_complete,
                "cursor": last.cursor,
                "pages": pages,
                **_route_json(target, latency_ms),
            }
        )
        return 0
    if keys:
        views.stdout.print(views.kv_list_table(keys))
    summary = [f"{len(keys)} key{'' if len(keys) == 1 else 's'}"]
    if pages > 1:
        summary[0] += f" in {pages} pages"
    summary.append("complete" if last.list_complete else f"more: --cursor {last.cursor}")
    summary.append(views.via(target, latency_ms))
    views.stderr.print(" · ".join(summary), style="dim", markup=False)
    return 0
