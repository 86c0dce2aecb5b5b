"""A disk that refuses to sync, for fault runs and tests (`diskfault.c` beside this file).

`build` compiles the shim with gcc into a directory; `environment` gives the variables
that load it into every node of a cluster started afterwards (the launcher hands its
environment to every node); `DiskFaults` turns the fault on and off live: while its flag
file exists, the nodes' fsync and fdatasync of the files it names (by a part of their
path, such as a node's data dir) fail with EIO.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("diskfault.c")
LIBRARY_NAME = "diskfault.so"
FLAG_ENV = "EDGEPOP_DISKFAULT_FLAG"
BUILD_TIMEOUT_S = 60.0


class DiskFaultUnavailable(Exception):
    """The shim cannot be built here (no gcc, or it failed): disk faults are skipped."""


def build(directory: Path) -> Path:
    """Compile the shim into `directory`; its path. DiskFaultUnavailable says why not."""
    compiler = shutil.which("gcc")
    if compiler is None:
        raise DiskFaultUnavailable("disk faults need gcc to build their LD_PRELOAD shim")
    library = directory / LIBRARY_NAME
    command = [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror"]
    command += ["-o", str(library), str(SOURCE), "-ldl"]
    built = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=BUILD_TIMEOUT_S
    )
    if built.returncode != 0:
        raise DiskFaultUnavailable(f"building the disk-fault shim failed:\n{built.stderr}")
    return library


def environment(library: Path, flag: Path) -> dict[str, str]:
    """LD_PRELOAD (ahead of any preload already set) and the flag's path."""
    preload = " ".join(part for part in (str(library), os.environ.get("LD_PRELOAD", "")) if part)
    return {"LD_PRELOAD": preload, FLAG_ENV: str(flag)}


class DiskFaults:
    """The flag file of a cluster's shim: which files' syncs the disk refuses now."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag
        self._refused: dict[str, int] = {}

    @property
    def refused(self) -> list[str]:
        return sorted(self._refused)

    def refuse(self, *parts: str) -> None:
        """Refuse syncs of every file whose path contains one of `parts` (none: every
        file), besides what is refused already."""
        for part in parts or ("",):
            self._refused[part] = self._refused.get(part, 0) + 1
        self._write()

    def allow(self, *parts: str) -> None:
        """End a `refuse` of the same parts (none: every refusal)."""
        if not parts:
            self._refused.clear()
        for part in parts:
            left = self._refused.get(part, 0) - 1
            if left > 0:
                self._refused[part] = left
            else:
                self._refused.pop(part, None)
        self._write()

    def _write(self) -> None:
        if not self._refused:
            self.flag.unlink(missing_ok=True)
            return
        # "" (every file) is an empty flag; else one part per line. Written whole, then
        # renamed: a sync never reads half a list.
        text = "" if "" in self._refused else "\n".join(self._refused) + "\n"
        staged = self.flag.with_name(self.flag.name + ".tmp")
        staged.write_text(text)
        os.replace(staged, self.flag)
