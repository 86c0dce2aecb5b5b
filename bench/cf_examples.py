"""Where Cloudflare's own Python examples are (`../shared/cf-examples/`).

They are Cloudflare's code, read from beside the repository and never copied into it;
`EDGEPOP_CF_EXAMPLES` may point elsewhere. The tests and `make bench` both deploy them.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CF_EXAMPLES_ENV = "EDGEPOP_CF_EXAMPLES"
CF_EXAMPLES_DEFAULT = REPO.parent / "shared" / "cf-examples"


def cf_examples_dir() -> Path | None:
    given = os.environ.get(CF_EXAMPLES_ENV)
    folder = Path(given) if given else CF_EXAMPLES_DEFAULT
    return folder if folder.is_dir() else None
