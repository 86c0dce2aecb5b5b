"""Every guarantee of a fault run, judged over its history and the state read after heal.

Pure: `check(history, final)` reads no clock but the linearizability budget's, opens no
socket. Each guarantee gives `Violation`s of its own kind, naming the ops that show it:

- "linearizability": per Durable Object (Counter model) and per KV key (register model:
  puts, deletes and STRONG reads), with the smallest window that shows it
  (edgectl.chaos.linearizability).
- Counters, per object, with S_ok / S_info the sums of the ok / indeterminate increments
  (`by`, 1 by default) and V the value read after heal (these need every `by` > 0, what
  the clients send; an object with another increment is judged by linearizability only):
  - "counter-lost": an acknowledged increment is missing from V: V < S_ok, or some ok
    increment returned a value above V (the counter only grows, so it went back).
    `lost` adds max(S_ok - V, 1 if any value is above V): a lower bound of the
    acknowledged increments missing.
  - "counter-duplicate": two ok increments returned the same value (each increment moves
    the counter to a value no other one returns). `duplicated` adds, per value, the
    increments beyond the first.
  - "counter-overcount": V > S_ok + S_info: more was applied than was ever asked, so an
    increment was applied twice (exactly-once per request id). `duplicated` adds the
    excess.
  - "counter-went-back": an ok get or increment invoked after another ok op on the
    object had returned w returned less than w (a get) or at most w (an increment).
  - "final-state-missing": no value after heal for an object that had ok ops.
- "epoch-two-owners": one epoch of an object answered by two nodes (replies' `node`,
  `epoch`, and the final placement). Only replies to calls made in one attempt count: a
  retried call answered from the request-id table gets the epoch of its first run but
  the name of the node answering the retry. "epoch-went-back": a reply with an epoch
  above the final placement's.
- "deposed-owner": an ok reply from epoch e to a call invoked after a reply from a newer
  epoch had completed: a deposed owner still serving (a replayed reply's epoch is that of
  its first run, which began after the call was invoked, so replays count).
- KV bookmark reads (ok gets with meta consistency "bookmark", `min_seq` m):
  - "bookmark-behind": `applied_seq` < m.
  - "bookmark-stale": the value read is older than the newest write to the key with
    seq <= m (values are unique, so a value names its put and that put's seq; a value
    whose put has no known seq - indeterminate - is not judged). A read of nothing is
    stale when that newest write is a put and no delete could be newer than it.
- "kv-unknown-value": a bookmark or eventual read of a value no put wrote (STRONG reads
  are judged by linearizability).
- "monotonic-reads" (per process): a bookmark read returns `applied_seq` below the seq of
  a write the same process had acknowledged before it began, or a value older than that
  process's own last acknowledged write to the key. (The applied_seq of the process's
  earlier reads is deliberately not a floor: clients carry only their own writes' seqs
  as their bookmark, and a read served by another PoP, or by the origin as a fallback,
  may rightly report a lower applied_seq.)
- SQL (the ops of the "sql:" key: inserts of unique tags, session reads of every tag;
  rows are only ever added; a read's `min_bookmark` is the session's bookmark it was
  sent with, `bookmark` the one it returned):
  - "sql-lost": an acknowledged insert's tag is not among the primary's rows after heal
    (`lost` adds one per tag).
  - "sql-duplicate": a tag in two rows, after heal or in any read: an insert applied twice
    (exactly-once per request id; `duplicated` adds the rows beyond the first).
  - "sql-phantom-row": a tag no insert could have written (none, or only ones refused
    with a definite code) in a read or after heal.
  - "sql-bookmark-behind": a session read returned a bookmark older than the one it was
    sent with, or a malformed one.
  - "sql-bookmark-stale": a session read misses an acknowledged insert at or below the
    bookmark it was sent with (D1: a session never reads older than its bookmark).
  - "sql-bookmark-understated": a read holds an insert above the bookmark it returned (the
    session could then go on from a state older than one it saw).
  - "sql-session-went-back" (per process): a read misses a tag an earlier read of the
    same session, completed before it began, returned (sequential consistency).
  - "final-state-missing": no rows read after heal although inserts were acknowledged.
- "replica-diverged": a node's KV dump digest differs from the origin's ("origin"); the
  same for the SQL database's dump (key "NODE sql").
- "unjudgeable": a key whose ops its model does not describe (a runner bug, shown, not
  raised, so the rest of the run is still judged).

Per key and kind one Violation, whose message counts the instances and whose window
shows the first (a run that lost state at a failover has hundreds of symptoms of one
cause); `lost` and `duplicated` count the instances.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from edgectl.chaos.history import History, Op, bookmark_seq
from edgectl.chaos.linearizability import (
    CounterModel,
    LinearizabilityResult,
    Model,
    check_operations,
    increment_by,
    model_for_key,
)

T = TypeVar("T")

ORIGIN_DUMP = "origin"

KINDS = (
    "linearizability",
    "counter-lost",
    "counter-duplicate",
    "counter-overcount",
    "counter-went-back",
    "final-state-missing",
    "epoch-two-owners",
    "epoch-went-back",
    "deposed-owner",
    "bookmark-behind",
    "bookmark-stale",
    "kv-unknown-value",
    "monotonic-reads",
    "sql-lost",
    "sql-duplicate",
    "sql-phantom-row",
    "sql-bookmark-behind",
    "sql-bookmark-stale",
    "sql-bookmark-understated",
    "sql-session-went-back",
    "replica-diverged",
    "unjudgeable",
)
# Ops named in one violation's message at most; the rest are counted.
EXAMPLES_MAX = 5


@dataclass
class FinalState:
    """What the runner read after healing everything and letting the cluster settle."""

    # History key ("do:Counter/name") -> value read from its owner on a STRONG path.
    counters: dict[str, int] = field(default_factory=dict)
    # History key -> (owner node, epoch) at the end.
    placements: dict[str, tuple[str, int]] = field(default_factory=dict)
    # Node name -> digest of its KV dump; the origin's under "origin".
    dumps: dict[str, str] = field(default_factory=dict)
    # The SQL table's tags, read at the primary (None: not read).
    sql_rows: list[str] | None = None
    # Node name -> digest of its SQL database's dump; the origin's under "origin".
    sql_dumps: dict[str, str] = field(default_factory=dict)


@dataclass
class Violation:
    """One guarantee broken on one key (or node): what, and the ops that show it."""

    kind: str
    key: str
    message: str
    window: list[Op] = field(default_factory=list)
    # Ops of the window to point at (for linearizability: the op that cannot be placed and
    # the culprits); empty: the whole window.
    focus_ids: list[int] = field(default_factory=list)


@dataclass
class CheckResult:
    violations: list[Violation]
    linearizability: dict[str, LinearizabilityResult]
    counts: dict[str, int]  # ops per status: "ok", "fail", "info"
    lost: int  # acknowledged increments and SQL inserts lost (a lower bound)
    duplicated: int  # increments or inserts applied twice / values handed out twice
    unknown_fraction: float  # share of linearizability checks that came back "unknown"

    @property
    def ok(self) -> bool:
        return not self.violations

    def violations_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for violation in self.violations:
            counts[violation.kind] = counts.get(violation.kind, 0) + 1
        return counts

    def verdicts(self) -> dict[str, int]:
        """Linearizability checks per verdict."""
        counts = {"ok": 0, "violation": 0, "unknown": 0}
        for result in self.linearizability.values():
            counts[result.verdict] += 1
        return counts


def check(
    history: History,
    final: FinalState,
    *,
    budget_s: float = 5.0,
    model_for: Callable[[str], Model | None] = model_for_key,
) -> CheckResult:
    """Judge every guarantee; `budget_s` bounds each key's linearizability search."""
    violations: list[Violation] = []
    linearizability: dict[str, LinearizabilityResult] = {}
    lost = duplicated = 0
    by_key = history.by_key()
    for key, ops in sorted(by_key.items()):
        model = model_for(key)
        if model is None:
            continue
        try:
            result = check_operations(ops, model, budget_s=budget_s, key=key)
        except ValueError as error:
            violations.append(Violation("unjudgeable", key, str(error)))
            continue
        linearizability[key] = result
        if result.verdict == "violation":
            violations.append(
                Violation(
                    "linearizability",
                    key,
                    result.detail,
                    result.window,
                    _focus(result),
                )
            )
        if isinstance(model, CounterModel):
            found, key_lost, key_duplicated = counter_violations(key, ops, final.counters.get(key))
            violations += found
            lost += key_lost
            duplicated += key_duplicated
    for key, ops in sorted(by_key.items()):
        if key.startswith("do:"):
            violations += owner_violations(key, ops, final.placements.get(key))
    violations += bookmark_violations(history.ops)
    sql_found, sql_lost, sql_duplicated = sql_violations(
        [op for op in history.ops if op.key.startswith("sql:")], final.sql_rows
    )
    violations += sql_found
    lost += sql_lost
    duplicated += sql_duplicated
    violations += replica_violations(final.dumps)
    violations += replica_violations(final.sql_dumps, "SQL")
    unknown = sum(result.verdict == "unknown" for result in linearizability.values())
    return CheckResult(
        violations=violations,
        linearizability=linearizability,
        counts=history.counts(),
        lost=lost,
        duplicated=duplicated,
        unknown_fraction=unknown / len(linearizability) if linearizability else 0.0,
    )


def _focus(result: LinearizabilityResult) -> list[int]:
    """The ops a linearizability window points at: the one that cannot be placed, and
    the culprits (those the contradiction needs)."""
    focus = [op.id for op in result.culprits]
    if result.failing_op is not None and result.failing_op.id not in focus:
        focus.append(result.failing_op.id)
    return focus


# -- counters ---------------------------------------------------------------------------


def _int_output(op: Op) -> int | None:
    value = op.output
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(op: Op) -> str:
    return f"#{op.id} {op.process} {op.f}->{op.output!r}"


def _first(items: Sequence[T], show: Callable[[T], str]) -> str:
    """The first EXAMPLES_MAX items shown, the rest counted."""
    shown = ", ".join(show(item) for item in items[:EXAMPLES_MAX])
    more = len(items) - EXAMPLES_MAX
    return shown + (f" and {more} more" if more > 0 else "")


def _examples(ops: Iterable[Op]) -> str:
    return _first(list(ops), _describe)


def _plural(count: int, noun: str, nouns: str = "") -> str:
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def _by_invoke(op: Op) -> tuple[float, int]:
    return (op.invoke_s, op.id)


def counter_violations(
    key: str, ops: Sequence[Op], final_value: int | None
) -> tuple[list[Violation], int, int]:
    """Lost, duplicated and going-back increments of one Counter: (violations, lost,
    duplicated)."""
    increments = [op for op in ops if op.f == "increment"]
    if any(increment_by(op) <= 0 for op in increments):
        return [], 0, 0  # the bounds below need a counter that only grows
    acknowledged = [op for op in increments if op.ok and _int_output(op) is not None]
    pending = [op for op in increments if op.indeterminate]
    ok_sum = sum(increment_by(op) for op in acknowledged)
    info_sum = sum(increment_by(op) for op in pending)
    violations: list[Violation] = []
    lost = duplicated = 0

    by_value: dict[int, list[Op]] = defaultdict(list)
    for op in acknowledged:
        by_value[_int_output(op) or 0].append(op)
    repeated = sorted(
        (value, sorted(group, key=_by_invoke))
        for value, group in by_value.items()
        if len(group) > 1
    )
    if repeated:
        duplicated += sum(len(group) - 1 for _, group in repeated)
        value, first = repeated[0]
        violations.append(
            Violation(
                "counter-duplicate",
                key,
                f"{_plural(len(repeated), 'value')} returned by more than one acknowledged "
                f"increment; first: {value} by {_examples(first)}",
                first,
            )
        )

    violations += _went_back(key, ops)

    if final_value is None:
        if any(op.ok for op in ops):
            violations.append(
                Violation(
                    "final-state-missing",
                    key,
                    "no value read after heal: lost increments cannot be ruled out",
                )
            )
        return violations, lost, duplicated

    above = sorted(
        (op for op in acknowledged if (_int_output(op) or 0) > final_value),
        key=lambda op: -(_int_output(op) or 0),
    )
    if ok_sum > final_value or above:
        lost += max(ok_sum - final_value, 1 if above else 0)
        reasons = []
        if ok_sum > final_value:
            reasons.append(f"below the {ok_sum} acknowledged")
        if above:
            reasons.append(f"below {_plural(len(above), 'acknowledged value')}: {_examples(above)}")
        violations.append(
            Violation(
                "counter-lost",
                key,
                f"final value {final_value} after heal, " + "; ".join(reasons),
                above[:1],
            )
        )
    if final_value > ok_sum + info_sum:
        duplicated += final_value - ok_sum - info_sum
        violations.append(
            Violation(
                "counter-overcount",
                key,
                f"final value {final_value} after heal is above the {ok_sum} acknowledged "
                f"plus {info_sum} indeterminate increments: "
                f"{final_value - ok_sum - info_sum} applied more than once",
            )
        )
    return violations, lost, duplicated


def _went_back(key: str, ops: Sequence[Op]) -> list[Violation]:
    """Ok ops that returned less than a value acknowledged before they were invoked."""
    answered = [
        op for op in ops if op.ok and _int_output(op) is not None and op.complete_s is not None
    ]
    by_completion = sorted(answered, key=lambda op: (op.complete_s or 0.0, op.id))
    highest: Op | None = None
    done = 0
    found: list[tuple[Op, Op]] = []
    for op in sorted(answered, key=_by_invoke):
        # The highest value acknowledged strictly before this op began.
        while done < len(by_completion) and (by_completion[done].complete_s or 0.0) < op.invoke_s:
            candidate = by_completion[done]
            if highest is None or (_int_output(candidate) or 0) > (_int_output(highest) or 0):
                highest = candidate
            done += 1
        if highest is None:
            continue
        seen, value = _int_output(highest) or 0, _int_output(op) or 0
        if value < seen or (op.f == "increment" and value <= seen):
            found.append((highest, op))
    if not found:
        return []
    before, after = found[0]
    return [
        Violation(
            "counter-went-back",
            key,
            f"{_plural(len(found), 'op')} returned no more than a value acknowledged before "
            "it began; "
            f"first: {_describe(after)} after {_describe(before)}",
            [before, after],
        )
    ]


# -- owners and epochs ------------------------------------------------------------------


def _epoch(op: Op) -> int | None:
    epoch = op.meta.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def owner_violations(
    key: str, ops: Sequence[Op], placement: tuple[str, int] | None
) -> list[Violation]:
    """One owner per epoch, and no reply from an epoch already superseded."""
    replies = [op for op in ops if op.ok and _epoch(op) is not None and op.meta.get("node")]
    violations: list[Violation] = []
    nodes_by_epoch: dict[int, dict[str, list[Op]]] = defaultdict(lambda: defaultdict(list))
    for op in replies:
        # A retry answered from the request-id table carries the node and epoch of the
        # call's first run, so every reply names the node that ran its epoch.
        nodes_by_epoch[_epoch(op) or 0][str(op.meta["node"])].append(op)
    if placement is not None:
        owner, final_epoch = placement
        nodes_by_epoch[final_epoch].setdefault(owner, [])
        beyond = [op for op in replies if (_epoch(op) or 0) > final_epoch]
        if beyond:
            violations.append(
                Violation(
                    "epoch-went-back",
                    key,
                    f"the final placement is {owner} at epoch {final_epoch}, yet "
                    f"{len(beyond)} replies came from a later epoch: {_examples(beyond)}",
                    beyond[:EXAMPLES_MAX],
                )
            )
    shared = sorted(epoch for epoch, nodes in nodes_by_epoch.items() if len(nodes) > 1)
    if shared:
        epoch = shared[0]
        nodes = nodes_by_epoch[epoch]
        window = sorted((group[0] for group in nodes.values() if group), key=_by_invoke)
        named = ", ".join(
            f"{node} ({len(group)} replies{', final placement' if not group else ''})"
            for node, group in sorted(nodes.items())
        )
        violations.append(
            Violation(
                "epoch-two-owners",
                key,
                f"{_plural(len(shared), 'epoch')} answered by more than one node; first: "
                f"epoch {epoch} "
                f"by {named}",
                window,
            )
        )
    violations += _deposed(key, replies)
    return violations


def _deposed(key: str, replies: Sequence[Op]) -> list[Violation]:
    by_completion = sorted(replies, key=lambda op: (op.complete_s or 0.0, op.id))
    newest: Op | None = None
    done = 0
    found: list[tuple[Op, Op]] = []
    for op in sorted(replies, key=_by_invoke):
        while done < len(by_completion) and (by_completion[done].complete_s or 0.0) < op.invoke_s:
            candidate = by_completion[done]
            if newest is None or (_epoch(candidate) or 0) > (_epoch(newest) or 0):
                newest = candidate
            done += 1
        if newest is not None and (_epoch(op) or 0) < (_epoch(newest) or 0):
            found.append((newest, op))
    if not found:
        return []
    newer, older = found[0]
    return [
        Violation(
            "deposed-owner",
            key,
            f"{_plural(len(found), 'reply', 'replies')} from an epoch already superseded when "
            "its call began; "
            f"first: #{older.id} answered by {older.meta.get('node')} at epoch "
            f"{_epoch(older)} after #{newer.id} had been answered by "
            f"{newer.meta.get('node')} at epoch {_epoch(newer)}",
            [newer, older],
        )
    ]


# -- KV bookmarks and sessions -----------------------------------------------------------


def _seq(op: Op, name: str = "seq") -> int | None:
    seq = op.meta.get(name)
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value  # type: ignore[no-any-return]


@dataclass
class _KeyWrites:
    """One KV key's writes: by seq (acknowledged ones), and which put wrote each value."""

    seqs: list[int] = field(default_factory=list)
    writes: list[Op] = field(default_factory=list)  # parallel to seqs
    # value -> the highest known seq of a put of it (None: only indeterminate puts)
    value_seq: dict[Hashable, int | None] = field(default_factory=dict)
    value_op: dict[Hashable, Op] = field(default_factory=dict)
    delete_seqs: list[int] = field(default_factory=list)
    unknown_deletes: bool = False

    def newest_at_most(self, seq: int) -> tuple[int, Op] | None:
        index = bisect.bisect_right(self.seqs, seq)
        return (self.seqs[index - 1], self.writes[index - 1]) if index else None


def _key_writes(ops: Iterable[Op]) -> dict[str, _KeyWrites]:
    keys: dict[str, _KeyWrites] = defaultdict(_KeyWrites)
    known: dict[str, list[tuple[int, Op]]] = defaultdict(list)
    for op in ops:
        if op.f not in ("put", "delete") or op.status == "fail":
            continue
        writes = keys[op.key]
        seq = _seq(op) if op.ok else None
        if seq is not None:
            known[op.key].append((seq, op))
        if op.f == "put":
            value = _hashable(op.input)
            before = writes.value_seq.get(value)
            writes.value_seq[value] = max(before or 0, seq) if seq is not None else before
            writes.value_op.setdefault(value, op)
        elif seq is not None:
            writes.delete_seqs.append(seq)
        else:
            writes.unknown_deletes = True
    for key, entries in known.items():
        entries.sort(key=lambda entry: entry[0])
        keys[key].seqs = [seq for seq, _ in entries]
        keys[key].writes = [op for _, op in entries]
    return keys


def bookmark_violations(ops: Sequence[Op]) -> list[Violation]:
    """Bookmark reads never older than their bookmark; per process, never older than its
    own acknowledged writes (monotonic reads); no read of a value nobody wrote."""
    key_writes = _key_writes(ops)
    found: dict[tuple[str, str], list[tuple[str, list[Op]]]] = defaultdict(list)

    def version(key: str, value: Any) -> int | None:
        """The seq of the put a read's value came from (None: not known)."""
        writes = key_writes.get(key)
        if value is None:
            return None
        return writes.value_seq.get(_hashable(value)) if writes else None

    for op in ops:
        if not (op.ok and op.f == "get" and op.key.startswith("kv:")):
            continue
        writes = key_writes.get(op.key, _KeyWrites())
        value = _hashable(op.output)
        consistency = op.meta.get("consistency")
        # Any read (a STRONG one is judged by linearizability as well) of a value no put
        # wrote: no consistency level allows that.
        if op.output is not None and value not in writes.value_seq and consistency != "strong":
            found[("kv-unknown-value", op.key)].append(
                (
                    f"#{op.id} {op.process} read {op.output!r} ({consistency}), which no put wrote",
                    [op],
                )
            )
            continue
        min_seq, applied_seq = _seq(op, "min_seq"), _seq(op, "applied_seq")
        if consistency != "bookmark" or min_seq is None:
            continue
        if applied_seq is not None and applied_seq < min_seq:
            found[("bookmark-behind", op.key)].append(
                (
                    f"#{op.id} {op.process} read at applied_seq {applied_seq} < min_seq {min_seq}",
                    [op],
                )
            )
        newest = writes.newest_at_most(min_seq)
        if newest is None:
            continue
        newest_seq, newest_op = newest
        if op.output is None:
            newer_delete = writes.unknown_deletes or any(
                seq >= newest_seq for seq in writes.delete_seqs
            )
            stale = newest_op.f == "put" and not newer_delete
        else:
            seen_seq = writes.value_seq.get(value)
            stale = seen_seq is not None and seen_seq < newest_seq
        if stale:
            source = writes.value_op.get(value)
            window = sorted([op, newest_op, *([source] if source else [])], key=_by_invoke)
            found[("bookmark-stale", op.key)].append(
                (
                    f"#{op.id} {op.process} with min_seq {min_seq} read {op.output!r} "
                    f"(seq {version(op.key, op.output)}), older than #{newest_op.id}'s "
                    f"{newest_op.f} at seq {newest_seq}",
                    window,
                )
            )
    for (kind, key), instances in _monotonic(ops, key_writes).items():
        found[(kind, key)] += instances
    violations = []
    for (kind, key), instances in sorted(found.items()):
        message, window = instances[0]
        count = f"{len(instances)} reads; first: " if len(instances) > 1 else ""
        violations.append(Violation(kind, key, count + message, window))
    return violations


def _monotonic(
    ops: Sequence[Op], key_writes: dict[str, _KeyWrites]
) -> dict[tuple[str, str], list[tuple[str, list[Op]]]]:
    found: dict[tuple[str, str], list[tuple[str, list[Op]]]] = defaultdict(list)
    by_process: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        by_process[op.process].append(op)
    for process_ops in by_process.values():
        own_writes = sorted(
            (
                op
                for op in process_ops
                if op.ok and op.f in ("put", "delete") and _seq(op) is not None
            ),
            key=lambda op: (op.complete_s or 0.0, op.id),
        )
        done = 0
        highest: Op | None = None
        last_write: dict[str, Op] = {}
        for op in sorted(process_ops, key=_by_invoke):
            while done < len(own_writes) and (own_writes[done].complete_s or 0.0) <= op.invoke_s:
                write = own_writes[done]
                if highest is None or (_seq(write) or 0) > (_seq(highest) or 0):
                    highest = write
                last_write[write.key] = write
                done += 1
            if not (op.ok and op.f == "get" and op.meta.get("consistency") == "bookmark"):
                continue
            applied_seq = _seq(op, "applied_seq")
            if (
                highest is not None
                and applied_seq is not None
                and applied_seq < (_seq(highest) or 0)
            ):
                found[("monotonic-reads", op.key)].append(
                    (
                        f"#{op.id} {op.process} read at applied_seq {applied_seq}, below its "
                        f"own write #{highest.id} at seq {_seq(highest)}",
                        [highest, op],
                    )
                )
                continue
            mine = last_write.get(op.key)
            if mine is None:
                continue
            writes = key_writes.get(op.key, _KeyWrites())
            mine_seq = _seq(mine) or 0
            if op.output is None:
                older = mine.f == "put" and not (
                    writes.unknown_deletes or any(seq >= mine_seq for seq in writes.delete_seqs)
                )
            else:
                seen_seq = writes.value_seq.get(_hashable(op.output))
                older = seen_seq is not None and seen_seq < mine_seq
            if older:
                found[("monotonic-reads", op.key)].append(
                    (
                        f"#{op.id} {op.process} read {op.output!r}, older than its own "
                        f"acknowledged {mine.f} #{mine.id} at seq {mine_seq}",
                        [mine, op],
                    )
                )
    return found


# -- SQL ---------------------------------------------------------------------------------


def _tag_counts(tags: Iterable[Any]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for tag in tags:
        counts[str(tag)] += 1
    return counts


def sql_violations(
    ops: Sequence[Op], final_rows: list[str] | None
) -> tuple[list[Violation], int, int]:
    """The SQL table's guarantees over its ops and the primary's rows after heal; also
    (lost, duplicated). See the module's docstring for each kind."""
    if not ops:
        return [], 0, 0
    key = ops[0].key
    inserts = [op for op in ops if op.f == "insert"]
    reads = sorted((op for op in ops if op.f == "read" and op.ok), key=_by_invoke)
    # Tags an insert may have written (ok or indeterminate; a refused one never ran).
    writable = {str(op.input) for op in inserts if op.status != "fail"}
    # Acknowledged inserts by seq, for "at or below a bookmark".
    acked = sorted(
        (seq, op)
        for op in inserts
        if op.ok and (seq := bookmark_seq(op.meta.get("bookmark"))) is not None
    )
    acked_seqs = [seq for seq, _ in acked]
    acked_seq_of = {str(op.input): seq for seq, op in acked}
    found: dict[str, list[tuple[str, list[Op]]]] = defaultdict(list)
    duplicated_tags: dict[str, int] = {}

    for op in reads:
        tags = op.output if isinstance(op.output, list) else []
        counts = _tag_counts(tags)
        for tag, count in counts.items():
            if count > 1:
                duplicated_tags[tag] = max(duplicated_tags.get(tag, 0), count - 1)
                found["sql-duplicate"].append(
                    (f"#{op.id} {op.process} read {tag!r} {count} times", [op])
                )
        phantoms = sorted(tag for tag in counts if tag not in writable)
        if phantoms:
            found["sql-phantom-row"].append(
                (f"#{op.id} {op.process} read {_some(phantoms)}, which no insert wrote", [op])
            )
        sent = bookmark_seq(op.meta.get("min_bookmark")) or 0
        returned = bookmark_seq(op.meta.get("bookmark"))
        if returned is None or returned < sent:
            found["sql-bookmark-behind"].append(
                (
                    f"#{op.id} {op.process} sent bookmark {sent} and got back "
                    f"{op.meta.get('bookmark')!r}",
                    [op],
                )
            )
        covered = acked[: bisect.bisect_right(acked_seqs, sent)]
        missing = [write for _, write in covered if str(write.input) not in counts]
        if missing:
            found["sql-bookmark-stale"].append(
                (
                    f"#{op.id} {op.process} with bookmark {sent} misses "
                    f"{_plural(len(missing), 'acknowledged insert')} at or below it: "
                    f"{_inserts(missing)}",
                    sorted([*missing[:EXAMPLES_MAX], op], key=_by_invoke),
                )
            )
        if returned is not None:
            beyond = sorted(tag for tag in counts if acked_seq_of.get(tag, 0) > returned)
            if beyond:
                found["sql-bookmark-understated"].append(
                    (
                        f"#{op.id} {op.process} returned bookmark {returned} but holds "
                        f"{_some(beyond)}, written above it",
                        [op],
                    )
                )
    found_went_back = _sql_went_back(reads)
    if found_went_back:
        found["sql-session-went-back"] += found_went_back

    lost = 0
    if final_rows is None:
        if acked:
            found["final-state-missing"].append(
                (f"no rows read after heal, {_plural(len(acked), 'acknowledged insert')}", [])
            )
    else:
        final_counts = _tag_counts(final_rows)
        missing = [write for _, write in acked if str(write.input) not in final_counts]
        lost = len(missing)
        if missing:
            found["sql-lost"].append(
                (
                    f"{_plural(lost, 'acknowledged insert')} missing after heal: "
                    f"{_inserts(missing)}",
                    missing[:EXAMPLES_MAX],
                )
            )
        for tag, count in final_counts.items():
            if count > 1:
                duplicated_tags[tag] = max(duplicated_tags.get(tag, 0), count - 1)
                found["sql-duplicate"].append((f"{tag!r} is in {count} rows after heal", []))
        phantoms = sorted(tag for tag in final_counts if tag not in writable)
        if phantoms:
            found["sql-phantom-row"].append(
                (f"after heal: {_some(phantoms)}, which no insert wrote", [])
            )
    violations = []
    for kind, instances in found.items():
        message, window = instances[0]
        prefix = f"{len(instances)} instances; first: " if len(instances) > 1 else ""
        violations.append(Violation(kind, key, prefix + message, window))
    return violations, lost, sum(duplicated_tags.values())


def _inserts(ops: Sequence[Op]) -> str:
    return _first(
        ops,
        lambda op: (
            f"#{op.id} {op.process} insert {op.input!r} at {bookmark_seq(op.meta.get('bookmark'))}"
        ),
    )


def _some(tags: Sequence[str]) -> str:
    return _first(tags, repr)


def _sql_went_back(reads: Sequence[Op]) -> list[tuple[str, list[Op]]]:
    """Per process (one session each), a read missing a tag that a read of the session
    completed before it began returned."""
    found: list[tuple[str, list[Op]]] = []
    by_process: dict[str, list[Op]] = defaultdict(list)
    for op in reads:
        by_process[op.process].append(op)
    for process_reads in by_process.values():
        seen: set[str] = set()
        seen_by: dict[str, Op] = {}
        done = sorted(process_reads, key=lambda op: (op.complete_s or 0.0, op.id))
        index = 0
        for op in process_reads:  # in invoke order
            while index < len(done) and (done[index].complete_s or 0.0) <= op.invoke_s:
                earlier = done[index]
                for tag in earlier.output if isinstance(earlier.output, list) else []:
                    seen_by.setdefault(str(tag), earlier)
                    seen.add(str(tag))
                index += 1
            tags = {str(tag) for tag in (op.output if isinstance(op.output, list) else [])}
            gone = sorted(seen - tags)
            if gone:
                first = seen_by[gone[0]]
                found.append(
                    (
                        f"#{op.id} {op.process} misses {_some(gone)}, which its session's "
                        f"read #{first.id} returned before",
                        [first, op],
                    )
                )
    return found


# -- replicas ---------------------------------------------------------------------------


def replica_violations(dumps: dict[str, str], what: str = "KV") -> list[Violation]:
    """Every node's dump digest (of its KV store, or its SQL database) equals the origin's."""
    if not dumps:
        return []
    suffix = "" if what == "KV" else f" {what.lower()}"
    origin = dumps.get(ORIGIN_DUMP)
    if origin is None:
        return [
            Violation(
                "replica-diverged", ORIGIN_DUMP + suffix, f"no origin {what} dump to compare with"
            )
        ]
    return [
        Violation(
            "replica-diverged",
            node + suffix,
            f"{node}'s {what} dump {digest} differs from the origin's {origin}",
        )
        for node, digest in sorted(dumps.items())
        if node != ORIGIN_DUMP and digest != origin
    ]
