"""Worker bundles: reading a folder, the version hash, and its config.

Shared by `edgectl deploy` (reads and checks a folder), the control plane (checks and
stores versions) and PoPs (load them). The version is the SHA-256 of the bundle's files,
so deploying the same folder twice is one version, and a PoP can verify what it loads.

A bundle is configured by edgepop's `worker.yaml` (entry `worker.py`) or by Cloudflare's
wrangler config (`wrangler.jsonc`, `wrangler.json` or `wrangler.toml`, entry `main`), read
by `edgepop.wrangler` into the same `WorkerConfig`. edgepop's format:

    name: api-router
    routes: ["api.example.com/*"]          # [host]/path, a trailing * matches any rest
    kv_namespaces: {AUTH_CACHE: auth-cache} # binding -> KV namespace
    durable_objects: {LIMITER: RateLimiter} # binding -> class (built in, or in worker.py)
    vars: {ORDER_SERVICE_URL: "http://origin/api/v1"}
    secrets: {API_KEY: "..."}               # like vars, but never listed
    analytics: {ANALYTICS: checkout}        # binding -> dataset (write_data_point)
    limits: {cpu_ms: 50, subrequests: 50}
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from edge.v1 import workers_pb2
from edgepop.configfile import parse_yaml

CONFIG_FILE = "worker.yaml"
ENTRY_FILE = "worker.py"
WRANGLER_FILES = ("wrangler.jsonc", "wrangler.json", "wrangler.toml")
BUNDLE_FILE_BYTES_MAX = 1024 * 1024
BUNDLE_BYTES_MAX = 10 * 1024 * 1024
BUNDLE_FILES_MAX = 100
CPU_MS_DEFAULT = 50.0
CPU_MS_MAX = 30_000.0
SUBREQUESTS_DEFAULT = 50
SUBREQUESTS_MAX = 1000
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_BINDING_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATH_RE = re.compile(r"[A-Za-z0-9_\-./]+\.(py|yaml|json|jsonc|toml|html|txt)")
# Folders never deployed: tools' caches and installs (wrangler's, npm's, a venv's, git's).
SKIPPED_DIRS = frozenset(
    {"__pycache__", "node_modules", ".wrangler", ".venv", "venv", ".git", ".mypy_cache"}
)


class BundleError(ValueError):
    """A bundle or config that cannot be deployed; the message names the problem."""


@dataclass(frozen=True)
class Route:
    """`host/path*`: host empty = any host; `prefix` True when the path ends in `*`."""

    host: str
    path: str
    prefix: bool

    def matches(self, host: str, path: str) -> bool:
        if self.host and self.host != host:
            return False
        return path.startswith(self.path) if self.prefix else path == self.path

    @property
    def specificity(self) -> tuple[int, int, int]:
        return (1 if self.host else 0, 0 if self.prefix else 1, len(self.path))


@dataclass(frozen=True)
class WorkerConfig:
    name: str
    routes: tuple[Route, ...]
    route_patterns: tuple[str, ...]
    kv_namespaces: dict[str, str] = field(default_factory=dict)
    # binding -> SQL database name (wrangler's d1_databases).
    d1_databases: dict[str, str] = field(default_factory=dict)
    durable_objects: dict[str, str] = field(default_factory=dict)
    # Values are text in worker.yaml; a wrangler config's vars may be any JSON value.
    vars: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    analytics: dict[str, str] = field(default_factory=dict)
    cpu_ms: float = CPU_MS_DEFAULT
    subrequests: int = SUBREQUESTS_DEFAULT
    # The entry module's path in the bundle (wrangler's `main`).
    main: str = ENTRY_FILE
    # Durable Object classes whose migrations ask for SQLite storage (`new_sqlite_classes`).
    sqlite_classes: frozenset[str] = frozenset()
    # Cron schedules (wrangler's `triggers.crons`).
    crons: tuple[str, ...] = ()
    # Config fields read but without effect here, for the deployer to show.
    ignored: tuple[str, ...] = ()
    # The worker's own packages (pyproject.toml's project.dependencies; edgepop.packages).
    dependencies: tuple[str, ...] = ()


def parse_route(pattern: str) -> Route:
    if not isinstance(pattern, str) or not pattern:
        raise BundleError("routes: each route is a non-empty string")
    host, slash, path = pattern.partition("/")
    path = slash + path
    if not path:
        raise BundleError(f"routes: {pattern!r} has no path (use 'host/*' or '/path')")
    prefix = path.endswith("*")
    if "*" in path[:-1] or "*" in host:
        raise BundleError(f"routes: {pattern!r}: '*' is allowed only at the end of the path")
    return Route(host.lower(), path.rstrip("*"), prefix)


def parse_config(raw_yaml: bytes) -> WorkerConfig:
    """A worker.yaml, through its declared model (`edgepop.worker_yaml`)."""
    try:
        located = parse_yaml(raw_yaml, CONFIG_FILE)
    except yaml.YAMLError as error:
        raise BundleError(f"{CONFIG_FILE}: not valid YAML: {error}") from error
    from edgepop import worker_yaml  # pydantic loads only when a config is read

    return worker_yaml.read(located)


def check_bundle(bundle: workers_pb2.WorkerBundle) -> WorkerConfig:
    """Validate a bundle's files and config; returns the config."""
    paths = [file.path for file in bundle.files]
    if len(paths) > BUNDLE_FILES_MAX:
        raise BundleError(f"a bundle holds at most {BUNDLE_FILES_MAX} files")
    if len(set(paths)) != len(paths):
        raise BundleError("a bundle must not list a file twice")
    total = 0
    for file in bundle.files:
        if not _PATH_RE.fullmatch(file.path) or ".." in file.path.split("/"):
            raise BundleError(f"bundle file {file.path!r}: not an allowed path")
        if len(file.content) > BUNDLE_FILE_BYTES_MAX:
            raise BundleError(f"bundle file {file.path!r} is over {BUNDLE_FILE_BYTES_MAX} bytes")
        total += len(file.content)
    if total > BUNDLE_BYTES_MAX:
        raise BundleError(f"the bundle is over {BUNDLE_BYTES_MAX} bytes")
    files = {file.path: bytes(file.content) for file in bundle.files}
    wrangler = [path for path in WRANGLER_FILES if path in files]
    if CONFIG_FILE in files and wrangler:
        raise BundleError(f"a bundle has one config: found both {CONFIG_FILE} and {wrangler[0]}")
    if wrangler:
        from edgepop import wrangler as wrangler_config  # its parsers load only when needed

        if len(wrangler) > 1:
            raise BundleError(f"a bundle has one config: found {' and '.join(wrangler)}")
        config = wrangler_config.parse(wrangler[0], files[wrangler[0]])
        dependencies = wrangler_config.dependencies_of(files.get(wrangler_config.PYPROJECT_FILE))
        config = replace(config, dependencies=dependencies)
    elif CONFIG_FILE in files:
        config = parse_config(files[CONFIG_FILE])
    else:
        raise BundleError(
            f"a bundle needs {CONFIG_FILE} or a wrangler config ({WRANGLER_FILES[0]})"
        )
    if config.main not in files:
        raise BundleError(f"a bundle needs {config.main} (its entry module)")
    return config


def bundle_version(bundle: workers_pb2.WorkerBundle) -> str:
    digest = hashlib.sha256()
    for file in sorted(bundle.files, key=lambda f: f.path):
        digest.update(file.path.encode() + b"\x00")
        digest.update(len(file.content).to_bytes(8, "big"))
        digest.update(file.content)
    return digest.hexdigest()


def is_bundle_folder(folder: Path) -> bool:
    """Whether `folder` holds a worker's config (worker.yaml or a wrangler config)."""
    return any((folder / name).is_file() for name in (CONFIG_FILE, *WRANGLER_FILES))


def read_bundle(folder: Path) -> workers_pb2.WorkerBundle:
    """The deployable files of a folder (Python, YAML, JSON, TOML, HTML, text; no caches)."""
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder")
    bundle = workers_pb2.WorkerBundle()
    for path in sorted(folder.rglob("*")):
        relative_parts = path.relative_to(folder).parts
        if not path.is_file() or SKIPPED_DIRS.intersection(relative_parts[:-1]):
            continue
        relative = path.relative_to(folder).as_posix()
        if _PATH_RE.fullmatch(relative):
            bundle.files.append(workers_pb2.WorkerFile(path=relative, content=path.read_bytes()))
    check_bundle(bundle)
    return bundle
