"""Running the real `edgectl` CLI from tests, as a user's shell runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

# Generous: a probe of the whole default cluster, or a start under load, takes a while.
COMMAND_TIMEOUT_S = 120.0


def edgectl(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess; the caller checks the exit status."""
    return subprocess.run(
        [sys.executable, "-m", "edgectl", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


def edgectl_json(data_dir: Path, *args: str) -> Any:
    """The command's --json output (it must succeed)."""
    result = edgectl(data_dir, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
