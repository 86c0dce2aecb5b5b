"""`edgectl chaos`: seeded fault runs from the command line (and `make chaos`).

`chaos run` runs one seed (`--seed N`) or many (`--seeds 20` = seeds 1..20, or a list
such as `3,7,10-12`), each on a fresh cluster (edgectl.chaos.runner), and prints one
line per seed; a seed that violates a guarantee also prints the smallest window of
history that shows it, with the faults around it. Exit status 1 when any seed found a
violation. `chaos schedule` prints a seed's fault schedule without running anything:
the schedule is a function of the seed, so this is what a run will do.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rich.progress import BarColumn, Progress, TextColumn

from edgectl import views
from edgectl.chaos import report
from edgectl.chaos.nemesis import FAULT_GROUPS, FAULT_KINDS, parse_faults
from edgectl.chaos.runner import (
    CHECK_BUDGET_S_DEFAULT,
    RunConfig,
    SeedRun,
    run_seed,
    schedule_for,
    summary,
    violations_text,
)

if TYPE_CHECKING:
    from edgectl.cli import CommandSet

T = TypeVar("T")

DURATION_S_DEFAULT = 60.0
# Seconds: shorter runs leave no room between warm-up, faults and the quiet end.
DURATION_S_MIN = 15.0
SEEDS_MAX = 10_000


def parse_seeds(text: str) -> list[int]:
    """`20` = seeds 1..20; otherwise a comma list of seeds and ranges (`3,7,10-12`)."""
    text = text.strip()
    if text.isdigit():
        count = int(text)
        if not 1 <= count <= SEEDS_MAX:
            raise ValueError(f"{text!r}: give 1..{SEEDS_MAX} seeds")
        return list(range(1, count + 1))
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{part!r} is not a seed or a range of seeds (e.g. 3 or 10-12)")
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last - first >= SEEDS_MAX:
            raise ValueError(f"{part!r}: an empty or oversized range")
        seeds.extend(seed for seed in range(first, last + 1) if seed not in seeds)
    if not seeds:
        raise ValueError("no seeds given")
    return seeds


def _arg(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type whose ValueError message becomes the usage error (argparse names
    the option)."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return convert


def _duration(text: str) -> float:
    value = float(text)
    if value < DURATION_S_MIN:
        raise ValueError(f"at least {DURATION_S_MIN:g} s")
    return value


def _options(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, metavar="N", help="one seed (default: 1)")
    which.add_argument(
        "--seeds",
        type=_arg(parse_seeds),
        metavar="SPEC",
        help="many seeds: a count (20 = seeds 1..20) or a list (3,7,10-12)",
    )
    parser.add_argument(
        "--duration",
        type=_arg(_duration),
        default=DURATION_S_DEFAULT,
        metavar="SECONDS",
        help=f"length of each run's load (default: {DURATION_S_DEFAULT:g}); every fault is "
        "healed at least 15%% before the end",
    )
    parser.add_argument(
        "--topology",
        type=Path,
        metavar="FILE",
        help="a topology YAML (default: us-east-1 + new-york, london, tokyo x 2 PoPs, delays on)",
    )
    parser.add_argument(
        "--faults",
        type=_arg(parse_faults),
        default=FAULT_KINDS,
        metavar="LIST",
        help=f"fault kinds and groups, comma-separated (default: all). Kinds: "
        f"{', '.join(FAULT_KINDS)}. Groups: {', '.join(FAULT_GROUPS)}",
    )


def register_chaos(commands: CommandSet) -> None:
    chaos = commands.group("chaos", "seeded fault runs against a cluster of their own")
    run = chaos.add(
        "run",
        cmd_chaos_run,
        "start a cluster, run clients and a seeded nemesis, heal, check the history; "
        "exit 1 on any violation",
    )
    _options(run)
    run.add_argument(
        "--buggify",
        default="",
        metavar="NAME",
        help="switch on a planted bug in every node (EDGEPOP_BUGGIFY), e.g. promote-unsynced",
    )
    run.add_argument(
        "--history",
        type=Path,
        metavar="FILE",
        help="save each run's history (JSON lines); with several seeds, '{seed}' in FILE "
        "is replaced by the seed (else .seedN is added)",
    )
    run.add_argument(
        "--report", type=Path, metavar="DIR", help="write a Markdown report with plots to DIR"
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where each run's cluster lives (default: a temp dir); removed after a run "
        "unless --keep or the run found a violation",
    )
    run.add_argument("--keep", action="store_true", help="keep every run's cluster dir")
    run.add_argument("--clients-per-region", type=int, default=4, metavar="N", help="(default: 4)")
    run.add_argument(
        "--rate",
        type=float,
        default=200.0,
        metavar="OPS",
        help="most ops per second over all clients (default: 200)",
    )
    run.add_argument(
        "--check-budget",
        type=float,
        default=CHECK_BUDGET_S_DEFAULT,
        metavar="SECONDS",
        help="time for each key's linearizability check before it is 'unknown' "
        f"(default: {CHECK_BUDGET_S_DEFAULT:g})",
    )
    schedule = chaos.add(
        "schedule", cmd_chaos_schedule, "print a seed's fault schedule (nothing is started)"
    )
    _options(schedule)


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds:
        return list(args.seeds)
    return [args.seed if args.seed is not None else 1]


def _history_file(args: argparse.Namespace, seed: int, many: bool) -> Path | None:
    path: Path | None = getattr(args, "history", None)
    if path is None:
        return None
    if "{seed}" in path.name:
        return path.with_name(path.name.replace("{seed}", str(seed)))
    return path.with_name(f"{path.stem}.seed{seed}{path.suffix}") if many else path


def _config(args: argparse.Namespace, seed: int, many: bool) -> RunConfig:
    return RunConfig(
        seed=seed,
        duration_s=args.duration,
        faults=tuple(args.faults),
        topology_file=args.topology,
        buggify=getattr(args, "buggify", ""),
        work_dir=getattr(args, "work_dir", None),
        keep=getattr(args, "keep", False),
        history_file=_history_file(args, seed, many),
        clients_per_region=getattr(args, "clients_per_region", 4),
        ops_per_s_max=getattr(args, "rate", 200.0),
        check_budget_s=getattr(args, "check_budget", CHECK_BUDGET_S_DEFAULT),
    )


def cmd_chaos_schedule(args: argparse.Namespace) -> int:
    for seed in _seeds(args):
        schedule = schedule_for(_config(args, seed, many=False))
        views.stdout.print(
            f"seed {seed}: {schedule.duration_s:g} s, healed by {schedule.heal_by_s:g} s",
            markup=False,
        )
        for line in schedule.lines():
            views.stdout.print("  " + line, markup=False)
    return 0


def _run_with_progress(config: RunConfig) -> SeedRun:
    """One seed with a live line on stderr: elapsed, ops ok/fail/info, faults in force."""
    with Progress(
        TextColumn(f"seed {config.seed}"),
        BarColumn(bar_width=24),
        TextColumn("{task.completed:>3.0f}/{task.total:.0f} s"),
        TextColumn("{task.fields[ops]}"),
        TextColumn("[yellow]{task.fields[faults]}"),
        console=views.stderr,
        transient=True,
    ) as progress:
        task = progress.add_task("run", total=config.duration_s, ops="starting", faults="")

        def show(now_s: float, counts: dict[str, int], active: list[str]) -> None:
            ops = f"ok {counts['ok']} fail {counts['fail']} info {counts['info']}"
            progress.update(
                task,
                completed=min(now_s, config.duration_s),
                ops=ops,
                faults=", ".join(active)[:80],
            )

        return run_seed(config, show)


def _timings(run: SeedRun) -> str:
    """Where a seed's wall time went (stderr: for people tuning run lengths)."""
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in run.timings.items())
    return f"  seed {run.config.seed} timings: {phases}; runner CPU {run.runner_cpu_s:.1f} s"


def cmd_chaos_run(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    runs: list[SeedRun] = []
    for seed in seeds:
        config = _config(args, seed, many=len(seeds) > 1)
        run = _run_with_progress(config)
        runs.append(run)
        views.stdout.print(report.seed_line(summary(run)), markup=False, highlight=False)
        views.stderr.print(_timings(run), markup=False, highlight=False, style="dim")
        for note in summary(run).notes:
            views.stdout.print(f"  {note}", markup=False, highlight=False)
        if run.violated:
            views.stdout.print(violations_text(run), markup=False, highlight=False)
            if run.data_dir is not None:
                views.stdout.print(f"  cluster dir kept: {run.data_dir}", markup=False)
        sys.stdout.flush()
    if len(runs) > 1:
        views.stdout.print(report.seed_table([summary(run) for run in runs]))
    if args.report is not None:
        written = report.write_report(args.report, [summary(run) for run in runs])
        views.stderr.print(f"report: {written}", markup=False, highlight=False)
    return 1 if any(run.violated for run in runs) else 0
