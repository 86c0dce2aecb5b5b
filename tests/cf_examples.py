"""Where the tests find Cloudflare's own Python examples (`../shared/cf-examples/`).

They are Cloudflare's code, read from beside the repository and never copied into it.
`EDGEPOP_CF_EXAMPLES` may point elsewhere. On a machine without them the tests that need
them are skipped, saying why (and a skip is a feature not shown working).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cf_examples import CF_EXAMPLES_DEFAULT, cf_examples_dir

__all__ = ["cf_example", "cf_examples_dir"]


def cf_example(name: str) -> Path:
    """One example's folder (e.g. "01-hello"), or skip the test with the reason."""
    folder = cf_examples_dir()
    if folder is None:
        pytest.skip(f"Cloudflare's examples are not here: {CF_EXAMPLES_DEFAULT}")
    return folder / name
