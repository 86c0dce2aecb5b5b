"""The fault-run report: seed lines, violation windows with faults, Markdown and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgectl.chaos.checks import FinalState, check
from edgectl.chaos.history import FaultEvent, History, Op, Status
from edgectl.chaos.report import (
    RunSummary,
    faults_around,
    render,
    render_violation,
    seed_line,
    seed_table,
    violation_text,
    write_report,
)

COUNTER = "do:Counter/counter-0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def call(
    id: int, process: str, start: float, end: float, status: Status, output: Any = None, **meta: Any
) -> Op:
    return Op(id, process, COUNTER, "increment", start, None, status, output, end, meta)


def failover_run(seed: int = 7) -> RunSummary:
    """5 increments on tokyo-1, its owner killed, the object back on london-1 at 1."""
    ops = [call(i, "tokyo-c0", i, i + 0.4, "ok", i, node="tokyo-1", epoch=2) for i in range(1, 6)]
    ops += [
        call(6, "tokyo-c1", 6.0, 12.0, "info", code="UNAVAILABLE"),
        call(7, "london-c0", 6.5, 6.6, "fail", code="INVALID_ARGUMENT"),
        call(8, "london-c0", 14.0, 14.3, "ok", 1, node="london-1", epoch=4),
    ]
    faults = [
        FaultEvent("kill-owner", ["tokyo-1"], 5.5, None, "SIGKILL"),
        FaultEvent("isolate", ["tokyo"], 8.0, 20.0, "tokyo cut off"),
        FaultEvent("delay", ["london", "us-east-1"], 60.0, 70.0, "+200 ms"),
    ]
    history = History(ops, faults)
    final = FinalState(
        counters={COUNTER: 1},
        placements={COUNTER: ("london-1", 4)},
        dumps={"origin": "9:a", "london-1": "9:a"},
    )
    result = check(history, final)
    return RunSummary(seed, 100.0, history, result, final, {"faults": "kill-owner,isolate"})


def healthy_run(seed: int = 3) -> RunSummary:
    ops = [call(i, "c", i, i + 0.2, "ok", i, node="tokyo-1", epoch=1) for i in range(1, 4)]
    history = History(ops, [FaultEvent("partition", ["tokyo", "london"], 1.0, 2.0)])
    final = FinalState(counters={COUNTER: 3}, placements={COUNTER: ("tokyo-1", 1)})
    return RunSummary(seed, 60.0, history, check(history, final), final)


def test_seed_line_counts_ops_faults_and_violations() -> None:
    line = seed_line(failover_run())
    assert line.startswith("seed 7, 100.0 s, ops 6 ok / 1 failed / 1 indeterminate")
    assert "faults 3 (delay 1, isolate 1, kill-owner 1)" in line
    assert "counter-lost 1" in line and "linearizability 1" in line
    assert "lost 5" in line and "duplicated 1" in line
    assert line.endswith("FAIL")
    healthy = seed_line(healthy_run())
    assert "violations 0" in healthy and healthy.endswith("PASS")
    assert "unknown 0/1 (0.0%)" in healthy


def test_seed_table_has_a_row_per_seed() -> None:
    text = render(seed_table([failover_run(7), healthy_run(3)]))
    assert "FAIL" in text and "PASS" in text
    assert text.index(" 7 ") < text.index(" 3 ")


def test_violation_window_shows_the_failing_op_and_the_faults_around_it() -> None:
    run = failover_run()
    violation = next(v for v in run.result.violations if v.kind == "linearizability")
    text = violation_text(run, violation)
    assert "london-c0" in text and "#8 increment" in text and "london-1, epoch 4" in text
    assert "#5 increment" in text  # the value it contradicts
    failing_row = next(line for line in text.splitlines() if "#8 increment" in line)
    assert failing_row.lstrip("|").lstrip().startswith(">")  # marked as a culprit
    assert "kill-owner" in text and "isolate" in text
    assert "delay" not in text  # 46 s after the window: not shown with it


def test_faults_around_a_window_include_instant_faults_and_spans_overlapping_it() -> None:
    faults = [
        FaultEvent("kill", ["a"], 1.0),
        FaultEvent("partition", ["a", "b"], 0.0, 50.0),
        FaultEvent("kill", ["b"], 30.0),
    ]
    assert [f.targets for f in faults_around(faults, 20.0, 21.0, margin_s=5.0)] == [["a", "b"]]
    assert len(faults_around(faults, 5.0, 6.0, margin_s=5.0)) == 2


def test_a_violation_without_a_window_says_so() -> None:
    run = failover_run()
    lost = next(v for v in run.result.violations if v.kind == "counter-lost")
    lost.window = []
    assert "(no window)" in render_violation(lost, run.history.faults)


def test_report_writes_markdown_and_a_png_timeline_per_seed(tmp_path: Path) -> None:
    runs = [failover_run(7), healthy_run(3)]
    path = write_report(tmp_path / "report", runs)
    assert path == tmp_path / "report" / "REPORT.md"
    markdown = path.read_text()
    assert "| seed | verdict |" in markdown
    assert "## Seed 7 - FAIL" in markdown and "## Seed 3 - PASS" in markdown
    assert "#### linearizability - do:Counter/counter-0" in markdown
    assert "#8 increment" in markdown
    assert "![seed 7 timeline](seed-7-timeline.png)" in markdown
    for seed in (7, 3):
        png = tmp_path / "report" / f"seed-{seed}-timeline.png"
        assert png.read_bytes()[:8] == PNG_SIGNATURE
        assert png.stat().st_size > 10_000


def test_report_says_how_many_sql_rows_and_whether_the_sql_dumps_agree(tmp_path: Path) -> None:
    sql = "sql:chaos/chaos_rows"
    ops = [
        Op(0, "c", sql, "insert", 1.0, "t0", "ok", None, 1.2, {"bookmark": f"{12:016x}"}),
        Op(1, "c", sql, "read", 2.0, None, "ok", ["t0"], 2.1, {"bookmark": f"{12:016x}"}),
    ]
    history = History(ops, [])
    agreeing = FinalState(sql_rows=["t0"], sql_dumps={"origin": "12:a", "tokyo-1": "12:a"})
    differing = FinalState(sql_rows=["t0"], sql_dumps={"origin": "12:a", "tokyo-1": "11:b"})
    runs = [
        RunSummary(1, 10.0, history, check(history, agreeing), agreeing),
        RunSummary(2, 10.0, history, check(history, differing), differing),
    ]
    markdown = write_report(tmp_path, runs, plots=False).read_text()
    assert "SQL table: 1 row at the primary; the dumps of 2 nodes are identical." in markdown
    assert "the dumps of 2 nodes give 2 digests" in markdown
    assert "#### replica-diverged - tokyo-1 sql" in markdown
