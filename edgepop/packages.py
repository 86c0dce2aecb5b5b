"""A worker's own Python packages: its `pyproject.toml`'s `project.dependencies`.

Each distinct dependency set gets one directory (`pip install --target`), named by a
hash of the set and the Python version, under `$EDGEPOP_WORKER_ENVS` (default
`~/.cache/edgepop/worker-envs`). `edgectl deploy` installs it before uploading, so a
package that cannot be had fails the deploy with pip's reason; each PoP installs it
again only if its machine lacks it (on one machine, every node finds it done). An
exclusive file lock makes concurrent installers of one set wait for the first, and a
marker file written last means "complete": a crash mid-install leaves nothing usable.

Wheels only (`--only-binary=:all:`): an install never runs a package's build code.

At load, the PoP appends the directory to `sys.path` (after the node's own packages).
A worker therefore imports its packages by name (`import fastapi`), while a package the
node itself runs on (aiohttp, grpcio, protobuf, PyYAML ...) stays the node's version:
one process cannot hold two versions of a module. The same holds between workers at one
PoP: the first to import a module decides its version.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ENVS_DIR_ENV = "EDGEPOP_WORKER_ENVS"
COMPLETE_MARKER = ".edgepop-complete"
INSTALL_TIMEOUT_S = 600.0
# The last lines of pip's output kept for an error message.
ERROR_LINES_MAX = 8


class PackageError(Exception):
    """A worker's packages could not be installed (the message carries pip's reason)."""


def envs_root() -> Path:
    configured = os.environ.get(ENVS_DIR_ENV)
    if configured:
        return Path(configured)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgepop" / "worker-envs"


def env_key(dependencies: Sequence[str]) -> str:
    """One name per (Python version, dependency set): order and duplicates do not matter."""
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    digest = hashlib.sha256("\n".join(sorted(set(dependencies))).encode()).hexdigest()[:20]
    return f"{python}-{digest}"


def env_dir(dependencies: Sequence[str], root: Path | None = None) -> Path:
    return (root or envs_root()) / env_key(dependencies)


def is_installed(dependencies: Sequence[str], root: Path | None = None) -> bool:
    return (env_dir(dependencies, root) / COMPLETE_MARKER).is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(dependencies: Sequence[str], root: Path | None = None) -> Path:
    """The directory holding `dependencies`, installed now unless already complete.

    Blocking (pip runs in a subprocess); raises PackageError with pip's reason.
    """
    target = env_dir(dependencies, root)
    if (target / COMPLETE_MARKER).is_file():
        return target
    with _locked(target.with_name(target.name + ".lock")):
        if (target / COMPLETE_MARKER).is_file():
            return target  # another process installed it while we waited
        staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)  # an install that never completed
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--target",
            str(staging),
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
            "--no-warn-script-location",
            "--quiet",
            *dependencies,
        ]
        try:
            finished = subprocess.run(
                command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise PackageError(
                f"installing {', '.join(dependencies)} took over {INSTALL_TIMEOUT_S:.0f} s"
            ) from error
        if finished.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            lines = [line for line in finished.stderr.splitlines() if line.strip()]
            reason = "\n".join(lines[-ERROR_LINES_MAX:]) or f"pip exited {finished.returncode}"
            raise PackageError(f"cannot install {', '.join(dependencies)}:\n{reason}")
        (staging / COMPLETE_MARKER).write_text("\n".join(dependencies) + "\n")
        staging.rename(target)
    return target


async def ensure_installed(dependencies: Sequence[str], root: Path | None = None) -> Path:
    """`install` without blocking the event loop."""
    return await asyncio.to_thread(install, dependencies, root)


def activate(directory: Path) -> None:
    """Make the packages in `directory` importable in this process (after its own)."""
    entry = str(directory)
    if entry not in sys.path:
        sys.path.append(entry)
        importlib.invalidate_caches()
