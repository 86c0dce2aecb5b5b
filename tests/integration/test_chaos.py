"""Seeded fault runs end to end: real clusters, real kills and partitions, checked histories.

What CI runs of issue 10: three short seeds with the full fault mix must keep every
guarantee (no violation, nothing acknowledged lost or applied twice), and two planted
bugs must be caught: `--buggify promote-unsynced` (a standby promoted without a copy)
and `--buggify sql-forget-requests` (the SQL primary runs a retried write again). Each
seed starts a cluster of its own (us-east-1 + 3 regions x 2 PoPs, the seed's delays) and
takes about 40 s: ~1 s to start, CI_DURATION_S of load and faults (healed 5 s before the
end), a second to settle, read and stop. One seed goes through the command line as a
user runs it (`edgectl chaos run ... --report DIR --history FILE`); the others call the
runner that command calls.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgectl.chaos import report
from edgectl.chaos.history import History
from edgectl.chaos.nemesis import FAULT_KINDS, parse_faults
from edgectl.chaos.runner import RunConfig, SeedRun, run_seed, summary, violations_text

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]

# Three seeds whose schedules between them use every fault kind (kills of owners,
# standbys, chains, owner + standby, the origin, the control plane and PoPs; region
# isolation, partitions, delay, jitter, loss; pauses of an owner, of the origin and of
# the control plane, those of an owner and of the control plane past the lease; the
# disks of an owner and of the origin refusing to sync):
# `edgectl chaos schedule --seed N --duration 36` prints each;
# tests/unit/test_chaos_nemesis.py holds them to it. (1, 3, 10) until the pauses came,
# (5, 10, 40) until the disk faults came: a new kind changes every full-mix schedule.
CI_SEEDS = (21, 75, 95)
CI_DURATION_S = 36.0
CLI_SEED = CI_SEEDS[0]
# The planted bug: only chains (owner killed, then the promoted standby), which are what
# a promotion without a copy turns into lost writes.
BUGGIFY_SEED = 1
BUGGIFY_FAULTS = "kill-chain"
# The SQL planted bug: origin faults, which lose answers to writes that committed. Seed 1
# freezes the origin 5.3 s, past the clients' 3 s attempt timeout (seeds 1-3 all caught
# it when it was chosen; all three pass without the bug).
SQL_BUGGIFY_SEED = 1
SQL_BUGGIFY_FAULTS = "pause-origin,partition-origin,kill-origin"
# And inserts most of the ops: with the default mix (7% inserts) an origin fault caught
# no insert in flight in 1 of 3 CI runs, and the bug went unseen.
SQL_BUGGIFY_OPS = (("sql-insert", 0.5), ("sql-read", 0.1), ("put", 0.2), ("increment", 0.2))


def _explain(run: SeedRun) -> str:
    """What a failing assertion shows: the seed line, the violations with their windows,
    the faults, and where the cluster's logs were kept."""
    parts = [report.seed_line(summary(run))]
    if run.violated:
        parts.append(violations_text(run))
    parts += [f"note: {note}" for note in run.notes]
    parts += [f"skipped: {skip}" for skip in run.nemesis.skipped]
    if run.data_dir is not None:
        parts.append(f"cluster dir kept: {run.data_dir}")
    return "\n".join(parts)


def _assert_clean(run: SeedRun) -> None:
    result = run.result
    assert result.ok and not result.violations, _explain(run)
    assert result.lost == 0 and result.duplicated == 0, _explain(run)
    counts = run.history.counts()
    # The load ran through the faults: most ops answered.
    assert counts["ok"] > 10 * (counts["fail"] + counts["info"]), (counts, _explain(run))
    assert run.history.faults, "the nemesis applied faults"
    assert all(fault.end_s is not None for fault in run.history.faults)
    assert max(f.end_s or 0 for f in run.history.faults) <= run.schedule.duration_s


@pytest.mark.parametrize("seed", [seed for seed in CI_SEEDS if seed != CLI_SEED])
def test_short_seeded_fault_run_keeps_every_guarantee(seed: int, tmp_path: Path) -> None:
    run = run_seed(
        RunConfig(seed=seed, duration_s=CI_DURATION_S, faults=FAULT_KINDS, work_dir=tmp_path)
    )
    _assert_clean(run)


def test_chaos_run_from_the_command_line_writes_report_and_history(tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    history_file = tmp_path / "history.jsonl"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgectl",
            "chaos",
            "run",
            "--seed",
            str(CLI_SEED),
            "--duration",
            str(CI_DURATION_S),
            "--work-dir",
            str(tmp_path / "work"),
            "--report",
            str(report_dir),
            "--history",
            str(history_file),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    output = completed.stdout + completed.stderr
    assert f"seed {CLI_SEED}" in completed.stdout, output
    assert completed.returncode == 0, output
    assert (report_dir / report.REPORT_NAME).is_file(), output
    assert (report_dir / f"seed-{CLI_SEED}-timeline.png").stat().st_size > 0, output
    assert f"Seed {CLI_SEED}" in (report_dir / report.REPORT_NAME).read_text()
    history = History.load(history_file)
    assert history.ops and history.faults
    assert {op.key.split(":")[0] for op in history.ops} == {"do", "kv", "sql"}
    # The work dir of a clean run is removed.
    assert not list((tmp_path / "work").glob("chaos-seed*")), output


def _planted_run(
    bug: str,
    seed: int,
    faults: str,
    work_dir: Path,
    op_weights: tuple[tuple[str, float], ...] | None = None,
) -> SeedRun:
    """A short run of `faults` only, with the planted bug `bug` in every node."""
    return run_seed(
        RunConfig(
            seed=seed,
            duration_s=CI_DURATION_S,
            faults=parse_faults(faults),
            buggify=bug,
            work_dir=work_dir,
            op_weights=op_weights,
        )
    )


def test_planted_bug_promote_unsynced_is_caught(tmp_path: Path) -> None:
    run = _planted_run("promote-unsynced", BUGGIFY_SEED, BUGGIFY_FAULTS, tmp_path)
    assert any(
        fault.kind == "kill-chain" and len(fault.targets) == 2 for fault in run.history.faults
    ), _explain(run)
    assert run.violated, _explain(run)
    assert run.result.lost > 0 or run.result.violations, _explain(run)


def test_planted_bug_sql_forget_requests_is_caught(tmp_path: Path) -> None:
    run = _planted_run(
        "sql-forget-requests", SQL_BUGGIFY_SEED, SQL_BUGGIFY_FAULTS, tmp_path, SQL_BUGGIFY_OPS
    )
    assert any(fault.kind == "pause-origin" for fault in run.history.faults), _explain(run)
    assert run.violated, _explain(run)
    assert "sql-duplicate" in run.result.violations_by_kind(), _explain(run)
    assert run.result.duplicated > 0, _explain(run)
