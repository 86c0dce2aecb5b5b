"""The ports free_port picks from: the default range, and EDGEPOP_PORT_RANGE's."""

from __future__ import annotations

import pytest

from edgectl import launcher
from edgectl.launcher import PORT_RANGE_ENV, free_port, picked_port_range


def test_by_default_ports_are_picked_below_the_ephemeral_range() -> None:
    assert picked_port_range(None, 32768) == (20000, 32768)
    assert picked_port_range("", 40000) == (20000, 40000)


def test_a_set_range_is_used_as_given() -> None:
    assert picked_port_range("20000-26384", 32768) == (20000, 26384)


@pytest.mark.parametrize("setting", ["20000", "a-b", "30000-20000", "80-2000", "1-2-3"])
def test_a_malformed_range_is_refused_with_its_name(setting: str) -> None:
    with pytest.raises(ValueError, match=PORT_RANGE_ENV):
        picked_port_range(setting, 32768)


def test_free_port_stays_inside_the_set_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PORT_RANGE_ENV, "27000-28000")
    monkeypatch.setattr(launcher, "_handed_out", set())
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50
    assert all(27000 <= port < 28000 for port in ports)
