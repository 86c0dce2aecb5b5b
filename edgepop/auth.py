"""The cluster token: made at first start, kept 0600 in the data dir, sent as a bearer token."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE_NAME = "cluster.token"
TOKEN_BYTES = 32


def ensure_token(path: Path) -> str:
    """Read the token at `path`, creating it (mode 0600, atomically) when missing."""
    if path.exists():
        return read_token(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token + "\n")
    try:
        # link() fails if another process made the token first: then theirs wins.
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return read_token(path)


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path}: the cluster token file is empty")
    return token
