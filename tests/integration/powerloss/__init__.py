"""A simulated power loss for a cluster on one machine: what was not synced is gone.

`kill -9` keeps the OS page cache, so a process crash cannot tell "acknowledged after
fsync" from "acknowledged before": every write the process made is still there for the
next one. A power loss keeps only what was made durable. This package simulates one, as
Jepsen does with LazyFS, for the LMDB data files of every process of a cluster:

- `build_shim` compiles `powerloss.c` (an LD_PRELOAD library, with gcc) into a temp dir;
  `run_under_shim` puts it in the environment the launcher hands every node (the zygote
  and spawned nodes inherit it at exec). In each process it records, beside every
  `data.mdb` under the cluster's dir, a shadow `data.mdb.synced`: the bytes that the
  process's fsync / fdatasync / O_DSYNC writes / msync made durable, and nothing else.
- `pull_the_plug` stops every process of the cluster at one instant (SIGSTOP to all,
  then SIGKILL to all: none sees another die and acts on it).
- `restore_synced_state` puts each shadow in place of its file; a file never synced
  disappears, as a never-synced new file may after a real power loss. The cluster can
  then be started again, under a new boot id (`EDGEPOP_TEST_BOOT_ID`), as after a reboot.

Why a libc shim and not a FUSE filesystem (LazyFS) or crash points inside LMDB: the shim
sees exactly the durability requests the processes make, whoever makes them (LMDB inside
py-lmdb's extension calls fsync, fdatasync and pwrite through libc, as Python's os.fsync
does), needs no kernel module, no /dev/fuse and no privileges on a fresh CI machine,
builds in well under a second, and costs one copy of a small file per sync rather than a
FUSE round trip on every read of memory-mapped LMDB pages on two shared cores. Crash
points inside LMDB would test LMDB, not whether our code asked for durability before it
answered. The shim's blind spots all err the strict way: a sync it cannot see (a raw
syscall) leaves the shadow older than the disk would be, so the test can only fail
spuriously, never pass wrongly. It does not model directory entries (a file synced once is
taken to exist), which LMDB's fixed file names do not need.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgectl.launcher import Cluster, cluster_processes, pid_alive
from tests.conftest import poll_until

SHIM_SOURCE = Path(__file__).with_name("powerloss.c")
SHIM_LIBRARY_NAME = "powerloss.so"
ROOT_ENV = "EDGEPOP_POWERLOSS_ROOT"
NAMES_ENV = "EDGEPOP_POWERLOSS_NAMES"
# LMDB's data file: every store of every role (origin, control plane, replicas, objects).
# lock.mdb is not durable state: the first process to open an environment after a reboot
# resets it.
WATCHED_NAMES = ("data.mdb",)
SHADOW_SUFFIX = ".synced"
PROCESSES_GONE_TIMEOUT_S = 10.0


def build_shim(directory: Path) -> Path:
    """Compile the shim into `directory` (gcc, warnings as errors); its path."""
    library = directory / SHIM_LIBRARY_NAME
    command = [
        "gcc",
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-o",
        str(library),
        str(SHIM_SOURCE),
        "-ldl",
        "-pthread",
    ]
    try:
        built = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise AssertionError(
            "the power-loss tests build their shim with gcc: install it"
        ) from error
    assert built.returncode == 0, f"{' '.join(command)} failed:\n{built.stderr}"
    return library


def shim_environment(library: Path, root: Path) -> dict[str, str]:
    """The variables that load the shim into a process and make it watch `root`."""
    preload = " ".join(part for part in (str(library), os.environ.get("LD_PRELOAD", "")) if part)
    return {
        "LD_PRELOAD": preload,
        ROOT_ENV: str(root.resolve()),
        NAMES_ENV: ",".join(WATCHED_NAMES),
    }


def run_under_shim(monkeypatch: pytest.MonkeyPatch, library: Path, root: Path) -> None:
    """Every process started from now on (until the test ends) runs under the shim.

    The launcher hands its own environment to the zygote and to spawned nodes, so setting
    it here, before `Cluster.up`, reaches every node; this process (pytest) already runs
    and is not affected.
    """
    for name, value in shim_environment(library, root).items():
        monkeypatch.setenv(name, value)


def pull_the_plug(cluster: Cluster) -> list[int]:
    """Stop every process of `cluster` at one instant, as a power loss would.

    All are frozen first (SIGSTOP), so no process sees another die and reacts (a PoP
    retrying, a standby taking over) in the microseconds between two kills; then all are
    killed. The launcher's zygote is reaped. Returns the pids that were stopped.
    """
    pids = set(cluster_processes(cluster.data_dir))
    for node in cluster.nodes.values():
        pids.update(cluster.pids_of(node.name))
    for signum in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
    poll_until(
        lambda: not any(pid_alive(pid) for pid in pids),
        timeout=PROCESSES_GONE_TIMEOUT_S,
        what="every process of the cluster gone",
    )
    cluster.down()  # nothing is left to stop: this reaps the zygote and forgets children
    return sorted(pids)


@dataclass(frozen=True)
class RestoredFile:
    """One watched file through the power loss."""

    path: Path
    bytes_before: int  # what the page cache held
    bytes_after: int  # what the disk kept (0: never synced, the file is gone)
    synced: bool  # whether anything of it had ever been made durable
    dropped: bool  # whether the power loss took anything from it


def restore_synced_state(root: Path) -> list[RestoredFile]:
    """Replace every watched file under `root` by what was made durable of it.

    Call it with every process of the cluster gone. A file never synced is removed; the
    shim's half-written staging files (a process killed mid-sync) are discarded, as is a
    shadow whose file was deleted.
    """
    for staging in root.rglob(f"*{SHADOW_SUFFIX}.tmp.*"):
        staging.unlink()
    restored: list[RestoredFile] = []
    for name in WATCHED_NAMES:
        for path in sorted(root.rglob(name)):
            shadow = path.with_name(path.name + SHADOW_SUFFIX)
            before = path.read_bytes()
            synced = shadow.exists()
            if synced:
                after = shadow.read_bytes()
                os.replace(shadow, path)
            else:
                after = b""
                path.unlink()
            restored.append(
                RestoredFile(
                    path=path,
                    bytes_before=len(before),
                    bytes_after=len(after),
                    synced=synced,
                    dropped=before != after,
                )
            )
        for orphan in root.rglob(name + SHADOW_SUFFIX):
            orphan.unlink()
    return restored


def describe(restored: list[RestoredFile], root: Path) -> str:
    """One line per file: what the power loss did to it."""
    lines = []
    for file in restored:
        what = (
            "never synced: gone"
            if not file.synced
            else ("lost its unsynced tail" if file.dropped else "fully synced")
        )
        lines.append(
            f"{file.path.relative_to(root)}: {file.bytes_before} B in the page cache,"
            f" {file.bytes_after} B durable ({what})"
        )
    return "\n".join(lines)
