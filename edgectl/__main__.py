"""`edgectl` / `python -m edgectl`: the command line (see edgectl.cli)."""

from __future__ import annotations

import sys

from edgectl.cli import main

if __name__ == "__main__":
    sys.exit(main())
