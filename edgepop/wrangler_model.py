"""Cloudflare's wrangler config, declared: the model of what edgepop reads from
`wrangler.jsonc` / `.json` / `.toml` (`edgepop.wrangler` reads the file), and the rules
between its parts (a bound class needs a migration, a tag appears once).

Strict types, as the YAML models (`edgepop.configmodel`): `true` is not a CPU limit, nor
`3` a dataset's or a deleted class's name. The top level is edgepop's: a field it does not
know is refused, one without effect here (IGNORED_FIELDS) is accepted and listed, a binding
it does not offer (UNSUPPORTED_FIELDS) is refused by name. An entry (a binding, a route, a
migration) is Cloudflare's: the fields edgepop reads are declared, the others
(`preview_id`, `database_id`, `zone_name`, ...) are accepted and left unread. Errors name
the file and the field (`wrangler.jsonc: durable_objects.bindings[0].class_name: ...`),
with no line: JSON5 and TOML give their values without one. Loaded only when a wrangler
config is read; the roles import it once in the zygote.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any

from cronsim import CronSim, CronSimError
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from edgepop.bundle import BundleError, WorkerConfig, parse_route
from edgepop.configfile import Located, Path, validate
from edgepop.configmodel import StrictModel, fullmatch
from edgepop.errors import InvalidArgumentError
from edgepop.sqldb import check_database_name
from edgepop.worker_yaml import Binding, Limits, WorkerName

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
NAMESPACE_CHARS_MAX = 64
_NAMESPACE_CHAR_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_ROUTE_FORMS = "must be a pattern or {pattern, zone_name}"

NonEmpty = Annotated[str, StringConstraints(min_length=1)]
ClassName = Annotated[
    str, AfterValidator(fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", "{value!r} is not a class name"))
]


def _main(value: str) -> str:
    if not value.endswith(".py"):
        raise ValueError(f"must name the worker's Python entry module, got {value!r}")
    return value.removeprefix("./")


def _namespace(value: str) -> str:
    # Named as Miniflare names it, kept to the characters a namespace allows.
    namespace = _NAMESPACE_CHAR_RE.sub("_", value).strip("_")
    if not namespace or len(namespace) > NAMESPACE_CHARS_MAX:
        raise ValueError(f"{value!r} cannot name a namespace")
    return namespace


def _database_name(value: str) -> str:
    try:
        return check_database_name(value)
    except InvalidArgumentError as error:
        raise ValueError(error.message) from None


def _cron(value: str) -> str:
    if len(value.split()) != 5:
        raise ValueError(f"{value!r} is not a 5-field cron")
    try:
        CronSim(value, datetime.datetime.now(datetime.UTC))
    except CronSimError as error:
        raise ValueError(f"{value!r}: {error}") from None
    return value


# The entry module's path in the bundle, without a leading `./`.
Main = Annotated[str, AfterValidator(_main)]
# A KV namespace's `id`, validated into the namespace it names (`<ID>` names `ID`).
Namespace = Annotated[str, AfterValidator(_namespace)]
DatabaseName = Annotated[str, AfterValidator(_database_name)]
Cron = Annotated[str, AfterValidator(_cron)]


class Entry(StrictModel):
    """One of Cloudflare's objects: its other fields are Cloudflare's, unread here."""

    model_config = ConfigDict(extra="ignore")


class RouteEntry(Entry):
    """A route: a pattern, or Cloudflare's object form `{pattern, zone_name}`."""

    pattern: NonEmpty

    @model_validator(mode="before")
    @classmethod
    def _pattern_alone(cls, value: Any) -> Any:
        if isinstance(value, str) and value:
            return {"pattern": value}
        if not isinstance(value, dict):
            raise ValueError(_ROUTE_FORMS)
        return value


class KvNamespace(Entry):
    binding: Binding
    id: Namespace


class D1Database(Entry):
    """Bound by `database_name` (`edgectl d1 create NAME`); the `database_id` Cloudflare
    needs is not read: names are unique in a cluster."""

    binding: Binding
    database_name: DatabaseName


class AnalyticsDataset(Entry):
    binding: Binding
    # None (or empty): the binding's name.
    dataset: str | None = None


class RenamedClass(Entry):
    from_class: NonEmpty = Field(alias="from")
    to_class: NonEmpty = Field(alias="to")


class Migration(Entry):
    tag: NonEmpty
    new_classes: list[ClassName] | None = None
    new_sqlite_classes: list[ClassName] | None = None
    renamed_classes: list[RenamedClass] | None = None
    deleted_classes: list[str] | None = None


class DurableObjectBinding(Entry):
    name: Binding
    class_name: NonEmpty
    # Another worker's class: refused, whatever the value, never bound to this worker's.
    script_name: Any = None

    @field_validator("script_name")
    @classmethod
    def _own_class(cls, value: Any) -> Any:
        raise ValueError("a class of another worker is not supported yet")


class DurableObjects(Entry):
    bindings: list[DurableObjectBinding] | None = None


class Triggers(Entry):
    crons: list[Cron] | None = None


class WranglerConfig(StrictModel):
    """The top-level fields edgepop reads (IGNORED_FIELDS are taken out before)."""

    name: WorkerName
    main: Main
    route: RouteEntry | None = None
    routes: list[RouteEntry] | None = None
    migrations: list[Migration] | None = None
    # CPU milliseconds per request, and subrequests per request (an edgepop extension:
    # Cloudflare's is fixed by plan), as in worker.yaml.
    limits: Limits | None = None
    kv_namespaces: list[KvNamespace] | None = None
    d1_databases: list[D1Database] | None = None
    durable_objects: DurableObjects | None = None
    vars: dict[Binding, Any] | None = None
    analytics_engine_datasets: list[AnalyticsDataset] | None = None
    triggers: Triggers | None = None

    @field_validator("route", mode="before")
    @classmethod
    def _given(cls, value: Any) -> Any:
        # `"route": null` is refused as a route (absent, there is no route).
        if value is None:
            raise ValueError(_ROUTE_FORMS)
        return value


KNOWN_FIELDS = frozenset(WranglerConfig.model_fields)


def read(located: Located) -> WorkerConfig:
    """The WorkerConfig of a parsed wrangler config (`located.raw`, an object)."""
    raw: dict[str, Any] = located.raw
    for key, reason in UNSUPPORTED_FIELDS.items():
        if key in raw:
            raise BundleError(located.at((key,), reason))
    unknown = sorted(set(raw) - KNOWN_FIELDS - IGNORED_FIELDS)
    if unknown:
        raise BundleError(f"{located.source}: unknown field(s) {unknown}")
    read_here = {key: value for key, value in raw.items() if key not in IGNORED_FIELDS}
    parsed = validate(WranglerConfig, Located(located.source, read_here), BundleError)
    return build(parsed, located, ignored=tuple(sorted(set(raw) & IGNORED_FIELDS)))


def build(parsed: WranglerConfig, located: Located, ignored: tuple[str, ...]) -> WorkerConfig:
    patterns = []
    routes = []
    given: list[tuple[Path, RouteEntry]] = [(("route",), parsed.route)] if parsed.route else []
    given += [(("routes", index), entry) for index, entry in enumerate(parsed.routes or [])]
    for where, entry in given:
        # Cloudflare's patterns may carry a scheme; edgepop routes by host and path.
        pattern = entry.pattern.split("://", 1)[-1]
        try:
            routes.append(parse_route(pattern))
        except BundleError as error:
            raise BundleError(located.at(where, str(error).removeprefix("routes: "))) from None
        patterns.append(pattern)
    classes, sqlite_classes = _migrated(parsed.migrations or [], located)
    limits = parsed.limits or Limits()
    return WorkerConfig(
        name=parsed.name,
        routes=tuple(routes),
        route_patterns=tuple(patterns),
        kv_namespaces={entry.binding: entry.id for entry in parsed.kv_namespaces or []},
        d1_databases={entry.binding: entry.database_name for entry in parsed.d1_databases or []},
        durable_objects=_bound(parsed.durable_objects, classes, located),
        vars=dict(parsed.vars or {}),
        analytics={
            entry.binding: entry.dataset or entry.binding
            for entry in parsed.analytics_engine_datasets or []
        },
        cpu_ms=float(limits.cpu_ms),
        subrequests=limits.subrequests,
        main=parsed.main,
        sqlite_classes=frozenset(sqlite_classes),
        crons=tuple(parsed.triggers.crons or []) if parsed.triggers else (),
        ignored=ignored,
    )


def _migrated(migrations: list[Migration], located: Located) -> tuple[set[str], set[str]]:
    """The classes the migrations leave declared, and which of them are SQLite-backed."""
    classes: set[str] = set()
    sqlite: set[str] = set()
    tags: set[str] = set()
    for index, migration in enumerate(migrations):
        if migration.tag in tags:
            raise BundleError(
                located.at(("migrations", index, "tag"), f"{migration.tag!r} appears twice")
            )
        tags.add(migration.tag)
        classes.update(migration.new_classes or [])
        classes.update(migration.new_sqlite_classes or [])
        sqlite.update(migration.new_sqlite_classes or [])
        for rename in migration.renamed_classes or []:
            classes.discard(rename.from_class)
            classes.add(rename.to_class)
            if rename.from_class in sqlite:
                sqlite.discard(rename.from_class)
                sqlite.add(rename.to_class)
        for name in migration.deleted_classes or []:
            classes.discard(name)
            sqlite.discard(name)
    return classes, sqlite


def _bound(objects: DurableObjects | None, declared: set[str], located: Located) -> dict[str, str]:
    bindings = {}
    for index, entry in enumerate((objects and objects.bindings) or []):
        if entry.class_name not in declared:
            raise BundleError(
                located.at(
                    ("durable_objects", "bindings", index, "class_name"),
                    f"{entry.class_name!r} has no migration (declare it in "
                    "migrations[].new_sqlite_classes or new_classes)",
                )
            )
        bindings[entry.name] = entry.class_name
    return bindings
