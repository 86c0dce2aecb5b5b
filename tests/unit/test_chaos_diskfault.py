"""edgectl.chaos.diskfault.DiskFaults: what its flag file says (no shim, no process)."""

from __future__ import annotations

from pathlib import Path

from edgectl.chaos.diskfault import DiskFaults


def test_the_flag_lists_what_is_refused_and_overlapping_refusals_end_one_at_a_time(
    tmp_path: Path,
) -> None:
    faults = DiskFaults(tmp_path / "flag")
    assert not faults.flag.exists()
    faults.refuse("/a/")
    faults.refuse("/b/")
    faults.refuse("/a/")  # a second fault on the same files
    assert faults.flag.read_text().splitlines() == ["/a/", "/b/"]
    faults.allow("/a/")
    assert faults.refused == ["/a/", "/b/"]  # the other /a/ fault still holds
    faults.allow("/a/")
    faults.allow("/b/")
    assert not faults.flag.exists() and faults.refused == []
    faults.refuse()  # every file: an empty flag
    assert faults.flag.read_text() == ""
    faults.refuse("/a/")
    assert faults.flag.read_text() == ""  # still every file
    faults.allow()
    assert not faults.flag.exists()
    assert not list(tmp_path.glob("*.tmp"))
