"""The fault run's checks over hand-written histories and final states (no cluster)."""

from __future__ import annotations

from typing import Any

from edgectl.chaos.checks import FinalState, Violation, check
from edgectl.chaos.history import FaultEvent, History, Op, Status

COUNTER = "do:Counter/counter-0"
KEY = "kv:chaos/k0"
SQL = "sql:chaos/chaos_rows"
ORIGIN_DIGEST = "120:abc"


class Ops:
    """Builds a history with increasing ids."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def add(
        self,
        process: str,
        key: str,
        f: str,
        invoke_s: float,
        complete_s: float | None,
        *,
        input: Any = None,
        output: Any = None,
        status: Status | None = "ok",
        **meta: Any,
    ) -> Op:
        op = Op(len(self.ops), process, key, f, invoke_s, input, status, output, complete_s, meta)
        self.ops.append(op)
        return op

    def incr(self, process: str, start: float, output: Any = None, **kw: Any) -> Op:
        kw.setdefault("node", "tokyo-1")
        kw.setdefault("epoch", 1)
        return self.add(process, COUNTER, "increment", start, start + 0.5, output=output, **kw)

    def history(self, faults: list[FaultEvent] | None = None) -> History:
        return History(list(self.ops), faults or [])


def final(counter: int | None = None, **changes: Any) -> FinalState:
    state = FinalState(
        counters={COUNTER: counter} if counter is not None else {},
        placements={COUNTER: ("tokyo-1", 1)},
        dumps={"origin": ORIGIN_DIGEST, "tokyo-1": ORIGIN_DIGEST, "tokyo-2": ORIGIN_DIGEST},
    )
    for name, value in changes.items():
        setattr(state, name, value)
    return state


def kinds(violations: list[Violation]) -> list[str]:
    return sorted(violation.kind for violation in violations)


def healthy_counter(count: int = 5) -> Ops:
    ops = Ops()
    for value in range(1, count + 1):
        ops.incr("a", float(value), value)
    ops.add("b", COUNTER, "get", count + 1.0, count + 1.5, output=count, node="tokyo-1", epoch=1)
    return ops


# -- a run with nothing wrong ------------------------------------------------------------


def test_a_healthy_run_passes_every_check() -> None:
    ops = healthy_counter()
    put = ops.add("a", KEY, "put", 10.0, 10.5, input="v1", seq=7)
    ops.add("a", KEY, "get", 11.0, 11.5, output="v1", consistency="strong")
    ops.add(
        "a", KEY, "get", 12.0, 12.5, output="v1", consistency="bookmark", min_seq=7, applied_seq=9
    )
    ops.add("b", KEY, "get", 12.0, 12.5, output=None, status="fail", consistency="eventual")
    result = check(ops.history(), final(5))
    assert result.ok, result.violations
    assert result.counts == {"ok": len(ops.ops) - 1, "fail": 1, "info": 0}
    assert result.lost == 0 and result.duplicated == 0
    assert set(result.linearizability) == {COUNTER, KEY}
    assert result.unknown_fraction == 0.0
    assert put.meta["seq"] == 7


# -- counters ---------------------------------------------------------------------------


def test_final_value_below_the_acknowledged_increments_counts_them_lost() -> None:
    result = check(healthy_counter(5).history(), final(3))
    assert "counter-lost" in kinds(result.violations)
    assert result.lost == 2
    lost = next(v for v in result.violations if v.kind == "counter-lost")
    assert "final value 3" in lost.message
    assert [op.output for op in lost.window] == [5]  # the highest value above it


def test_values_handed_out_twice_after_a_failover_are_lost_and_duplicated() -> None:
    """The issue's failure: 5 acknowledged, the object reappears empty on london-1."""
    ops = healthy_counter(5)
    for value in range(1, 4):
        ops.incr("b", 20.0 + value, value, node="london-1", epoch=4)
    result = check(ops.history(), final(3, placements={COUNTER: ("london-1", 4)}))
    assert {"counter-lost", "counter-duplicate", "counter-went-back", "linearizability"} <= set(
        kinds(result.violations)
    )
    assert result.lost == 5  # 8 acknowledged, 3 left
    assert result.duplicated == 3  # values 1, 2, 3 each returned twice
    duplicate = next(v for v in result.violations if v.kind == "counter-duplicate")
    assert "3 values" in duplicate.message
    assert sorted(op.output for op in duplicate.window) == [1, 1]
    linearizability = next(v for v in result.violations if v.kind == "linearizability")
    assert linearizability.focus_ids  # the culprits are named


def test_indeterminate_increments_bound_the_final_value_from_above() -> None:
    ops = healthy_counter(3)
    ops.add("c", COUNTER, "increment", 9.0, 15.0, status="info")
    assert check(ops.history(), final(4)).ok  # the indeterminate one landed
    assert check(ops.history(), final(3)).ok  # or it did not
    result = check(ops.history(), final(6))
    assert kinds(result.violations) == ["counter-overcount"]
    assert result.duplicated == 2


def test_a_read_below_an_acknowledged_value_went_back() -> None:
    ops = healthy_counter(4)
    ops.add("c", COUNTER, "get", 10.0, 10.5, output=2, node="tokyo-2", epoch=2)
    result = check(ops.history(), final(4, placements={COUNTER: ("tokyo-2", 2)}))
    went_back = next(v for v in result.violations if v.kind == "counter-went-back")
    assert [op.output for op in went_back.window] == [4, 2]
    assert "linearizability" in kinds(result.violations)


def test_a_concurrent_read_may_return_less() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1)
    ops.add("b", COUNTER, "get", 0.1, 2.0, output=0, node="tokyo-1", epoch=1)
    assert check(ops.history(), final(1)).ok


def test_a_counter_with_no_final_value_cannot_be_cleared() -> None:
    result = check(healthy_counter(2).history(), final(None))
    assert kinds(result.violations) == ["final-state-missing"]


# -- owners and epochs ------------------------------------------------------------------


def test_one_epoch_answered_by_two_nodes_is_two_owners() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1, node="tokyo-1", epoch=3)
    ops.incr("b", 0.2, 2, node="tokyo-2", epoch=3)
    result = check(ops.history(), final(2, placements={COUNTER: ("tokyo-1", 3)}))
    assert kinds(result.violations) == ["epoch-two-owners"]
    assert "tokyo-1" in result.violations[0].message and "tokyo-2" in result.violations[0].message


def test_a_retried_call_names_the_node_of_its_first_run_and_counts_for_its_epoch() -> None:
    """A replay answers with the epoch and node of the call's first run: a retried reply
    is as good a witness of who owned its epoch as any other."""
    ops = Ops()
    ops.incr("a", 0.0, 1, node="london-1", epoch=2, attempts=1)
    replayed = ops.incr("b", 0.2, 2, node="london-1", epoch=2, attempts=3)
    placements = {COUNTER: ("new-york-1", 3)}
    assert check(ops.history(), final(2, placements=placements)).ok
    replayed.meta["node"] = "new-york-1"  # a second node answering for epoch 2
    result = check(ops.history(), final(2, placements=placements))
    assert kinds(result.violations) == ["epoch-two-owners"]


def test_the_final_placement_counts_as_an_owner_of_its_epoch() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1, node="tokyo-2", epoch=3)
    result = check(ops.history(), final(1, placements={COUNTER: ("tokyo-1", 3)}))
    assert kinds(result.violations) == ["epoch-two-owners"]
    assert "final placement" in result.violations[0].message


def test_a_deposed_owner_answering_after_a_newer_epoch_replied() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1, node="tokyo-1", epoch=1)
    ops.incr("a", 2.0, 2, node="tokyo-2", epoch=2)
    ops.incr("b", 3.0, 3, node="tokyo-1", epoch=1)  # invoked after epoch 2 answered
    result = check(ops.history(), final(3, placements={COUNTER: ("tokyo-2", 2)}))
    assert kinds(result.violations) == ["deposed-owner"]
    assert [op.meta["epoch"] for op in result.violations[0].window] == [2, 1]


def test_old_and_new_owner_overlapping_in_time_is_allowed() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1, node="tokyo-1", epoch=1)
    ops.add("b", COUNTER, "increment", 1.0, 3.0, output=2, node="tokyo-2", epoch=2)
    ops.add("c", COUNTER, "get", 1.5, 1.8, output=1, node="tokyo-1", epoch=1)
    assert check(ops.history(), final(2, placements={COUNTER: ("tokyo-2", 2)})).ok


def test_a_reply_from_an_epoch_beyond_the_final_placement() -> None:
    ops = Ops()
    ops.incr("a", 0.0, 1, node="tokyo-1", epoch=5)
    result = check(ops.history(), final(1, placements={COUNTER: ("tokyo-1", 4)}))
    assert "epoch-went-back" in kinds(result.violations)


# -- KV bookmarks and sessions -----------------------------------------------------------


def kv_writes(ops: Ops) -> None:
    ops.add("w", KEY, "put", 0.0, 0.5, input="v1", seq=10)
    ops.add("w", KEY, "put", 1.0, 1.5, input="v2", seq=20)


def bookmark(ops: Ops, process: str, output: Any, min_seq: int, applied_seq: int) -> Op:
    return ops.add(
        process,
        KEY,
        "get",
        5.0,
        5.5,
        output=output,
        consistency="bookmark",
        min_seq=min_seq,
        applied_seq=applied_seq,
    )


def test_a_bookmark_read_at_or_past_its_bookmark_passes() -> None:
    ops = Ops()
    kv_writes(ops)
    bookmark(ops, "r", "v2", 20, 20)
    bookmark(ops, "r", "v1", 15, 15)  # seq 20 is past the bookmark: v1 is new enough
    assert check(ops.history(), final(None, counters={})).ok


def test_a_bookmark_read_behind_its_min_seq() -> None:
    ops = Ops()
    kv_writes(ops)
    bookmark(ops, "r", "v2", 20, 19)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["bookmark-behind"]


def test_a_bookmark_read_older_than_its_bookmark_is_stale() -> None:
    ops = Ops()
    kv_writes(ops)
    stale = bookmark(ops, "r", "v1", 20, 25)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["bookmark-stale"]
    assert stale in result.violations[0].window
    assert "seq 20" in result.violations[0].message


def test_a_bookmark_read_of_nothing_before_a_put_it_covers_is_stale() -> None:
    ops = Ops()
    kv_writes(ops)
    bookmark(ops, "r", None, 10, 12)
    assert kinds(check(ops.history(), final(None, counters={})).violations) == ["bookmark-stale"]
    ops.add("w", KEY, "delete", 2.0, 2.5, seq=30)  # a newer delete explains None
    assert check(ops.history(), final(None, counters={})).ok


def test_a_bookmark_read_of_a_value_nobody_wrote() -> None:
    ops = Ops()
    kv_writes(ops)
    bookmark(ops, "r", "v9", 20, 20)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["kv-unknown-value"]
    assert "(bookmark)" in result.violations[0].message


def test_an_eventual_read_of_a_value_nobody_wrote() -> None:
    ops = Ops()
    kv_writes(ops)
    ops.add("r", KEY, "get", 5.0, 5.5, output="v1", consistency="eventual", applied_seq=12)
    assert check(ops.history(), final(None, counters={})).ok  # old, but eventual allows it
    ops.add("r", KEY, "get", 6.0, 6.5, output="v9", consistency="eventual", applied_seq=12)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["kv-unknown-value"]


def test_a_value_from_an_indeterminate_put_is_not_judged_stale() -> None:
    ops = Ops()
    kv_writes(ops)
    ops.add("x", KEY, "put", 0.2, 3.0, input="v-maybe", status="info")
    bookmark(ops, "r", "v-maybe", 20, 20)
    assert check(ops.history(), final(None, counters={})).ok


def test_a_process_reading_below_its_own_acknowledged_write() -> None:
    ops = Ops()
    ops.add("w", KEY, "put", 0.0, 0.5, input="v1", seq=10)
    ops.add("r", KEY, "put", 1.0, 1.5, input="mine", seq=20)
    # Its bookmark should have been 20; it passed 5 and was served older data.
    bookmark(ops, "r", "v1", 5, 12)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["monotonic-reads"]
    assert "own write" in result.violations[0].message


def test_a_process_reading_an_older_value_than_its_own_write_of_the_key() -> None:
    ops = Ops()
    ops.add("r", KEY, "put", 0.0, 0.5, input="mine", seq=10)
    ops.add("w", KEY, "put", 0.1, 0.6, input="older", seq=8)
    bookmark(ops, "r", "older", 5, 30)
    result = check(ops.history(), final(None, counters={}))
    assert kinds(result.violations) == ["monotonic-reads"]
    assert "older than its own" in result.violations[0].message


def test_another_process_reading_before_the_write_is_not_held_to_it() -> None:
    ops = Ops()
    ops.add("r", KEY, "put", 0.0, 0.5, input="mine", seq=10)
    ops.add("other", KEY, "put", 1.0, 1.5, input="theirs", seq=8)
    bookmark(ops, "other", "theirs", 8, 9)
    assert check(ops.history(), final(None, counters={})).ok


# -- SQL ---------------------------------------------------------------------------------


def mark(seq: int) -> str:
    """A bookmark, as the platform formats one."""
    return f"{seq:016x}"


def insert(ops: Ops, process: str, tag: str, start: float, seq: int | None, **kw: Any) -> Op:
    if seq is not None:
        kw.setdefault("bookmark", mark(seq))
    kw.setdefault("request_id", tag)
    return ops.add(process, SQL, "insert", start, start + 0.5, input=tag, **kw)


def sql_read(
    ops: Ops, process: str, tags: list[str], start: float, sent: int | None, returned: int
) -> Op:
    return ops.add(
        process,
        SQL,
        "read",
        start,
        start + 0.5,
        output=tags,
        min_bookmark=mark(sent) if sent is not None else "",
        bookmark=mark(returned),
    )


def sql_history() -> Ops:
    """Two sessions: a writes t1 (seq 10) and t2 (seq 12), b writes t3 (seq 11)."""
    ops = Ops()
    insert(ops, "a", "t1", 1.0, 10)
    insert(ops, "b", "t3", 1.2, 11)
    insert(ops, "a", "t2", 2.0, 12)
    sql_read(ops, "a", ["t1", "t3", "t2"], 3.0, 12, 12)
    sql_read(ops, "b", ["t1"], 1.5, None, 10)  # first-unconstrained: a replica at seq 10
    sql_read(ops, "b", ["t1", "t3"], 2.0, 11, 11)
    return ops


def sql_kinds(ops: Ops, rows: list[str] | None, **changes: Any) -> list[str]:
    return kinds(
        check(ops.history(), final(None, counters={}, sql_rows=rows, **changes)).violations
    )


def test_a_healthy_sql_history_passes() -> None:
    result = check(sql_history().history(), final(None, counters={}, sql_rows=["t1", "t3", "t2"]))
    assert result.ok, result.violations
    assert result.lost == 0 and result.duplicated == 0
    assert SQL not in result.linearizability  # judged by its own checks, not a model


def test_an_acknowledged_insert_missing_after_heal_is_lost() -> None:
    result = check(sql_history().history(), final(None, counters={}, sql_rows=["t1", "t2"]))
    assert kinds(result.violations) == ["sql-lost"]
    assert result.lost == 1
    assert "t3" in result.violations[0].message


def test_an_indeterminate_insert_may_be_missing_or_present() -> None:
    for rows in (["t1", "t3", "t2"], ["t1", "t3", "t2", "t4"]):
        ops = sql_history()
        insert(ops, "b", "t4", 4.0, None, status="info")
        assert sql_kinds(ops, rows) == []


def test_an_insert_applied_twice_is_a_duplicate() -> None:
    result = check(
        sql_history().history(), final(None, counters={}, sql_rows=["t1", "t3", "t2", "t3"])
    )
    assert kinds(result.violations) == ["sql-duplicate"]
    assert result.duplicated == 1


def test_a_read_showing_a_row_twice_is_a_duplicate() -> None:
    ops = sql_history()
    sql_read(ops, "a", ["t1", "t3", "t3", "t2"], 4.0, 12, 12)
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == ["sql-duplicate"]


def test_a_row_from_a_refused_insert_or_from_nowhere_is_a_phantom() -> None:
    ops = sql_history()
    insert(ops, "b", "t5", 4.0, None, status="fail")
    assert sql_kinds(ops, ["t1", "t3", "t2", "t5"]) == ["sql-phantom-row"]
    ops = sql_history()
    sql_read(ops, "a", ["t1", "t3", "t2", "nobody"], 4.0, 12, 12)
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == ["sql-phantom-row"]


def test_a_session_read_missing_a_write_at_or_below_its_bookmark_is_stale() -> None:
    ops = sql_history()
    # Sent with 12 (a's own t2): t3 at 11 must be there too, whoever wrote it.
    sql_read(ops, "a", ["t1", "t2"], 4.0, 12, 12)
    found = check(ops.history(), final(None, counters={}, sql_rows=["t1", "t3", "t2"]))
    assert "sql-bookmark-stale" in kinds(found.violations)
    stale = next(v for v in found.violations if v.kind == "sql-bookmark-stale")
    assert "t3" in stale.message and stale.window[-1].f == "read"


def test_a_read_answering_an_older_bookmark_than_it_was_sent_is_behind() -> None:
    ops = sql_history()
    sql_read(ops, "a", ["t1", "t3", "t2"], 4.0, 12, 11)
    assert "sql-bookmark-behind" in sql_kinds(ops, ["t1", "t3", "t2"])
    ops = sql_history()
    read = sql_read(ops, "a", ["t1", "t3", "t2"], 4.0, 12, 12)
    read.meta["bookmark"] = "not-a-bookmark"
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == ["sql-bookmark-behind"]


def test_a_bookmark_newer_than_the_rows_read_is_allowed_but_not_an_older_one() -> None:
    ops = sql_history()
    sql_read(ops, "c", ["t1"], 4.0, None, 11)  # the replica's seq, read after the rows
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == []
    ops = sql_history()
    sql_read(ops, "c", ["t1", "t3", "t2"], 4.0, None, 11)  # holds t2 (12), says 11
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == ["sql-bookmark-understated"]


def test_a_session_read_missing_what_an_earlier_read_of_it_returned_went_back() -> None:
    ops = sql_history()
    # b's later read sent no bookmark (as if it had lost its session): t3 is gone.
    sql_read(ops, "b", ["t1"], 3.0, None, 10)
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == ["sql-session-went-back"]
    # Another session may read less: it never saw t3.
    ops = sql_history()
    sql_read(ops, "c", ["t1"], 3.0, None, 10)
    assert sql_kinds(ops, ["t1", "t3", "t2"]) == []


def test_overlapping_reads_of_one_session_are_not_ordered() -> None:
    ops = sql_history()
    sql_read(ops, "b", ["t1"], 1.8, None, 10)  # began before b's read at 2.0 completed
    assert "sql-session-went-back" not in sql_kinds(ops, ["t1", "t3", "t2"])


def test_acknowledged_inserts_with_no_rows_read_after_heal() -> None:
    assert sql_kinds(sql_history(), None) == ["final-state-missing"]


def test_a_sql_replica_whose_dump_differs_from_the_primary() -> None:
    dumps = {"origin": "12:abc", "tokyo-1": "12:abc", "tokyo-2": "11:def"}
    found = check(
        sql_history().history(),
        final(None, counters={}, sql_rows=["t1", "t3", "t2"], sql_dumps=dumps),
    )
    assert kinds(found.violations) == ["replica-diverged"]
    assert found.violations[0].key == "tokyo-2 sql"
    assert "SQL dump" in found.violations[0].message


# -- replicas and the rest ----------------------------------------------------------------


def test_a_replica_whose_dump_differs_from_the_origin() -> None:
    dumps = {"origin": ORIGIN_DIGEST, "tokyo-1": ORIGIN_DIGEST, "tokyo-2": "119:def"}
    result = check(History(), final(None, counters={}, dumps=dumps))
    assert kinds(result.violations) == ["replica-diverged"]
    assert result.violations[0].key == "tokyo-2"


def test_dumps_without_the_origin_cannot_be_compared() -> None:
    result = check(History(), final(None, counters={}, dumps={"tokyo-1": ORIGIN_DIGEST}))
    assert kinds(result.violations) == ["replica-diverged"]
    assert "no origin" in result.violations[0].message


def test_an_operation_no_model_describes_is_reported_not_raised() -> None:
    ops = healthy_counter(2)
    ops.add("a", COUNTER, "reset", 9.0, 9.5, node="tokyo-1", epoch=1)
    result = check(ops.history(), final(2))
    assert "unjudgeable" in kinds(result.violations)
    assert COUNTER not in result.linearizability


def test_unknown_checks_count_in_the_unknown_fraction() -> None:
    ops = healthy_counter(2)
    for index in range(14):
        ops.add(f"w{index}", KEY, "put", 0.0, 10.0, input=f"v{index}", seq=index + 1)
        ops.add(f"r{index}", KEY, "get", 0.0, 10.0, output=f"v{index}", consistency="strong")
    ops.add("z", KEY, "get", 20.0, 21.0, output="never written", consistency="strong")
    result = check(ops.history(), final(2), budget_s=0.02)
    assert result.linearizability[KEY].verdict == "unknown"
    assert result.unknown_fraction == 0.5
    assert result.verdicts() == {"ok": 1, "violation": 0, "unknown": 1}
    assert result.ok  # unknown is reported, not a violation
