"""Output of a run: the rich table on the terminal, REPORT.md and results.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from bench.machine import BENCHMARK as MACHINE_BENCHMARK
from bench.runner import Benchmark, BenchResult, Settings
from bench.stats import Row, format_value, json_safe, markdown_table
from edgepop.lifecycle import EVENT_LOOP_ENV

STATUS_STYLE = {"pass": "bold green", "fail": "bold red", "error": "bold red",
                "skipped": "yellow", "info": "dim"}  # fmt: skip


def source_revision() -> str:
    """The checkout's commit, `-dirty` when the tree has changes ("" outside git)."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
            timeout=5, check=False,
        ).stdout.strip()  # fmt: skip
    except OSError:
        return ""


def machine(revision_at_start: str) -> dict[str, Any]:
    """What the numbers were measured on (they mean little without it): the code is the
    checkout's when the run started; if the tree changed under the run, nodes started
    after that ran other code, so its revision at the end is named too (`git_at_end`)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    revision_at_end = source_revision()
    try:
        load = os.getloadavg()
    except OSError:
        load = (0.0, 0.0, 0.0)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": revision_at_start,
        "git_at_end": revision_at_end if revision_at_end != revision_at_start else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "loadavg_at_end": [round(value, 2) for value in load],
        # The nodes' event loop (edgepop.lifecycle); baselines and clients run asyncio's.
        "node_event_loop": os.environ.get(EVENT_LOOP_ENV, "uvloop"),
    }


def rich_table(rows: Sequence[Row], title: str) -> Table:
    table = Table(title=title, title_justify="left", show_lines=False)
    for name, justify in (("benchmark", "left"), ("metric", "left"), ("edgepop", "right"),
                          ("baseline", "right"), ("ratio", "right"), ("goal", "left"),
                          ("result", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        baseline = format_value(row.baseline, row.unit)
        if row.baseline_name:
            baseline = f"{baseline} ({row.baseline_name})" if row.baseline is not None else "-"
        status = row.status.upper() if row.status in ("pass", "fail") else row.status
        result = f"[{STATUS_STYLE.get(row.status, '')}]{status}[/]"
        if row.note:
            result += f" [dim]{row.note}[/]"
        table.add_row(
            row.benchmark, row.metric, format_value(row.value, row.unit), baseline,
            format_value(row.ratio, "x"), row.goal_text, result,
        )  # fmt: skip
    return table


def load_line(results: Sequence[tuple[Benchmark, BenchResult]]) -> str:
    """How busy the shared machine was with other work while each benchmark ran."""
    parts = [f"{benchmark.name} {result.cores_others:.2f}" for benchmark, result in results]
    return (
        f"Cores used by other processes (not this bench) during each benchmark, of "
        f"{os.cpu_count()}: " + ", ".join(parts) + "."
    )


def write_outputs(
    results: Sequence[tuple[Benchmark, BenchResult]],
    settings: Settings,
    elapsed_s: float,
    revision_at_start: str,
) -> tuple[Path, Path]:
    """REPORT.md and results.json in the output dir; returns their paths."""
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        **machine(revision_at_start),
        "mode": "quick" if settings.quick else "full",
        "elapsed_s": elapsed_s,
    }
    rows = [row for _, result in results for row in result.rows]

    data = {
        "meta": meta,
        "rows": [row.to_json() for row in rows],
        "benchmarks": {
            benchmark.name: {
                "title": benchmark.title,
                "elapsed_s": result.elapsed_s,
                "cores_ours": result.cores_ours,
                "cores_others": result.cores_others,
                "plots": [plot.name for plot in result.plots if plot is not None],
                "details": result.details,
            }
            for benchmark, result in results
        },
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(json_safe(data), indent=2, default=str) + "\n")

    failed = [row for row in rows if row.status in ("fail", "error")]
    changed = f" (`{meta['git_at_end']}` by the end)" if meta["git_at_end"] else ""
    lines = [
        "# edgepop benchmarks",
        "",
        f"{meta['date']} · `{meta['git']}`{changed} · {meta['mode']} run in {elapsed_s:.0f} s · "
        f"{meta['cpus']} CPUs ({meta['cpu']}) · Python {meta['python']} · nodes on "
        f"{meta['node_event_loop']} · load average at the end {meta['loadavg_at_end'][0]}",
        "",
        "Every comparison was measured side by side in this one run, on a shared machine "
        "with 2 cores: read the ratios first, the absolute numbers second."
        + (
            " Goals in absolute units (ms, entries/s, % of a core) move with the machine: "
            "the `machine` rows measure the costs they are made of, to compare reports "
            "from different machines."
            if any(row.benchmark == MACHINE_BENCHMARK for row in rows)
            else ""
        ),
        "",
        markdown_table(rows),
        "",
        load_line(results),
        "",
        f"**{sum(row.status == 'pass' for row in rows)} goals met, {len(failed)} missed or "
        "failed.**"
        if rows
        else "",
        "",
    ]
    for benchmark, result in results:
        lines += [f"## {benchmark.title}", "", result.method, ""]
        for plot in result.plots:
            if plot is not None:
                lines += [f"![{plot.stem}]({plot.name})", ""]
        if result.notes:
            lines += [*result.notes, ""]
        if "error" in result.details:
            lines += ["```", str(result.details["error"]).strip(), "```", ""]
        lines += [
            f"_{result.elapsed_s:.0f} s; CPU busy on average: {result.cores_ours:.2f} cores by "
            f"the bench's processes, {result.cores_others:.2f} by other processes "
            f"(of {meta['cpus']})._",
            "",
        ]
    report_path = out / "REPORT.md"
    report_path.write_text("\n".join(lines))
    return report_path, json_path
