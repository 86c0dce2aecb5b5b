"""EDGEPOP_RANDOM_SEED: the emulator's and the workers' draws replay for one seed."""

from __future__ import annotations

import random

import pytest

from edgepop import seeding
from edgepop.faults import LinkFault, crossing_delay_s
from edgepop.metrics import NodeMetrics
from edgepop.netem import Leg, NetworkEmulator
from edgepop.topology import default_topology

LOSSY = LinkFault("london", "us-east-1", loss=0.2)
JITTERY = LinkFault("tokyo", "us-east-1", delay_ms=50.0, jitter_ms=20.0)


def _draws(emulator: NetworkEmulator, count: int = 50) -> list[float]:
    leg = Leg("london", "us-east-1", 0.04)
    return [crossing_delay_s(leg.base_s, emulator.fault(leg), emulator.rng) for _ in range(count)]


def _emulator(monkeypatch: pytest.MonkeyPatch, seed: str | None) -> NetworkEmulator:
    if seed is None:
        monkeypatch.delenv(seeding.RANDOM_SEED_ENV, raising=False)
    else:
        monkeypatch.setenv(seeding.RANDOM_SEED_ENV, seed)
    return NetworkEmulator(default_topology(), "us-east-1", NodeMetrics("origin", "us-east-1"))


def test_one_seed_gives_the_same_loss_draws_whatever_was_drawn_before_the_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = _emulator(monkeypatch, "1234")
    first.set_faults([JITTERY])
    _draws(first, 17)  # an earlier test's draws
    first.set_faults([LOSSY])
    second = _emulator(monkeypatch, "1234")
    second.set_faults([LOSSY])
    assert _draws(first) == _draws(second)
    # The draws are real: some calls of 50 lose their first message at p = 0.2.
    assert any(draw > 0.04 for draw in _draws(second))


def test_the_same_table_pushed_again_does_not_restart_the_draws(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A topology push repeats the table (health changes): replaying the same draws
    again would correlate calls, so only a change restarts them."""
    emulator = _emulator(monkeypatch, "1234")
    emulator.set_faults([LOSSY])
    before = _draws(emulator)
    emulator.set_faults([LOSSY])
    assert _draws(emulator) != before


def test_another_seed_or_no_seed_draws_differently(monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = _emulator(monkeypatch, "1234")
    seeded.set_faults([LOSSY])
    other = _emulator(monkeypatch, "4321")
    other.set_faults([LOSSY])
    assert _draws(seeded) != _draws(other)
    unseeded = [_emulator(monkeypatch, None) for _ in range(2)]
    for emulator in unseeded:
        emulator.set_faults([LOSSY])
    assert _draws(unseeded[0]) != _draws(unseeded[1])


def test_workers_draws_restart_from_the_set_of_live_versions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(seeding.RANDOM_SEED_ENV, "99")
    state = random.getstate()  # this process's own draws, given back afterwards
    try:
        seeding.reseed_module("tokyo-2", ["b", "a"])
        first = [random.random() for _ in range(5)]
        seeding.reseed_module("tokyo-2", ["a", "b"])  # the order versions went live in
        assert [random.random() for _ in range(5)] == first
        seeding.reseed_module("tokyo-1", ["a", "b"])
        assert [random.random() for _ in range(5)] != first
    finally:
        random.setstate(state)
