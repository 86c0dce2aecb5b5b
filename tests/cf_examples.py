"""Where the tests find Cloudflare's own Python examples (`../shared/cf-examples/`).

They are Cloudflare's code, read from beside the repository and never copied into it.
`EDGEPOP_CF_EXAMPLES` may point elsewhere. On a machine without them the tests that need
them are skipped, saying why (and a skip is a feature not shown working).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CF_EXAMPLES_ENV = "EDGEPOP_CF_EXAMPLES"


def cf_examples_dir() -> Path | None:
    given = os.environ.get(CF_EXAMPLES_ENV)
    folder = Path(given) if given else REPO.parent / "shared" / "cf-examples"
    return folder if folder.is_dir() else None


def cf_example(name: str) -> Path:
    """One example's folder (e.g. "01-hello"), or skip the test with the reason."""
    folder = cf_examples_dir()
    if folder is None:
        pytest.skip(f"Cloudflare's examples are not here: {REPO.parent / 'shared/cf-examples'}")
    return folder / name
