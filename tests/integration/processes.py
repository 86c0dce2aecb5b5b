"""What runs on this machine for a cluster, seen from outside edgectl: /proc, by PID."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def processes_holding(data_dir: Path) -> dict[int, str]:
    """Live processes whose command line names `data_dir` (nodes, forks of the zygote,
    the zygote): pid -> command line. Exited processes have an empty one."""
    found = {}
    needle = str(data_dir.resolve()).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if needle in cmdline:
                found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found
