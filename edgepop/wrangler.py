"""Cloudflare's wrangler config (`wrangler.jsonc` / `.json` / `.toml`) as a `WorkerConfig`.

What a Python Worker's folder carries on Cloudflare deploys here as it is: its name,
`main`, vars, KV namespaces, Durable Object bindings with their migrations, routes, cron
triggers and CPU limit. Every error names the field (`durable_objects.bindings[0].
class_name: ...`). Fields with no effect here (compatibility dates, observability, ...)
are accepted and listed in `WorkerConfig.ignored` for the deployer to show; a binding
edgepop does not offer (R2, queues, ...) is refused, never silently left out of `env`.

A KV namespace is named by its `id`, as Miniflare does, kept to the characters a
namespace allows (`<YOUR_KV_NAMESPACE_ID>`, the examples' placeholder, becomes
`YOUR_KV_NAMESPACE_ID`): two workers naming one id share it.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import json5
from cronsim import CronSim, CronSimError
from packaging.requirements import InvalidRequirement, Requirement

from edgepop.bundle import (
    CPU_MS_DEFAULT,
    CPU_MS_MAX,
    SUBREQUESTS_DEFAULT,
    SUBREQUESTS_MAX,
    BundleError,
    WorkerConfig,
    parse_route,
)
from edgepop.errors import InvalidArgumentError
from edgepop.sqldb import check_database_name

PYPROJECT_FILE = "pyproject.toml"
DEPENDENCIES_MAX = 100
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_BINDING_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAMESPACE_CHAR_RE = re.compile(r"[^A-Za-z0-9_.-]+")
NAMESPACE_CHARS_MAX = 64
# Read, and without effect here.
IGNORED_FIELDS = frozenset(
    {
        "$schema",
        "account_id",
        "compatibility_date",
        "compatibility_flags",
        "observability",
        "workers_dev",
        "preview_urls",
        "placement",
        "upload_source_maps",
        "minify",
        "keep_vars",
        "logpush",
        "tail_consumers",
        "dev",
        "build",
        "rules",
        "no_bundle",
        "find_additional_modules",
        "base_dir",
        "python_modules",
        "send_metrics",
    }
)
# Bindings Cloudflare offers and edgepop does not (yet): refused by name.
UNSUPPORTED_FIELDS = {
    "r2_buckets": "R2 is not emulated",
    "queues": "Queues are not emulated",
    "services": "service bindings are not supported yet",
    "assets": "static assets are not served yet",
    "workflows": "Workflows are not emulated",
    "ai": "Workers AI is not emulated",
    "vectorize": "Vectorize is not emulated",
    "hyperdrive": "Hyperdrive is not emulated",
    "browser": "Browser Rendering is not emulated",
    "env": "named environments are not supported: deploy the top-level config",
}
KNOWN_FIELDS = {
    "name",
    "main",
    "vars",
    "kv_namespaces",
    "durable_objects",
    "migrations",
    "routes",
    "route",
    "triggers",
    "limits",
    "analytics_engine_datasets",
    "d1_databases",
}


def parse(file_name: str, content: bytes) -> WorkerConfig:
    """Read a wrangler config; BundleError names the file and the field at fault."""
    raw = _load(file_name, content)
    try:
        return _config(raw)
    except BundleError as error:
        raise BundleError(f"{file_name}: {error}") from None


def dependencies_of(content: bytes | None) -> tuple[str, ...]:
    """The worker's own packages (`project.dependencies`), each a checked PEP 508
    requirement from a registry (no URLs or paths); installed by `edgepop.packages`."""
    if content is None:
        return ()
    try:
        project = tomllib.loads(content.decode()).get("project", {})
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise BundleError(f"{PYPROJECT_FILE}: not valid TOML: {error}") from error
    dependencies = project.get("dependencies") or []
    if not isinstance(dependencies, list) or len(dependencies) > DEPENDENCIES_MAX:
        raise BundleError(
            f"{PYPROJECT_FILE}: project.dependencies must be a list of at most "
            f"{DEPENDENCIES_MAX} requirements"
        )
    checked = []
    for text in dependencies:
        try:
            requirement = Requirement(text) if isinstance(text, str) else None
        except InvalidRequirement as error:
            raise BundleError(f"{PYPROJECT_FILE}: project.dependencies: {error}") from None
        if requirement is None:
            raise BundleError(f"{PYPROJECT_FILE}: project.dependencies: {text!r} is not text")
        if requirement.url:
            raise BundleError(
                f"{PYPROJECT_FILE}: project.dependencies: {text!r}: packages come from a "
                "registry, not a URL or path"
            )
        checked.append(str(requirement))
    return tuple(checked)


def _load(file_name: str, content: bytes) -> dict[str, Any]:
    try:
        text = content.decode()
        raw = tomllib.loads(text) if file_name.endswith(".toml") else json5.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise BundleError(
            f"{file_name}: not valid {file_name.rsplit('.', 1)[1]}: {error}"
        ) from None
    if not isinstance(raw, dict):
        raise BundleError(f"{file_name}: the top level must be an object")
    return raw


def _config(raw: dict[str, Any]) -> WorkerConfig:
    for key, reason in UNSUPPORTED_FIELDS.items():
        if key in raw:
            raise BundleError(f"{key}: {reason}")
    unknown = sorted(set(raw) - KNOWN_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise BundleError(f"unknown field(s) {unknown}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise BundleError(f"name: must be 1-63 of [a-z0-9-], got {name!r}")
    main = raw.get("main")
    if not isinstance(main, str) or not main.endswith(".py"):
        raise BundleError(f"main: must name the worker's Python entry module, got {main!r}")
    main = main.removeprefix("./")
    patterns = _routes(raw)
    own_classes, sqlite_classes = _migrations(raw.get("migrations"))
    cpu_ms, subrequests = _limits(raw.get("limits"))
    return WorkerConfig(
        name=name,
        routes=tuple(parse_route(pattern) for pattern in patterns),
        route_patterns=tuple(patterns),
        kv_namespaces=_kv_namespaces(raw.get("kv_namespaces")),
        d1_databases=_d1_databases(raw.get("d1_databases")),
        durable_objects=_durable_objects(raw.get("durable_objects"), own_classes),
        vars=_vars(raw.get("vars")),
        analytics=_analytics(raw.get("analytics_engine_datasets")),
        cpu_ms=cpu_ms,
        subrequests=subrequests,
        main=main,
        sqlite_classes=frozenset(sqlite_classes),
        crons=_crons(raw.get("triggers")),
        ignored=tuple(sorted(set(raw) & IGNORED_FIELDS)),
    )


def _list(raw: Any, where: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BundleError(f"{where}: must be a list")
    return raw


def _object(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: must be an object")
    return raw


def _text(entry: dict[str, Any], field: str, where: str) -> str:
    value = entry.get(field)
    if not isinstance(value, str) or not value:
        raise BundleError(f"{where}.{field}: must be a non-empty string")
    return value


def _routes(raw: dict[str, Any]) -> list[str]:
    routes = _list(raw.get("routes"), "routes")
    if "route" in raw:
        routes = [raw["route"], *routes]
    patterns = []
    for index, route in enumerate(routes):
        where = f"routes[{index}]"
        if isinstance(route, dict):
            route = _text(route, "pattern", where)
        if not isinstance(route, str) or not route:
            raise BundleError(f"{where}: must be a pattern or {{pattern, zone_name}}")
        # Cloudflare's patterns may carry a scheme; edgepop routes by host and path.
        patterns.append(route.split("://", 1)[-1])
    return patterns


def _bindings(raw: Any, field: str) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, binding name, entry) of each `{binding, ...}` entry of a binding list."""
    for index, entry in enumerate(_list(raw, field)):
        where = f"{field}[{index}]"
        entry = _object(entry, where)
        binding = _text(entry, "binding", where)
        if not _BINDING_RE.fullmatch(binding):
            raise BundleError(f"{where}.binding: {binding!r} is not a valid name")
        yield where, binding, entry


def _kv_namespaces(raw: Any) -> dict[str, str]:
    namespaces = {}
    for where, binding, entry in _bindings(raw, "kv_namespaces"):
        namespace = _NAMESPACE_CHAR_RE.sub("_", _text(entry, "id", where)).strip("_")
        if not namespace or len(namespace) > NAMESPACE_CHARS_MAX:
            raise BundleError(f"{where}.id: {entry['id']!r} cannot name a namespace")
        namespaces[binding] = namespace
    return namespaces


def _d1_databases(raw: Any) -> dict[str, str]:
    """binding -> database name (`edgectl d1 create NAME`). The `database_id` Cloudflare
    needs is not: names are unique in a cluster."""
    databases = {}
    for where, binding, entry in _bindings(raw, "d1_databases"):
        name = _text(entry, "database_name", where)
        try:
            check_database_name(name)
        except InvalidArgumentError as error:
            raise BundleError(f"{where}.database_name: {error.message}") from None
        databases[binding] = name
    return databases


def _migrations(raw: Any) -> tuple[set[str], set[str]]:
    """The classes the migrations leave declared, and which of them are SQLite-backed."""
    classes: set[str] = set()
    sqlite: set[str] = set()
    tags: set[str] = set()
    for index, entry in enumerate(_list(raw, "migrations")):
        where = f"migrations[{index}]"
        entry = _object(entry, where)
        tag = _text(entry, "tag", where)
        if tag in tags:
            raise BundleError(f"{where}.tag: {tag!r} appears twice")
        tags.add(tag)
        for field, backend in (("new_classes", None), ("new_sqlite_classes", sqlite)):
            for name in _list(entry.get(field), f"{where}.{field}"):
                if not isinstance(name, str) or not _BINDING_RE.fullmatch(name):
                    raise BundleError(f"{where}.{field}: {name!r} is not a class name")
                classes.add(name)
                if backend is not None:
                    backend.add(name)
        for rename in _list(entry.get("renamed_classes"), f"{where}.renamed_classes"):
            rename = _object(rename, f"{where}.renamed_classes[]")
            old, new = _text(rename, "from", where), _text(rename, "to", where)
            classes.discard(old)
            classes.add(new)
            if old in sqlite:
                sqlite.discard(old)
                sqlite.add(new)
        for name in _list(entry.get("deleted_classes"), f"{where}.deleted_classes"):
            classes.discard(name)
            sqlite.discard(name)
    return classes, sqlite


def _durable_objects(raw: Any, declared: set[str]) -> dict[str, str]:
    if raw is None:
        return {}
    raw = _object(raw, "durable_objects")
    bindings = {}
    for index, entry in enumerate(_list(raw.get("bindings"), "durable_objects.bindings")):
        where = f"durable_objects.bindings[{index}]"
        entry = _object(entry, where)
        name = _text(entry, "name", where)
        class_name = _text(entry, "class_name", where)
        if not _BINDING_RE.fullmatch(name):
            raise BundleError(f"{where}.name: {name!r} is not a valid name")
        if "script_name" in entry:
            raise BundleError(
                f"{where}.script_name: a class of another worker is not supported yet"
            )
        if class_name not in declared:
            raise BundleError(
                f"{where}.class_name: {class_name!r} has no migration (declare it in "
                "migrations[].new_sqlite_classes or new_classes)"
            )
        bindings[name] = class_name
    return bindings


def _vars(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    raw = _object(raw, "vars")
    for key in raw:
        if not _BINDING_RE.fullmatch(key):
            raise BundleError(f"vars: {key!r} is not a valid name")
    return dict(raw)


def _limits(raw: Any) -> tuple[float, int]:
    """CPU milliseconds per request, and subrequests per request (an edgepop extension:
    Cloudflare's is fixed by plan)."""
    if raw is None:
        return CPU_MS_DEFAULT, SUBREQUESTS_DEFAULT
    raw = _object(raw, "limits")
    unknown = sorted(set(raw) - {"cpu_ms", "subrequests"})
    if unknown:
        raise BundleError(f"limits: unknown field(s) {unknown} (cpu_ms, subrequests)")
    cpu_ms = raw.get("cpu_ms", CPU_MS_DEFAULT)
    if not isinstance(cpu_ms, int | float) or not 0 < cpu_ms <= CPU_MS_MAX:
        raise BundleError(f"limits.cpu_ms: must be within (0, {CPU_MS_MAX:.0f}]")
    subrequests = raw.get("subrequests", SUBREQUESTS_DEFAULT)
    if not isinstance(subrequests, int) or not 0 <= subrequests <= SUBREQUESTS_MAX:
        raise BundleError(f"limits.subrequests: must be within 0..{SUBREQUESTS_MAX}")
    return float(cpu_ms), subrequests


def _analytics(raw: Any) -> dict[str, str]:
    """Analytics Engine bindings: binding -> dataset (exported as metrics here)."""
    return {
        binding: str(entry.get("dataset") or binding)
        for _, binding, entry in _bindings(raw, "analytics_engine_datasets")
    }


def _crons(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    crons = _list(_object(raw, "triggers").get("crons"), "triggers.crons")
    for index, cron in enumerate(crons):
        if not isinstance(cron, str) or len(cron.split()) != 5:
            raise BundleError(f"triggers.crons[{index}]: {cron!r} is not a 5-field cron")
        try:
            CronSim(cron, datetime.datetime.now(datetime.UTC))
        except CronSimError as error:
            raise BundleError(f"triggers.crons[{index}]: {cron!r}: {error}") from None
    return tuple(crons)
