"""Which event loop a node runs on (`edgepop.lifecycle.event_loop_factory`)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from edgepop.lifecycle import EVENT_LOOP_ENV, event_loop_factory


def _loop_type(monkeypatch: pytest.MonkeyPatch, choice: str | None) -> type:
    if choice is None:
        monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    else:
        monkeypatch.setenv(EVENT_LOOP_ENV, choice)
    loop = event_loop_factory()()
    try:
        return type(loop)
    finally:
        loop.close()


def test_nodes_run_on_uvloop_unless_told_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert issubclass(_loop_type(monkeypatch, None), uvloop.Loop)
    assert issubclass(_loop_type(monkeypatch, "uvloop"), uvloop.Loop)
    stdlib = _loop_type(monkeypatch, "asyncio")
    assert issubclass(stdlib, asyncio.BaseEventLoop) and not issubclass(stdlib, uvloop.Loop)


def test_an_unknown_loop_name_stops_the_node_saying_what_is_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "trio")
    with pytest.raises(SystemExit, match="uvloop or asyncio"):
        event_loop_factory()
