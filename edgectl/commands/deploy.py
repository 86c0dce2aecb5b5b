"""`edgectl deploy` and `edgectl workers` (list, `workers trigger`): workers, the
deployed edge functions, and their rollout to every PoP.

Reading bundles and following a rollout is `edgectl.deploys`; `deploy_and_wait` and the
rollout lines are shared with `cluster up --workers` (`edgectl.commands.cluster`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.v1 import workers_pb2
from edgectl import deploys, views
from edgectl.client import CliError, EdgeClient

if TYPE_CHECKING:
    from edgectl.cli import CommandSet


def register_deploy(commands: CommandSet) -> None:
    deploy = commands.add(
        "deploy",
        cmd_deploy,
        "deploy the worker bundle in DIR (a wrangler config and its main module, or worker.py "
        "+ worker.yaml) to every PoP, or roll a "
        "worker back to its previous version; waits until every healthy PoP serves it",
        json_output=True,
    )
    deploy.usage = "edgectl deploy (DIR | --rollback NAME) [options]"
    deploy.add_argument("folder", nargs="?", type=Path, metavar="DIR", help="a bundle folder")
    deploy.add_argument(
        "--rollback", metavar="NAME", help="make the version before the active one active again"
    )
    deploy.add_argument(
        "--wait-timeout",
        type=float,
        default=deploys.ROLLOUT_TIMEOUT_S_DEFAULT,
        metavar="SECONDS",
        help="fail when a PoP does not serve the version after this long "
        f"(default: {deploys.ROLLOUT_TIMEOUT_S_DEFAULT:g})",
    )
    deploy.add_argument(
        "--no-wait", action="store_true", help="return once the control plane stored it"
    )


def register_workers(commands: CommandSet) -> None:
    workers = commands.add(
        "workers",
        cmd_workers,
        "every deployed worker: its versions, the active one, and the PoPs serving each now "
        "with their cold starts; `workers trigger NAME --cron EXPR` runs a worker's "
        "scheduled handler now",
        json_output=True,
    )
    workers.usage = "edgectl workers [--json] | edgectl workers trigger NAME [--cron EXPR]"
    workers.add_argument("action", nargs="?", choices=["trigger"], help=argparse.SUPPRESS)
    workers.add_argument("name", nargs="?", metavar="NAME", help=argparse.SUPPRESS)
    workers.add_argument(
        "--cron",
        default="* * * * *",
        metavar="EXPR",
        help="trigger: the cron expression the handler is told fired (default: * * * * *)",
    )
    workers.add_argument(
        "--from",
        dest="from_region",
        metavar="REGION",
        help="trigger: run it at the PoP nearest REGION (default: any healthy PoP)",
    )


Deployed = tuple[workers_pb2.DeployResponse, deploys.Rollout | None, float]


def deploy_and_wait(
    client: EdgeClient,
    requests: list[workers_pb2.DeployRequest],
    timeout_s: float,
    wait: bool = True,
) -> list[Deployed]:
    """Deploy each request, then poll the PoPs healthy at deploy time until all serve them.

    Each result is (response, rollout or None without `wait`, seconds to roll out).
    """
    pops = deploys.healthy_pops(client)
    responses = [client.deploy(request) for request in requests]
    if not wait:
        return [(response, None, 0.0) for response in responses]
    wanted = [(response.name, response.version) for response in responses]
    if len(wanted) == 1:
        description = f"{wanted[0][0]} {deploys.short(wanted[0][1])}"
    else:
        description = f"{len(wanted)} workers"
    with views.rollout_progress() as progress:
        task = progress.add_task(description, total=len(pops) * len(wanted))

        def advance(current: list[deploys.Rollout]) -> None:
            progress.update(
                task,
                completed=sum(len(seen.ready) for seen in current),
                total=sum(seen.total for seen in current),
            )

        rollouts = deploys.wait_rollouts(client, wanted, pops, timeout_s, advance)
    return [
        (response, seen, elapsed)
        for response, (seen, elapsed) in zip(responses, rollouts, strict=True)
    ]


def rollout_summary(seen: deploys.Rollout, elapsed_s: float) -> str:
    if not seen.total:
        return "no healthy PoP to serve it"
    text = f"{seen.coverage} after {elapsed_s:.2f} s"
    stats = deploys.cold_start_json(seen.cold_start_ms)
    if stats is not None:
        text += f" · cold start max {stats['max']:.1f} ms (median {stats['median']:.1f} ms)"
    if not seen.done:
        text += f" · lagging: {seen.lag_text()}"
    return text


def fail_if_lagging(
    response: workers_pb2.DeployResponse, seen: deploys.Rollout, timeout_s: float
) -> None:
    if not seen.done:
        raise CliError(
            "DEADLINE_EXCEEDED",
            f"{response.name} {deploys.short(response.version)}: {seen.coverage} serve it "
            f"after {timeout_s:g} s; lagging: {seen.lag_text()}",
        )


def cmd_deploy(args: argparse.Namespace) -> int:
    if (args.folder is None) == (args.rollback is None):
        raise CliError("INVALID_ARGUMENT", "give a bundle folder DIR or --rollback NAME")
    if args.wait_timeout <= 0:
        raise CliError("INVALID_ARGUMENT", "--wait-timeout must be positive")
    if args.rollback is not None:
        request = workers_pb2.DeployRequest(rollback=True, name=args.rollback)
    else:
        request = workers_pb2.DeployRequest(bundle=deploys.read(args.folder))
    with EdgeClient.for_args(args) as client:
        [(response, seen, elapsed)] = deploy_and_wait(
            client, [request], args.wait_timeout, wait=not args.no_wait
        )
    short = deploys.short(response.version)
    if args.json:
        data: dict[str, Any] = {
            "name": response.name,
            "version": response.version,
            "changed": response.changed,
            "rollback": request.rollback,
        }
        if seen is not None:
            data.update(seen.to_json(), rollout_s=round(elapsed, 3))
        views.print_json(data)
    else:
        if request.rollback:
            done = f"rolled {response.name} back to {short}"
        elif response.changed:
            done = f"deployed {response.name} {short}"
        else:
            done = f"{response.name} {short} unchanged (already the active version)"
        views.stdout.print(done, markup=False, highlight=False)
        if seen is not None:
            views.stdout.print(rollout_summary(seen, elapsed), markup=False, highlight=False)
    if seen is not None:
        fail_if_lagging(response, seen, args.wait_timeout)
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    if args.action == "trigger":
        return cmd_workers_trigger(args)
    if args.name is not None:
        raise CliError("INVALID_ARGUMENT", f"unexpected argument {args.name!r}")
    with EdgeClient.for_args(args) as client:
        versions = client.list_workers()
        pops = deploys.poll_pops(client, deploys.healthy_pops(client))
    summaries = deploys.summarize(versions, pops)
    if args.json:
        views.print_json([summary.to_json() for summary in summaries])
        return 0
    if not summaries:
        views.stderr.print("no workers deployed (edgectl deploy DIR)", markup=False)
        return 0
    views.stdout.print(views.workers_table(summaries))
    return 0


def cmd_workers_trigger(args: argparse.Namespace) -> int:
    """Run NAME's `scheduled` handler now at one PoP, as a cron trigger would."""
    if not args.name:
        raise CliError("INVALID_ARGUMENT", "workers trigger needs the worker's NAME")
    if len(args.cron.split()) != 5:
        raise CliError("INVALID_ARGUMENT", f"--cron {args.cron!r}: a 5-field cron expression")
    with EdgeClient.for_args(args) as client:
        if args.from_region is not None:
            route = client.route(args.from_region)
            node, address = route.name, route.http_address
        else:
            pops = deploys.healthy_pops(client)
            if not pops:
                raise CliError("UNAVAILABLE", "no healthy PoP to run it")
            node, address = pops[0].name, pops[0].http_address
        answer = client.trigger_scheduled(address, args.name, args.cron, int(time.time() * 1000))
    if args.json:
        views.print_json({"worker": args.name, "cron": args.cron, "node": node, "answer": answer})
    else:
        views.stdout.print(answer, markup=False, highlight=False)
    return 0
