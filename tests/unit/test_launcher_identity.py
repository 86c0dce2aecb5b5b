"""Naming a launcher process for good (pid + start time), and waiting for its end.

Real child processes, no sockets: `sleep` stands in for a launcher.
"""

from __future__ import annotations

import asyncio
import subprocess

from edgepop.lifecycle import launcher_alive, launcher_spec, process_start_time, wait_launcher_gone


def test_spec_of_a_running_process_names_it_alive() -> None:
    spec = launcher_spec()
    pid, started = spec.split(":")
    assert int(pid) > 0 and int(started) > 0
    assert launcher_alive(spec)


def test_spec_with_the_same_pid_but_another_start_time_is_not_alive() -> None:
    pid, started = launcher_spec().split(":")
    assert not launcher_alive(f"{pid}:{int(started) + 1}")
    assert not launcher_alive("garbage")


def test_exited_unreaped_process_counts_as_gone() -> None:
    child = subprocess.Popen(["sleep", "0"])
    spec = launcher_spec(child.pid)
    try:
        # A zombie until reaped: it has exited all the same.
        asyncio.run(asyncio.wait_for(wait_launcher_gone(spec), timeout=10))
        assert process_start_time(child.pid) is None
        assert not launcher_alive(spec)
    finally:
        child.wait()


def test_wait_returns_when_the_launcher_is_killed_and_not_before() -> None:
    child = subprocess.Popen(["sleep", "60"])
    spec = launcher_spec(child.pid)

    async def scenario() -> None:
        waiting = asyncio.create_task(wait_launcher_gone(spec))
        # It is still running: the wait must not have returned.
        done, _ = await asyncio.wait({waiting}, timeout=0.2)
        assert not done
        child.kill()
        await asyncio.wait_for(waiting, timeout=10)

    try:
        asyncio.run(scenario())
    finally:
        child.kill()
        child.wait()
