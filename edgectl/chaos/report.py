"""What a reader sees of fault runs: one line per seed, each violation's window with the
faults around it, and a Markdown report with a timeline plot per seed.

Renderers return strings or rich tables (the runner prints them with rich); nothing here
runs a cluster. matplotlib (a dev dependency) is imported only when a plot is drawn, with
the Agg backend: no display needed.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from edgectl.chaos.checks import CheckResult, FinalState, Violation
from edgectl.chaos.history import FaultEvent, History, Op

REPORT_NAME = "REPORT.md"
# Faults this long before a window (or after it) are shown with it: a kill a few
# seconds before the first wrong answer is usually its cause.
FAULT_MARGIN_S = 10.0
# Indeterminate ops invoked before a window are listed up to this many, then counted.
EARLIER_PENDING_SHOWN_MAX = 8
# Cells longer than this are cut (request ids, long values).
CELL_CHARS_MAX = 28
RENDER_WIDTH = 140

STATUS_COLORS = {"ok": "#1f77b4", "fail": "#d62728", "info": "#ff7f0e"}
FAULT_COLORS = [
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#2ca02c",
    "#ff9896",
]


@dataclass
class RunSummary:
    """One seed's run as the report needs it (the runner builds it)."""

    seed: int
    duration_s: float
    history: History
    result: CheckResult
    final: FinalState | None = None
    # Shown as given: fault list, topology, planted bug, ...
    settings: dict[str, str] = field(default_factory=dict)
    # What did not go to plan outside the history (a node that did not settle, ...).
    notes: list[str] = field(default_factory=list)


# -- one line per seed -------------------------------------------------------------------


def _counted(counts: Counter[str] | dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))


def fault_counts(faults: Iterable[FaultEvent]) -> dict[str, int]:
    return dict(Counter(fault.kind for fault in faults))


def seed_line(run: RunSummary) -> str:
    """seed, duration, ops ok/failed/indeterminate, faults and violations by kind,
    lost/duplicated, unknown checks, verdict."""
    counts = run.result.counts
    faults = fault_counts(run.history.faults)
    violations = run.result.violations_by_kind()
    verdicts = run.result.verdicts()
    checked = sum(verdicts.values())
    parts = [
        f"seed {run.seed}",
        f"{run.duration_s:.1f} s",
        f"ops {counts.get('ok', 0)} ok / {counts.get('fail', 0)} failed / "
        f"{counts.get('info', 0)} indeterminate",
        f"faults {sum(faults.values())}" + (f" ({_counted(faults)})" if faults else ""),
        f"violations {sum(violations.values())}"
        + (f" ({_counted(violations)})" if violations else ""),
        f"lost {run.result.lost}",
        f"duplicated {run.result.duplicated}",
        f"unknown {verdicts['unknown']}/{checked} ({run.result.unknown_fraction:.1%})",
    ]
    return ", ".join(parts) + (" - PASS" if run.result.ok else " - FAIL")


def seed_table(runs: Sequence[RunSummary]) -> Table:
    """The per-seed table, for rich to print."""
    table = Table(title="fault runs", box=box.SIMPLE_HEAVY)
    for name in SEED_COLUMNS:
        table.add_column(name, justify="left" if name in ("faults", "violations") else "right")
    for run in runs:
        table.add_row(*_seed_row(run))
    return table


SEED_COLUMNS = (
    "seed",
    "verdict",
    "duration",
    "ok",
    "failed",
    "indeterminate",
    "faults",
    "violations",
    "lost",
    "duplicated",
    "unknown",
)


def _seed_row(run: RunSummary) -> list[str]:
    counts = run.result.counts
    faults = fault_counts(run.history.faults)
    violations = run.result.violations_by_kind()
    verdicts = run.result.verdicts()
    return [
        str(run.seed),
        "PASS" if run.result.ok else "FAIL",
        f"{run.duration_s:.0f} s",
        str(counts.get("ok", 0)),
        str(counts.get("fail", 0)),
        str(counts.get("info", 0)),
        f"{sum(faults.values())}" + (f" ({_counted(faults)})" if faults else ""),
        f"{sum(violations.values())}" + (f" ({_counted(violations)})" if violations else ""),
        str(run.result.lost),
        str(run.result.duplicated),
        f"{verdicts['unknown']}/{sum(verdicts.values())}",
    ]


# -- a violation's window ----------------------------------------------------------------


def _cell(value: Any) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= CELL_CHARS_MAX else text[: CELL_CHARS_MAX - 1] + "~"


def _time(value: float | None) -> str:
    return "-" if value is None or math.isinf(value) else f"{value:.3f}"


def _where(op: Op) -> str:
    """Where it ran and what the reply said about it: node, epoch, seqs."""
    meta = op.meta
    parts = [str(meta["node"])] if meta.get("node") else []
    if "epoch" in meta:
        parts.append(f"epoch {meta['epoch']}")
    for name in ("seq", "min_seq", "applied_seq"):
        if name in meta:
            parts.append(f"{name} {meta[name]}")
    if meta.get("code") and op.status != "ok":
        parts.append(str(meta["code"]))
    return ", ".join(parts) or "-"


def window_table(
    ops: Sequence[Op], *, focus_ids: Iterable[int] = (), start_s: float | None = None
) -> Table:
    """A window as a table: time, process, op, input, output, status, node/epoch. Rows of
    `focus_ids` are marked ">"; indeterminate ops invoked before `start_s` (still possibly
    taking effect) are listed last, at most EARLIER_PENDING_SHOWN_MAX of them."""
    focus = set(focus_ids)
    table = Table(box=box.ASCII, show_edge=True, pad_edge=False)
    for name in ("", "invoked s", "returned s", "process", "op", "input", "output", "status"):
        table.add_column(name, justify="right" if name.endswith(" s") else "left")
    table.add_column("node / epoch / seq")
    ordered = sorted(ops, key=lambda op: (op.invoke_s, op.id))
    earlier = [
        op for op in ordered if start_s is not None and op.invoke_s < start_s and op.indeterminate
    ]
    earlier_ids = {op.id for op in earlier}
    inside = [op for op in ordered if op.id not in earlier_ids]
    for op in [*inside, *earlier[:EARLIER_PENDING_SHOWN_MAX]]:
        if earlier and op is earlier[0]:
            table.add_section()  # then: invoked before the window, still possibly landing
        table.add_row(
            ">" if op.id in focus else "",
            _time(op.invoke_s),
            _time(op.complete_s),
            _cell(op.process),
            _cell(f"#{op.id} {op.f}"),
            _cell(op.input),
            _cell(op.output) if op.status == "ok" else "?",
            op.status or "running",
            _cell(_where(op)),
        )
    hidden = len(earlier) - EARLIER_PENDING_SHOWN_MAX
    if hidden > 0:
        table.add_row("", "", "", "", f"... {hidden} more", "", "", "info", "")
    return table


def faults_around(
    faults: Iterable[FaultEvent], start_s: float, end_s: float, margin_s: float = FAULT_MARGIN_S
) -> list[FaultEvent]:
    """Faults active at some moment of [start - margin, end + margin], by start."""
    low, high = start_s - margin_s, end_s + margin_s
    return sorted(
        (
            fault
            for fault in faults
            if fault.start_s <= high
            and (fault.end_s if fault.end_s is not None else fault.start_s) >= low
        ),
        key=lambda fault: fault.start_s,
    )


def fault_table(faults: Sequence[FaultEvent], *, start_s: float | None = None) -> Table:
    """Faults with start, end and, given the window's start, how long before it."""
    table = Table(box=box.ASCII, show_edge=True, pad_edge=False)
    for name in ("kind", "targets", "start s", "end s", "detail"):
        table.add_column(name, justify="right" if name.endswith(" s") else "left")
    if start_s is not None:
        table.add_column("vs window start", justify="right")
    for fault in faults:
        row = [
            fault.kind,
            ", ".join(fault.targets),
            _time(fault.start_s),
            _time(fault.end_s) if fault.end_s is not None else "(instant)",
            fault.detail,
        ]
        if start_s is not None:
            row.append(f"{fault.start_s - start_s:+.1f} s")
        table.add_row(*row)
    return table


def render(renderable: Any, width: int = RENDER_WIDTH) -> str:
    """A rich renderable as plain text (no colour), for Markdown and logs."""
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None, force_terminal=False).print(renderable)
    return buffer.getvalue().rstrip() + "\n"


def _window_span(window: Sequence[Op]) -> tuple[float, float] | None:
    if not window:
        return None
    start = min(op.invoke_s for op in window)
    ends = [op.complete_s for op in window if op.complete_s is not None]
    return start, max([start, *ends])


def render_violation(
    violation: Violation,
    faults: Sequence[FaultEvent],
    *,
    start_s: float | None = None,
    end_s: float | None = None,
) -> str:
    """A violation as text: what, its window as a table, and the faults around it.
    `start_s`/`end_s` give the window's edges (by default, its ops' span)."""
    lines = [f"{violation.kind} on {violation.key}: {violation.message}"]
    span = _window_span(violation.window)
    if start_s is None or end_s is None:
        if span is None:
            return lines[0] + "\n(no window)\n"
        start_s, end_s = span
    if violation.window:
        lines.append(
            f"window {start_s:.3f}-{end_s:.3f} s, {len(violation.window)} ops"
            + (" (> marks the ops that show it)" if violation.focus_ids else "")
        )
        if violation.kind == "linearizability" and any(
            op.invoke_s < start_s for op in violation.window
        ):
            lines.append(
                f"ops invoked before {start_s:.3f} s were in flight then: there they may or "
                "may not have taken effect, whatever they returned"
            )
        lines.append(
            render(window_table(violation.window, focus_ids=violation.focus_ids, start_s=start_s))
        )
    around = faults_around(faults, start_s, end_s)
    if around:
        lines.append(f"faults from {FAULT_MARGIN_S:g} s before to {FAULT_MARGIN_S:g} s after:")
        lines.append(render(fault_table(around, start_s=start_s)))
    else:
        lines.append(f"no fault within {FAULT_MARGIN_S:g} s of the window\n")
    return "\n".join(lines)


def violation_span(run: RunSummary, violation: Violation) -> tuple[float, float] | None:
    """The window's edges: as the linearizability checker chose them (its window also
    lists indeterminate ops invoked long before), else the span of the window's ops."""
    found = run.result.linearizability.get(violation.key)
    if (
        violation.kind == "linearizability"
        and found is not None
        and found.window_start_s is not None
        and found.window_end_s is not None
    ):
        start_s = found.window_start_s
        if found.window_from_start and violation.window:
            start_s = min(op.invoke_s for op in violation.window)
        return start_s, found.window_end_s
    return _window_span(violation.window)


def violation_text(run: RunSummary, violation: Violation) -> str:
    """`render_violation` with the window's edges from `violation_span`."""
    span = violation_span(run, violation)
    if span is None:
        return render_violation(violation, run.history.faults)
    return render_violation(violation, run.history.faults, start_s=span[0], end_s=span[1])


# -- the timeline plot -------------------------------------------------------------------


# A history key's prefix -> what the timeline calls its ops.
KEY_KINDS = {"do": "object call", "kv": "KV", "sql": "SQL"}


def plot_timeline(run: RunSummary, path: Path) -> Path:
    """Latency of every op over time (ok by key kind; failed and indeterminate marked),
    faults shaded as labelled spans, violation windows as a red strip at the bottom."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: no display
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(12, 5))
    try:
        series: dict[str, tuple[list[float], list[float]]] = {}
        for op in run.history.ops:
            end = op.complete_s if op.complete_s is not None else run.duration_s
            latency_ms = max(end - op.invoke_s, 1e-4) * 1000
            if op.ok:
                label = "ok " + KEY_KINDS.get(op.key.split(":", 1)[0], "KV")
            else:
                label = "failed" if op.status == "fail" else "indeterminate"
            xs, ys = series.setdefault(label, ([], []))
            xs.append(op.invoke_s)
            ys.append(latency_ms)
        # label: (colour, marker, size, alpha)
        styles = {
            "ok object call": (STATUS_COLORS["ok"], ".", 10.0, 0.5),
            "ok KV": ("#2ca02c", ".", 10.0, 0.5),
            "ok SQL": ("#9467bd", ".", 10.0, 0.5),
            "failed": (STATUS_COLORS["fail"], "x", 24.0, 1.0),
            "indeterminate": (STATUS_COLORS["info"], "^", 24.0, 1.0),
        }
        for label, (color, marker, size, alpha) in styles.items():
            if label in series:
                xs, ys = series[label]
                axes.scatter(
                    xs,
                    ys,
                    color=color,
                    marker=marker,
                    s=size,
                    alpha=alpha,
                    label=f"{label} ({len(xs)})",
                )
        axes.set_yscale("log")
        kinds = sorted({fault.kind for fault in run.history.faults})
        colors = {kind: FAULT_COLORS[index % len(FAULT_COLORS)] for index, kind in enumerate(kinds)}
        top = axes.get_ylim()[1]
        for index, fault in enumerate(sorted(run.history.faults, key=lambda fault: fault.start_s)):
            color = colors[fault.kind]
            if fault.end_s is not None and fault.end_s > fault.start_s:
                axes.axvspan(fault.start_s, fault.end_s, color=color, alpha=0.15, linewidth=0)
            else:
                axes.axvline(fault.start_s, color=color, linestyle="--", linewidth=1)
            # Labels step down the top of the plot so that neighbours do not overlap.
            axes.text(
                fault.start_s,
                top / (1.6 ** (index % 4)),
                f"{fault.kind} {','.join(fault.targets)}",
                fontsize=7,
                color=color,
                rotation=0,
                va="top",
            )
        # Violation windows: a red strip along the bottom (several may overlap).
        marked = False
        for violation in run.result.violations:
            span = violation_span(run, violation)
            if span is not None:
                axes.axvspan(
                    span[0],
                    max(span[1], span[0] + run.duration_s / 400),
                    ymin=0.0,
                    ymax=0.03,
                    color=STATUS_COLORS["fail"],
                    label=None if marked else "violation window",
                )
                marked = True
        axes.set_xlim(0, max(run.duration_s, 1.0))
        axes.set_xlabel("seconds since the run started")
        axes.set_ylabel("latency (ms, log)")
        axes.set_title(f"seed {run.seed}: " + ("PASS" if run.result.ok else "FAIL"))
        axes.legend(loc="lower right", fontsize=8)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


# -- the Markdown report -----------------------------------------------------------------


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _seed_section(run: RunSummary, plot: Path | None) -> str:
    parts = [f"## Seed {run.seed} - {'PASS' if run.result.ok else 'FAIL'}\n", seed_line(run) + "\n"]
    if run.settings:
        parts.append(", ".join(f"{name}: {value}" for name, value in run.settings.items()) + "\n")
    if plot is not None:
        parts.append(f"![seed {run.seed} timeline]({plot.name})\n")
    for note in run.notes:
        parts.append(f"- note: {note}")
    if run.notes:
        parts.append("")
    if run.history.faults:
        parts.append("### Faults\n")
        parts.append(
            _markdown_table(
                ("kind", "targets", "start s", "end s", "detail"),
                (
                    (
                        fault.kind,
                        ", ".join(fault.targets),
                        _time(fault.start_s),
                        _time(fault.end_s),
                        fault.detail,
                    )
                    for fault in sorted(run.history.faults, key=lambda fault: fault.start_s)
                ),
            )
        )
    if run.result.linearizability:
        parts.append("### Linearizability\n")
        parts.append(
            _markdown_table(
                ("key", "model", "ops", "verdict", "check s", "detail"),
                (
                    (
                        key,
                        found.model,
                        str(found.ops_checked),
                        found.verdict,
                        f"{found.elapsed_s:.3f}",
                        found.detail,
                    )
                    for key, found in sorted(run.result.linearizability.items())
                ),
            )
        )
    if run.final is not None and (run.final.counters or run.final.placements):
        parts.append("### Final state\n")
        keys = sorted(set(run.final.counters) | set(run.final.placements))
        parts.append(
            _markdown_table(
                ("object", "value", "owner", "epoch"),
                (
                    (
                        key,
                        str(run.final.counters.get(key, "-")),
                        run.final.placements.get(key, ("-", 0))[0],
                        str(run.final.placements[key][1]) if key in run.final.placements else "-",
                    )
                    for key in keys
                ),
            )
        )
    if run.final is not None and run.final.sql_rows is not None:
        rows = len(run.final.sql_rows)
        digests = set(run.final.sql_dumps.values())
        agreement = "are identical" if len(digests) == 1 else f"give {len(digests)} digests"
        parts.append(
            f"SQL table: {rows} row{'' if rows == 1 else 's'} at the primary; the dumps of "
            f"{len(run.final.sql_dumps)} nodes {agreement}.\n"
        )
    if run.result.violations:
        parts.append("### Violations\n")
        for violation in run.result.violations:
            parts.append(f"#### {violation.kind} - {violation.key}\n")
            parts.append("```text\n" + violation_text(run, violation).rstrip() + "\n```\n")
    return "\n".join(parts) + "\n"


def write_report(directory: Path, runs: Sequence[RunSummary], *, plots: bool = True) -> Path:
    """REPORT.md in `directory`: the per-seed table, then per seed its line, timeline
    plot (seed-N-timeline.png), faults, linearizability verdicts and each violation's
    window with the faults around it. Returns the Markdown file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    passed = sum(run.result.ok for run in runs)
    parts = [
        "# Fault runs\n",
        f"{len(runs)} seeds, {passed} passed, {len(runs) - passed} failed.\n",
        _markdown_table(SEED_COLUMNS, (_seed_row(run) for run in runs)),
    ]
    for run in runs:
        plot = plot_timeline(run, directory / f"seed-{run.seed}-timeline.png") if plots else None
        parts.append(_seed_section(run, plot))
    path = directory / REPORT_NAME
    path.write_text("\n".join(parts))
    return path
