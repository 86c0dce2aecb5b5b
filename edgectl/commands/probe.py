"""`edgectl probe`: measure the seed's latency table (the timing is `edgectl.probe`)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from edgectl import probe, views
from edgectl.client import CliError, EdgeClient

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


def register_probe(commands: CommandSet) -> None:
    parser = commands.add(
        "probe",
        cmd_probe,
        "measure the seed's latency table: per region, median RTT to the nearest PoP and "
        "to the origin against the topology's targets",
        json_output=True,
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=probe.CALLS_DEFAULT,
        metavar="N",
        help=f"timed calls per target (default: {probe.CALLS_DEFAULT})",
    )
    parser.add_argument(
        "--region",
        dest="regions",
        action="extend",
        nargs="+",
        metavar="R",
        help="only these regions (default: every PoP region)",
    )
    parser.add_argument(
        "--parallel",
        type=int,
        default=probe.PARALLEL_DEFAULT,
        metavar="N",
        help="regions whose origin round trips are timed at once (edge round trips are "
        f"timed one at a time) (default: {probe.PARALLEL_DEFAULT})",
    )


def cmd_probe(args: argparse.Namespace) -> int:
    if args.calls < 1:
        raise CliError("INVALID_ARGUMENT", "--calls must be at least 1")
    if args.parallel < 1:
        raise CliError("INVALID_ARGUMENT", "--parallel must be at least 1")
    started = time.monotonic()
    with EdgeClient.for_args(args) as client:
        topology = client.topology()
        plans = probe.plan(client, topology, args.regions)
        per_region = 2 * (args.calls + 1)  # edge and origin, each with its warm-up
        with views.probe_progress() as progress:
            tasks = {
                p.region: progress.add_task(f"{p.region} via {p.pop.name}", total=per_region)
                for p in plans
            }

            def advance(region: str) -> None:
                progress.advance(tasks[region])

            results = probe.run_probe(
                client, topology, plans, args.calls, advance, parallel=args.parallel
            )
    if args.json:
        views.print_json([result.to_json() for result in results])
        return 0
    views.stdout.print(views.probe_table(results))
    views.stdout.print(probe.headline(results), markup=False)
    if not views.stderr.is_terminal:
        views.stderr.print(
            f"probed {len(results)} regions x 2 targets x {args.calls} calls "
            f"in {time.monotonic() - started:.1f} s",
            markup=False,
        )
    return 0
