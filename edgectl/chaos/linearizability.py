"""Is a key's history linearizable? A Wing-Gong-Lowe search with memoisation, as porcupine.

A history is linearizable when every operation can be given one instant between its
invocation and its return such that, taken in the order of those instants, the
operations are a legal run of a sequential model (a counter, a register). This module
answers that per key, within a time budget, and on a violation gives a small window of
the history that shows it on its own, and the ops in it to blame.

The search (Wing & Gong, with Lowe's memoisation; porcupine's `checkSingle`):
- Calls and returns of the determinate ("ok") ops sit in one doubly linked list in time
  order (a call before a return at the same instant: intervals are closed). Any call
  before the first return still in the list may be linearized next; a linearized op's
  call and return leave the list in O(1) and come back in O(1) on backtracking. A
  configuration is (set of linearized ops as an int bitset, model state); one already
  explored is not explored again (porcupine's cache).
- Candidates are tried in a chosen order rather than list order, and three cuts prune
  without losing a linearization (each is argued where the search does it, `_search`):
  a legal read is placed at once with no alternative; a callable op that can never
  become legal (`Model.dead`: a counter below a value already passed, a register read
  whose write was overwritten) ends the configuration; a register write nobody reads
  (`Model.unobserved`) is placed at once, and all such values are one state. Writes are
  tried by the midpoint of their interval, the likeliest order. Together these keep
  linearizable histories from backtracking much: measured on simulated histories of
  5,000 ops from 12-24 overlapping clients (tests/unit/chaos_sim.py), a check takes
  0.05-0.2 s.
- Indeterminate ops ("info", or never completed) may or may not have happened: their
  return is at +infinity and any output is accepted. They are not in the list. One that
  changes nothing anyone sees (a read, an unread write) is dropped. The rest are tried
  after every determinate candidate ("info last": the effect is deferred until an
  observation needs it), and ops with the same effect on every state (increments by the
  same amount) only in invocation order: exchanging two of them in a linearization gives
  another, so k pending increments cost k+1 configurations, not 2^k. A configuration that
  applied more indeterminate ops than an explored one that is otherwise the same is
  dominated by it. The search succeeds once every determinate op is placed.
- A deadline is read every few hundred steps: past it the key's verdict is "unknown".

Splitting a key's history at quiescent points (no op in flight) was considered and left
out: an indeterminate op stays in flight forever, and a dozen clients calling one object
back to back almost never leave a gap, so such points are rare in these runs; the cuts
above keep the search close to linear instead.

The window (on a violation). W(a, b) holds the ops invoked in [a, b] and those in flight
at a; ops in flight at a or still running at b are made indeterminate there. It is
checked from ANY_STATE, a symbolic state that the first observation fixes (a counter at
whatever value the first answer implies): the weakest "state consistent with the ops
before the window", which needs nothing about how they were linearized. This is sound:
if the whole history had a linearization L, the part of L after the last op that
returned before a, cut after the last window op that returned by b, holds only window
ops (the ones left out are indeterminate in W: they did not happen there) and runs from
some state, which ANY_STATE admits. So a non-linearizable W proves the history is not
linearizable, and every wider W(a' <= a, b' >= b) fails too (the same argument applied
to the wider window): the bisections below rely on that.
1. b is the return of the op the search blames where it got furthest (the op found dead
   there that returns first, else the op whose return blocked it).
2. a moves back from that op's invocation one, two, four ... invocations, then is
   bisected: the latest a whose W(a, b) fails.
3. If none fails, b moves to when everything running at b has returned (the op that
   contradicts the blamed one may still have been running), and step 2 is tried again.
4. If still none fails, the contradiction is with the initial state (a first increment
   returning 5), or b is too early: the shortest failing prefix P(b) (ops invoked by b,
   those running then indeterminate, from the initial state; failing is monotone in b)
   is found by bisection, and is the window unless a W ending at its b fails.
5. With a failing W(a, b), b is bisected down to the earliest return at which W(a, b)
   still fails (the blamed op can be a bystander, only dead because of an op before it):
   the op returning there is the failing op; then a is moved up again for that b.
6. The culprits, for the reader: the ops of the window that, made indeterminate one at a
   time, make it linearizable (a stale read and the write that overwrote what it
   returns; two increments that returned one value).
The window is given without the indeterminate ops the search drops. Narrowing has a
budget of its own (`budget_s` again); out of time, the best window proven so far stands
(else the key's whole history).
"""

from __future__ import annotations

import enum
import json
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, Protocol, cast

from edgectl.chaos.history import History, Op

Verdict = Literal["ok", "violation", "unknown"]
VERDICTS: tuple[Verdict, ...] = ("ok", "violation", "unknown")

# The deadline is read once per this many levels the search enters or leaves (each tries
# a dozen ops or so): often enough to stop within milliseconds of it, rarely enough not
# to show in the profile.
DEADLINE_CHECK_STEPS: Final = 256
# Window minimisation gives up on growing the window after this many starts; beyond
# that the prefix P(b) is the window.
WINDOW_STARTS_MAX: Final = 100_000
# Culprits are looked for (one search per op) only in windows up to this size.
CULPRIT_WINDOW_OPS_MAX: Final = 300


class _Marker(enum.Enum):
    ANY = "ANY_STATE"
    UNSEEN = "UNSEEN_STATE"

    def __repr__(self) -> str:
        return self.value


# A state that stands for every state: a window of the history is checked from it, and
# the window's first observation fixes the real state (models must accept it in `step`).
ANY_STATE: Final = _Marker.ANY
# A register holding a value that no read of the history returns: all such values are
# one state, since no op can tell them apart.
UNSEEN_STATE: Final = _Marker.UNSEEN


class Model(Protocol):
    """A sequential specification for one key's operations.

    States must be hashable and compare equal when they are the same state (they are
    cached with the set of linearized operations). `step` must accept ANY_STATE.
    """

    name: str

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def relevant(self, op: Op) -> bool:
        """Whether `op` is part of the linearizable history (e.g. only STRONG reads).

        Raises ValueError for an operation the model does not describe: dropping an
        unknown write would make the verdict meaningless."""
        ...

    def read_only(self, op: Op) -> bool:
        """Whether `op` changes nothing (an indeterminate read is then dropped)."""
        ...

    def effect_class(self, op: Op) -> Hashable | None:
        """Indeterminate ops with equal (non-None) classes have the same effect on every
        state, so the search linearizes them in invocation order only."""
        ...

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        """Apply `op` to `state`: (whether its output is legal there, the next state).

        An indeterminate op (`op.indeterminate`) accepts any output and applies its
        effect."""
        ...

    def dead(self, state: Hashable, op: Op, unapplied: Mapping[Hashable, int]) -> bool:
        """Whether determinate `op`, illegal in `state`, can never become legal in any
        state reached from it: `unapplied` counts the ops not linearized yet per effect
        class. The search abandons the configuration at once (False is always sound)."""
        ...

    def wanted(self, state: Hashable, op: Op) -> Hashable | None:
        """The effect class that would make `op` (a read, illegal in `state`) legal if
        applied next, or None: the search tries ops of that class first."""
        ...

    def specialise(self, ops: Sequence[Op]) -> Model:
        """This model for exactly `ops` (it may use which outputs occur, e.g. to merge
        states no op can tell apart); `self` when there is nothing to gain."""
        ...

    def unobserved(self, op: Op) -> bool:
        """Whether `op` overwrites the state with one no op can observe: in that state no
        read is legal, every write is, and a write's result does not depend on it. Then
        any linearization can move `op` to just before its next write (and an
        indeterminate such op may as well not happen), which the search uses to place it
        without trying alternatives."""
        ...

    def partition(self, ops: Sequence[Op]) -> list[list[Op]]:
        """Independent sub-histories (P-compositionality); [ops] when there is one."""
        ...


def increment_by(op: Op) -> int:
    """The amount of a Counter increment: `op.input` is None (1), an int, or {"by": n}."""
    raw = op.input
    if isinstance(raw, dict):
        raw = raw.get("by", 1)
    if raw is None:
        return 1
    return int(raw)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _freeze(value: Any) -> Hashable:
    """A hashable stand-in for a value read or written (values are strings in practice)."""
    try:
        hash(value)
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)
    return value  # type: ignore[no-any-return]


class CounterModel:
    """The `Counter` Durable Object: `increment` (by 1, or `{"by": n}`) returns the new
    value, `get` returns the value; it starts at 0."""

    name = "counter"
    functions = ("increment", "get")

    def init(self) -> Hashable:
        return 0

    def relevant(self, op: Op) -> bool:
        if op.f not in self.functions:
            raise ValueError(f"the counter model has no operation {op.f!r} (op {op.id})")
        return True

    def read_only(self, op: Op) -> bool:
        return op.f == "get"

    def effect_class(self, op: Op) -> Hashable | None:
        return ("increment", increment_by(op)) if op.f == "increment" else None

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        # A get is an increment by 0 that must return the value.
        by = increment_by(op) if op.f == "increment" else 0
        if op.indeterminate:
            return True, state if state is ANY_STATE else cast(int, state) + by
        if not _is_int(op.output):
            return False, state
        if state is ANY_STATE:
            return True, op.output
        after = cast(int, state) + by
        return op.output == after, after

    def dead(self, state: Hashable, op: Op, unapplied: Mapping[Hashable, int]) -> bool:
        if not _is_int(op.output):
            return True
        # Only when every increment adds: the value then never comes down again.
        if state is ANY_STATE or not all(
            cast(tuple[str, int], effect)[1] > 0 for effect in unapplied
        ):
            return False
        by = increment_by(op) if op.f == "increment" else 0
        return cast(int, state) + by > cast(int, op.output)

    def wanted(self, state: Hashable, op: Op) -> Hashable | None:
        # Increments are interchangeable in effect: none is more wanted than another.
        return None

    def specialise(self, ops: Sequence[Op]) -> Model:
        return self

    def unobserved(self, op: Op) -> bool:
        return False

    def partition(self, ops: Sequence[Op]) -> list[list[Op]]:
        return [list(ops)]


class RegisterModel:
    """One KV key: `put` (input: the value), `delete`, `get` (output: the value or None;
    it starts absent). Only STRONG reads (meta consistency "strong") are judged here:
    eventual and bookmark reads promise less and have their own checks."""

    name = "register"
    functions = ("put", "delete", "get")

    def __init__(self, read_values: frozenset[Hashable] | None = None) -> None:
        # Set by `specialise`: the values the history's determinate reads return.
        self.read_values = read_values

    def init(self) -> Hashable:
        return None

    def relevant(self, op: Op) -> bool:
        if op.f not in self.functions:
            raise ValueError(f"the register model has no operation {op.f!r} (op {op.id})")
        return op.f != "get" or op.meta.get("consistency") == "strong"

    def read_only(self, op: Op) -> bool:
        return op.f == "get"

    def effect_class(self, op: Op) -> Hashable | None:
        if op.f == "put":
            return ("put", _freeze(op.input))
        return ("delete",) if op.f == "delete" else None

    def step(self, state: Hashable, op: Op) -> tuple[bool, Hashable]:
        if op.f in ("put", "delete"):
            written = _freeze(op.input) if op.f == "put" else None
            if self.read_values is not None and written not in self.read_values:
                return True, UNSEEN_STATE
            return True, written
        if op.indeterminate:
            return True, state
        seen = _freeze(op.output)
        if state is ANY_STATE:
            return True, seen
        return seen == state, state

    def dead(self, state: Hashable, op: Op, unapplied: Mapping[Hashable, int]) -> bool:
        # A read of v can only become legal again if an op writing v is still to come.
        return state is not ANY_STATE and unapplied.get(self.wanted(state, op), 0) == 0

    def wanted(self, state: Hashable, op: Op) -> Hashable | None:
        seen = _freeze(op.output)
        return ("delete",) if seen is None else ("put", seen)

    def specialise(self, ops: Sequence[Op]) -> Model:
        return RegisterModel(
            frozenset(
                _freeze(op.output) for op in ops if op.f == "get" and _return_s(op) < math.inf
            )
        )

    def unobserved(self, op: Op) -> bool:
        if self.read_values is None or op.f not in ("put", "delete"):
            return False
        return (_freeze(op.input) if op.f == "put" else None) not in self.read_values

    def partition(self, ops: Sequence[Op]) -> list[list[Op]]:
        return [list(ops)]


def model_for_key(key: str) -> Model | None:
    """The model the runner's keys use: Durable Objects are Counters, KV keys registers."""
    if key.startswith("do:"):
        return CounterModel()
    if key.startswith("kv:"):
        return RegisterModel()
    return None


@dataclass
class LinearizabilityResult:
    """The verdict for one key, and on a violation the window that shows it."""

    key: str
    model: str
    verdict: Verdict
    ops_checked: int  # relevant, not failed
    elapsed_s: float
    steps: int = 0  # model steps tried, window minimisation included
    # The op whose return makes the window fail (the one that "cannot be placed").
    failing_op: Op | None = None
    # Ops of the window, by invocation; those in flight at its edges count as
    # indeterminate there. `window_from_start`: the window is a prefix of the history,
    # checked from where the whole check started (else from ANY_STATE).
    window: list[Op] = field(default_factory=list)
    window_start_s: float | None = None
    window_end_s: float | None = None
    window_from_start: bool = False
    # Ops of the window it needs: made indeterminate, any one of them would make the
    # window linearizable (empty when the window was too large to find out).
    culprits: list[Op] = field(default_factory=list)
    detail: str = ""


# -- the search -------------------------------------------------------------------------


@dataclass
class _Prepared:
    """One (sub-)history as the search wants it: determinate ops for the linked list of
    calls and returns, indeterminate ones in classes of interchangeable effects."""

    model: Model  # specialised to these ops
    det: list[Op]
    det_return_s: list[float]
    det_read_only: list[bool]
    det_unobserved: list[bool]
    det_effect: list[Hashable | None]
    info: list[Op]
    info_call_s: list[float]
    info_effect: list[Hashable | None]
    class_members: list[list[int]]  # info ops per class, by invocation


def _return_s(op: Op) -> float:
    # An "ok" op with no completion time cannot be placed: it is treated as indeterminate.
    if op.indeterminate or op.complete_s is None:
        return math.inf
    return op.complete_s


def _prepare(model: Model, ops: Sequence[Op]) -> _Prepared:
    model = model.specialise(ops)
    ordered = sorted(ops, key=_by_invoke)
    det = [op for op in ordered if _return_s(op) < math.inf]
    info: list[Op] = []
    class_index: dict[Hashable, int] = {}
    class_members: list[list[int]] = []
    for op in ordered:
        if _return_s(op) < math.inf or model.read_only(op) or model.unobserved(op):
            continue  # changes nothing anyone sees: as good as never happening
        effect = model.effect_class(op)
        # An op without a class is interchangeable with nothing: a class of its own.
        label: Hashable = effect if effect is not None else ("op", op.id)
        if label not in class_index:
            class_index[label] = len(class_members)
            class_members.append([])
        class_members[class_index[label]].append(len(info))
        info.append(op if op.indeterminate else replace(op, status="info"))
    return _Prepared(
        model=model,
        det=det,
        det_return_s=[_return_s(op) for op in det],
        det_read_only=[model.read_only(op) for op in det],
        det_unobserved=[model.unobserved(op) for op in det],
        det_effect=[None if model.read_only(op) else model.effect_class(op) for op in det],
        info=info,
        info_call_s=[op.invoke_s for op in info],
        info_effect=[model.effect_class(op) for op in info],
        class_members=class_members,
    )


@dataclass
class _Outcome:
    verdict: Verdict
    steps: int
    # The op to blame where the search got furthest: at the latest "first pending
    # return" of any configuration, the op found dead there, else that return's op.
    frontier: Op | None = None


def _search(prepared: _Prepared, start: Hashable, deadline: float) -> _Outcome:
    """Is there a linearization of `prepared` from `start`? (porcupine's checkSingle, as
    an explicit depth-first search over levels, each with its candidates in order.)

    Beyond porcupine, all sound:
    - A legal read that leaves the state as it is (not one from ANY_STATE, which picks
      a state) is linearized at once with no alternative: it changes nothing and is
      callable, so any linearization from here can be reordered to put it first.
    - A callable op that is illegal now and `model.dead` says can never become legal ends
      the configuration: nothing after it can place that op.
    - When no read is legal, a callable unobserved op (`Model.unobserved`) is placed
      next with no alternative: any linearization from here starts with a write, and
      can move the op to just before it.
    - Determinate candidates are tried by the midpoint of their interval (the likeliest
      order, so linearizable histories rarely backtrack), indeterminate ones last.
    - A configuration that applied more indeterminate ops than an explored one with the
      same determinate ops and state is dominated by it (see `fresh`).
    """
    det = prepared.det
    n = len(det)
    if n == 0:
        return _Outcome("ok", 0)
    # Nodes: call of op i is i, its return n + i; the head is 2n; -1 ends the list.
    events = sorted(
        [(op.invoke_s, 0, index) for index, op in enumerate(det)]
        + [(prepared.det_return_s[index], 1, n + index) for index in range(n)]
    )
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    position = [0] * (2 * n)
    previous = head
    for rank, (_, _, node) in enumerate(events):
        nxt[previous] = node
        prv[node] = previous
        position[node] = rank
        previous = node

    det_return_s = prepared.det_return_s
    midpoint = [(op.invoke_s + det_return_s[index]) / 2 for index, op in enumerate(det)]
    model = prepared.model
    read_only = prepared.det_read_only
    unobserved = prepared.det_unobserved
    det_effect = prepared.det_effect
    info = prepared.info
    info_call_s = prepared.info_call_s
    info_effect = prepared.info_effect
    members = prepared.class_members
    classes = range(len(members))
    linearized_in_class = [0] * len(members)
    unapplied: dict[Hashable, int] = {}
    for effect in (*det_effect, *info_effect):
        if effect is not None:
            unapplied[effect] = unapplied.get(effect, 0) + 1
    step = model.step
    dead = model.dead
    wanted_by = model.wanted

    # Explored configurations: (determinate bitset, state) -> the indeterminate sets it
    # was explored with. One that applied a superset of an explored set is dominated:
    # whatever it can still do, the other can too (apply those ops later, or not).
    cache: dict[tuple[int, Hashable], list[int]] = {}

    def fresh(config: tuple[int, Hashable], applied_after: int) -> bool:
        """Record the configuration; False when it (or one dominating it) was explored."""
        explored = cache.get(config)
        if explored is None:
            cache[config] = [applied_after]
            return True
        for earlier in explored:
            if earlier | applied_after == applied_after:
                return False
        explored.append(applied_after)
        return True

    state = start
    linearized = 0  # determinate ops linearized, as a bitset
    applied = 0  # indeterminate ops linearized, as a bitset
    left = n
    frontier = -1  # event position of the furthest first pending return
    blamed = 0  # the determinate op to blame there
    blamed_dead = False
    steps = 0

    def expand() -> list[tuple[int, Hashable]]:
        """The candidates at the current configuration, best first: (op, state after),
        op >= 0 a determinate op, op < 0 the indeterminate class -op - 1."""
        nonlocal frontier, blamed, blamed_dead, steps
        writes: list[tuple[bool, float, int, Hashable]] = []
        wanted: set[Hashable] = set()
        overwrites: list[tuple[bool, float, int, Hashable]] = []
        reads_legal = False
        node = nxt[head]
        while node < n:  # calls up to the first return (there is one while left > 0)
            op = det[node]
            steps += 1
            legal, after = step(state, op)
            if legal:
                if read_only[node]:
                    if after == state:
                        return [(node, after)]
                    # From ANY_STATE a read picks the state: a choice like a write's.
                    reads_legal = True
                    writes.append((False, midpoint[node], node, after))
                elif unobserved[node]:
                    overwrites.append((False, midpoint[node], node, after))
                else:
                    writes.append((False, midpoint[node], node, after))
            elif dead(state, op, unapplied):
                # Nothing from here places this op: it is the one to blame, or, of the
                # callable ops dead here, the one returning first (the tightest window).
                first_return = node
                while first_return < n:
                    first_return = nxt[first_return]
                reached = position[first_return]
                if reached > frontier:
                    earliest = node
                    other = nxt[node]
                    while other < n:
                        if det_return_s[other] < det_return_s[earliest] and (
                            not step(state, det[other])[0] and dead(state, det[other], unapplied)
                        ):
                            earliest = other
                        other = nxt[other]
                    frontier, blamed, blamed_dead = reached, earliest, True
                return []
            elif read_only[node]:
                wanted.add(wanted_by(state, op))
            node = nxt[node]
        # An op that blocks a configuration outranks one found dead as far: a dead
        # op may be dead only because of a wrong choice before it.
        if position[node] > frontier or (position[node] == frontier and blamed_dead):
            frontier, blamed, blamed_dead = position[node], node - n, False
        if overwrites:
            if not reads_legal:
                return [(overwrites[0][2], overwrites[0][3])]
            writes += overwrites
        if wanted:
            # Writes a waiting read needs go first (False sorts before True).
            writes = [
                (det_effect[index] not in wanted, middle, index, after)
                for _, middle, index, after in writes
            ]
        writes.sort(key=lambda write: (write[0], write[1]))
        chosen: list[tuple[int, Hashable]] = [(index, after) for _, _, index, after in writes]
        # Indeterminate ops invoked before that return: the next of each class; one a
        # waiting read needs goes first of all.
        blocking_s = det_return_s[node - n]
        for cls in classes:
            index_in_class = linearized_in_class[cls]
            if index_in_class < len(members[cls]):
                candidate = members[cls][index_in_class]
                if info_call_s[candidate] <= blocking_s:
                    steps += 1
                    legal, after = step(state, info[candidate])
                    if legal:
                        if wanted and info_effect[candidate] in wanted:
                            chosen.insert(0, (-cls - 1, after))
                        else:
                            chosen.append((-cls - 1, after))
        return chosen

    # One entry per level below the current one: its candidates, the next to try, the
    # configuration there and the candidate taken from it.
    path: list[tuple[list[tuple[int, Hashable]], int, Hashable, int, int, int]] = []
    candidates = expand()
    tried = 0
    checks = 0
    while True:
        checks += 1
        if checks % DEADLINE_CHECK_STEPS == 0 and time.perf_counter() > deadline:
            return _Outcome("unknown", steps, det[blamed])
        advanced = False
        while tried < len(candidates):
            what, after = candidates[tried]
            tried += 1
            if what >= 0:
                bits, applied_after = linearized | (1 << what), applied
            else:
                cls = -what - 1
                bits = linearized
                applied_after = applied | (1 << members[cls][linearized_in_class[cls]])
            if not fresh((bits, after), applied_after):
                continue
            path.append((candidates, tried, state, linearized, applied, what))
            state, linearized, applied = after, bits, applied_after
            if what >= 0:
                effect = det_effect[what]
                node = what
                for removed in (node, node + n):  # lift the call and the return
                    before, following = prv[removed], nxt[removed]
                    nxt[before] = following
                    if following != -1:
                        prv[following] = before
                left -= 1
                if left == 0:
                    return _Outcome("ok", steps)
            else:
                effect = info_effect[members[cls][linearized_in_class[cls]]]
                linearized_in_class[cls] += 1
            if effect is not None:
                unapplied[effect] -= 1
            advanced = True
            break
        if advanced:
            candidates, tried = expand(), 0
            continue
        if not path:
            return _Outcome("violation", steps, det[blamed])
        candidates, tried, state, linearized, applied, what = path.pop()
        if what >= 0:
            effect = det_effect[what]
            node = what
            for restored in (node + n, node):  # unlift, in reverse
                before, following = prv[restored], nxt[restored]
                nxt[before] = restored
                if following != -1:
                    prv[following] = restored
            left += 1
        else:
            cls = -what - 1
            linearized_in_class[cls] -= 1
            effect = info_effect[members[cls][linearized_in_class[cls]]]
        if effect is not None:
            unapplied[effect] += 1


# -- windows ----------------------------------------------------------------------------


def _relaxed(op: Op) -> Op:
    return op if op.indeterminate else replace(op, status="info")


def _prefix(ops: Sequence[Op], end_s: float) -> list[Op]:
    """P(end_s): ops invoked by end_s; those still running then are indeterminate."""
    return [op if _return_s(op) <= end_s else _relaxed(op) for op in ops if op.invoke_s <= end_s]


def _window(ops: Sequence[Op], start_s: float, end_s: float) -> list[Op]:
    """W(start_s, end_s): ops invoked in [start, end] and those in flight at start; ops in
    flight at either edge are indeterminate."""
    chosen: list[Op] = []
    for op in ops:
        if op.invoke_s > end_s:
            continue
        returned_s = _return_s(op)
        if op.invoke_s < start_s:
            if returned_s < start_s:
                continue
            chosen.append(_relaxed(op))
        elif returned_s > end_s:
            chosen.append(_relaxed(op))
        else:
            chosen.append(op)
    return chosen


@dataclass
class _WindowSearch:
    model: Model
    ops: list[Op]  # relevant ops of the partition, by invocation
    deadline: float
    initial: Hashable  # where prefixes start: the model's initial state, or ANY_STATE
    steps: int = 0

    def verdict(self, ops: Sequence[Op], start: Hashable) -> Verdict:
        outcome = _search(_prepare(self.model, ops), start, self.deadline)
        self.steps += outcome.steps
        return outcome.verdict

    def failing_end(self, failing: Op) -> tuple[Op, bool]:
        """The op whose return first makes the prefix non-linearizable, and whether that
        was proven (False: out of time, `failing` as the search's frontier named it)."""
        returns = sorted(
            (op for op in self.ops if _return_s(op) < math.inf),
            key=lambda op: (_return_s(op), op.id),
        )
        low = next(index for index, op in enumerate(returns) if op is failing)
        first = self.verdict(_prefix(self.ops, _return_s(failing)), self.initial)
        if first != "ok":
            return failing, first == "violation"
        # Smallest index in (low, len-1] whose prefix fails; the last one (the whole
        # history) is known to fail.
        high = len(returns) - 1
        while high - low > 1:
            middle = (low + high) // 2
            verdict = self.verdict(_prefix(self.ops, _return_s(returns[middle])), self.initial)
            if verdict == "unknown":
                return returns[high], False
            if verdict == "violation":
                high = middle
            else:
                low = middle
        return returns[high], True

    def culprits(self, result: LinearizabilityResult) -> list[Op]:
        """The determinate ops of the window that, made indeterminate one at a time,
        make it linearizable."""
        if len(result.window) > CULPRIT_WINDOW_OPS_MAX or result.window_end_s is None:
            return []
        start_s = result.window_start_s or 0.0
        end_s = result.window_end_s
        if result.window_from_start:
            window = _prefix(self.ops, end_s)
            start: Hashable = self.initial
        else:
            window = _window(self.ops, start_s, end_s)
            start = ANY_STATE
        found: list[Op] = []
        for index, op in enumerate(window):
            if op.indeterminate:
                continue
            trial = [*window[:index], _relaxed(op), *window[index + 1 :]]
            verdict = self.verdict(trial, start)
            if verdict == "unknown":
                return []
            if verdict == "ok":
                found.append(_originals(self.ops, [op])[0])
        return found

    def smallest_end(self, start_s: float, end_s: float) -> Op | None:
        """The op returning at the earliest end by which W(start_s, end) fails from
        ANY_STATE, given that W(start_s, end_s) fails (None: out of time)."""
        ends = sorted(
            (op for op in self.ops if start_s <= op.invoke_s and _return_s(op) <= end_s),
            key=lambda op: (_return_s(op), op.id),
        )
        # Only an op invoked in the window adds a constraint at its return; the last
        # one's return fails (it is end_s, or nothing changes after it).
        passing, failing = -1, len(ends) - 1
        while failing - passing > 1:
            middle = (passing + failing) // 2
            verdict = self.verdict(_window(self.ops, start_s, _return_s(ends[middle])), ANY_STATE)
            if verdict == "unknown":
                return None
            if verdict == "violation":
                failing = middle
            else:
                passing = middle
        return ends[failing] if ends else None

    def smallest_start(self, failing: Op, end_s: float | None = None) -> float | None:
        """The latest window start (at most `failing`'s invocation) whose W(start, end)
        fails from ANY_STATE, the end being `failing`'s return unless given (None: none
        does, or out of time before one was found)."""
        if end_s is None:
            end_s = _return_s(failing)
        starts = sorted({op.invoke_s for op in self.ops if op.invoke_s <= failing.invoke_s})
        starts.reverse()  # the failing op's own invocation first, then further back
        starts = starts[:WINDOW_STARTS_MAX]

        def fails(index: int) -> bool | None:
            verdict = self.verdict(_window(self.ops, starts[index], end_s), ANY_STATE)
            return None if verdict == "unknown" else verdict == "violation"

        # Gallop back (1, 2, 4 ... starts) to a failing window, then bisect.
        passing, probe = -1, 0
        while True:
            result = fails(probe)
            if result is None:
                return None
            if result:
                break
            passing = probe
            if probe == len(starts) - 1:
                return None
            probe = min(len(starts) - 1, 2 * probe + 1)
        failing_index = probe
        while failing_index - passing > 1:
            middle = (passing + failing_index) // 2
            result = fails(middle)
            if result is None:
                break
            if result:
                failing_index = middle
            else:
                passing = middle
        return starts[failing_index]


def _minimise(
    result: LinearizabilityResult,
    model: Model,
    ops: list[Op],
    frontier: Op,
    deadline: float,
    initial: Hashable,
) -> int:
    """Fill `result`'s failing op, window and culprits; returns the steps spent."""
    search = _WindowSearch(model, ops, deadline, initial)
    _narrow(result, search, ops, frontier)
    result.culprits = search.culprits(result)
    return search.steps


def _narrow(
    result: LinearizabilityResult, search: _WindowSearch, ops: list[Op], frontier: Op
) -> None:
    """The smallest window this module can prove non-linearizable cheaply."""
    deadline = search.deadline
    failing = frontier
    end_s = _return_s(failing)
    # Usually a window from ANY_STATE ending at the frontier's return already fails.
    start_s = search.smallest_start(failing)
    if start_s is None and time.perf_counter() < deadline:
        # What was still running then may be what contradicts it (a second increment
        # returning the same value): try windows ending once all of that has returned.
        settled_s = max(
            (_return_s(op) for op in ops if op.invoke_s <= end_s and _return_s(op) < math.inf),
            default=end_s,
        )
        if settled_s > end_s:
            start_s = search.smallest_start(failing, settled_s)
            if start_s is not None:
                end_s = settled_s
    proven = start_s is not None
    if not proven and time.perf_counter() < deadline:
        # None does: the contradiction is with the initial state, or the frontier stopped
        # short of the op to blame. The shortest failing prefix settles both.
        failing, proven = search.failing_end(frontier)
        end_s = _return_s(failing)
        if proven and failing is not frontier:
            start_s = search.smallest_start(failing)
    if start_s is not None and time.perf_counter() < deadline:
        # The frontier may be a bystander that was only dead because an op before it
        # could not be placed: the earliest end at which the window still fails names
        # the op whose return breaks it. Then the latest start for that end.
        tightened = search.smallest_end(start_s, end_s)
        if tightened is not None:
            tighter_start_s = search.smallest_start(tightened)
            if tighter_start_s is not None:
                failing, start_s, end_s = tightened, tighter_start_s, _return_s(tightened)
    result.failing_op = failing
    if start_s is not None:
        result.window = _shown(search.model, ops, _window(ops, start_s, end_s))
        result.window_start_s, result.window_end_s = start_s, end_s
    elif proven:
        result.window = _shown(search.model, ops, _prefix(ops, end_s))
        result.window_start_s, result.window_end_s = 0.0, end_s
        result.window_from_start = True
    else:
        result.window = list(ops)
        result.window_start_s = min((op.invoke_s for op in ops), default=0.0)
        result.window_end_s = max((op.complete_s or op.invoke_s for op in ops), default=0.0)
        result.window_from_start = True
        result.detail += "; the window could not be narrowed within the budget"


def _shown(model: Model, ops: Sequence[Op], window: Sequence[Op]) -> list[Op]:
    """The recorded ops of a window that its proof uses, by invocation: without the
    indeterminate ones the search drops as changing nothing anyone sees."""
    prepared = _prepare(model, window)
    used = {op.id for op in (*prepared.det, *prepared.info)}
    return sorted(_originals(ops, [op for op in window if op.id in used]), key=_by_invoke)


def _by_invoke(op: Op) -> tuple[float, int]:
    return (op.invoke_s, op.id)


def _originals(ops: Sequence[Op], chosen: Sequence[Op]) -> list[Op]:
    """The recorded ops behind a window's (possibly relaxed) copies."""
    by_id = {op.id: op for op in ops}
    return [by_id.get(op.id, op) for op in chosen]


# -- entry points -----------------------------------------------------------------------


def check_operations(
    ops: Sequence[Op],
    model: Model,
    *,
    budget_s: float = 5.0,
    key: str = "",
    from_any_state: bool = False,
) -> LinearizabilityResult:
    """Judge one key's ops against `model` within `budget_s` (another `budget_s` at most
    goes to narrowing the window of a violation). Failed ops are dropped.

    `from_any_state`: start from ANY_STATE instead of the initial state (a part of a
    history, as its windows are checked)."""
    started = time.perf_counter()
    deadline = started + budget_s
    relevant = [op for op in ops if op.status != "fail" and model.relevant(op)]
    result = LinearizabilityResult(key, model.name, "ok", len(relevant), 0.0)
    unknown = False
    for part in model.partition(relevant):
        start = ANY_STATE if from_any_state else model.init()
        outcome = _search(_prepare(model, part), start, deadline)
        result.steps += outcome.steps
        if outcome.verdict == "unknown":
            unknown = True
            continue
        if outcome.verdict == "violation":
            assert outcome.frontier is not None
            result.verdict = "violation"
            result.elapsed_s = time.perf_counter() - started
            ordered = sorted(part, key=_by_invoke)
            # Narrowing the window has a budget of its own, as long as the search's.
            window_deadline = time.perf_counter() + budget_s
            result.steps += _minimise(
                result, model, ordered, outcome.frontier, window_deadline, start
            )
            failing = result.failing_op
            assert failing is not None
            result.detail = (
                f"op {failing.id} ({failing.process} {failing.f} -> {failing.output!r}) "
                f"cannot be placed: the {len(result.window)} ops of the window have no "
                f"legal order" + result.detail
            )
            break
    else:
        if unknown:
            result.verdict = "unknown"
            result.detail = f"not decided within the budget of {budget_s:g} s"
    result.elapsed_s = time.perf_counter() - started
    return result


def check_history(
    history: History,
    model_for: Callable[[str], Model | None] = model_for_key,
    *,
    budget_s: float = 5.0,
) -> dict[str, LinearizabilityResult]:
    """Every key of `history` that `model_for` gives a model, judged on its own."""
    results: dict[str, LinearizabilityResult] = {}
    for key, ops in sorted(history.by_key().items()):
        model = model_for(key)
        if model is not None:
            results[key] = check_operations(ops, model, budget_s=budget_s, key=key)
    return results
