"""Cron triggers (`control_plane/crons.py`): the next fire time of every schedule, the
runs due then, and one healthy PoP per run."""

from __future__ import annotations

import datetime

from control_plane.crons import CronRun, next_runs, pick_pop

UTC = datetime.UTC


def at(hour: int, minute: int, second: int = 0) -> datetime.datetime:
    return datetime.datetime(2026, 12, 4, hour, minute, second, tzinfo=UTC)


def test_the_earliest_schedule_fires_next_with_every_run_due_then() -> None:
    schedules = {"a": ("* * * * *",), "b": ("*/5 * * * *", "0 * * * *"), "c": ("30 9 * * *",)}
    fire, due = next_runs(schedules, at(10, 4, 20))
    assert fire == at(10, 5)
    assert due == [CronRun("a", "* * * * *", at(10, 5)), CronRun("b", "*/5 * * * *", at(10, 5))]
    fire, due = next_runs(schedules, at(10, 59, 1))
    assert fire == at(11, 0) and {(r.worker, r.cron) for r in due} == {
        ("a", "* * * * *"),
        ("b", "*/5 * * * *"),
        ("b", "0 * * * *"),
    }


def test_a_fire_time_is_never_the_moment_just_fired() -> None:
    fire, _ = next_runs({"a": ("* * * * *",)}, at(10, 5))
    assert fire == at(10, 6)


def test_no_schedules_means_nothing_due() -> None:
    assert next_runs({}, at(10, 0)) == (None, [])


def test_one_pop_per_run_the_same_each_time_and_only_healthy_ones() -> None:
    run = CronRun("a", "* * * * *", at(10, 5))
    pops = ["tokyo-1", "london-1", "sydney-1"]
    chosen = pick_pop(run, pops)
    assert chosen in pops and pick_pop(run, list(reversed(pops))) == chosen
    assert pick_pop(run, []) is None
    # Over many minutes the runs spread over the PoPs.
    minutes = [CronRun("a", "* * * * *", at(10, m)) for m in range(60)]
    assert {pick_pop(r, pops) for r in minutes} == set(pops)
