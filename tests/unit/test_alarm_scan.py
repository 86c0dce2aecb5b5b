"""The alarm scan's decision (pop_node.objects.host.plan_alarm_scan): what to wake now,
and when to look next."""

from __future__ import annotations

from pop_node.objects.host import plan_alarm_scan

NOW = 1_000.0
A, B, C, D = (bytes([n]) * 24 for n in range(1, 5))


def test_a_due_alarm_without_a_live_instance_is_woken() -> None:
    due, next_at = plan_alarm_scan([(A, NOW - 5.0), (B, NOW)], NOW, set(), set())
    assert due == [A, B]
    assert next_at is None


def test_a_live_instance_or_a_standby_copy_is_left_to_its_owner() -> None:
    alarms = [(A, NOW - 1.0), (B, NOW - 1.0), (C, NOW + 3.0), (D, NOW + 1.0)]
    due, next_at = plan_alarm_scan(alarms, NOW, live={A, D}, skipped={B})
    assert due == []
    # D's own timer wakes it: the scan sleeps to C.
    assert next_at == NOW + 3.0


def test_the_scan_sleeps_to_the_earliest_alarm_ahead() -> None:
    alarms = [(A, NOW + 9.0), (B, NOW + 0.25), (C, NOW - 0.5), (D, NOW + 2.0)]
    due, next_at = plan_alarm_scan(alarms, NOW, set(), set())
    assert due == [C]
    assert next_at == NOW + 0.25


def test_no_alarm_means_nothing_to_wake_and_no_time_to_wake_for() -> None:
    assert plan_alarm_scan([], NOW, set(), set()) == ([], None)
