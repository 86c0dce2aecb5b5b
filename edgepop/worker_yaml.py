"""worker.yaml's declared model: edgepop's own worker config (`edgepop.bundle` has the
format). Strict types, unknown fields refused; errors name the line and the field
(`worker.yaml:3: limits.cpu_ms: ...`, `edgepop.configfile`). Loaded only when a bundle
with a worker.yaml is checked; the roles import it once in the zygote."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from edgepop.bundle import (
    CONFIG_FILE,
    CPU_MS_DEFAULT,
    CPU_MS_MAX,
    SUBREQUESTS_DEFAULT,
    SUBREQUESTS_MAX,
    BundleError,
    WorkerConfig,
    parse_route,
)
from edgepop.configfile import Located, validate
from edgepop.configmodel import StrictModel, fullmatch

# What a version, a route table and a URL can name.
WorkerName = Annotated[
    str,
    AfterValidator(
        fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", "must be 1-63 of [a-z0-9-], got {value!r}")
    ),
]
Binding = Annotated[
    str, AfterValidator(fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", "{value!r} is not a valid name"))
]


def _text(value: Any) -> str:
    # A YAML scalar (`vars: {RETRIES: 3}`) is its text, as the worker reads it.
    if isinstance(value, str | int | float | bool):
        return str(value)
    raise ValueError("must be a string")


Text = Annotated[Any, AfterValidator(_text)]


class Limits(StrictModel):
    cpu_ms: Annotated[float, Field(gt=0, le=CPU_MS_MAX)] = CPU_MS_DEFAULT
    subrequests: Annotated[int, Field(ge=0, le=SUBREQUESTS_MAX)] = SUBREQUESTS_DEFAULT


class WorkerYaml(StrictModel):
    name: WorkerName
    routes: list[str] | None = None
    kv_namespaces: dict[Binding, Text] | None = None
    durable_objects: dict[Binding, Text] | None = None
    vars: dict[Binding, Text] | None = None
    secrets: dict[Binding, Text] | None = None
    analytics: dict[Binding, Text] | None = None
    limits: Limits | None = None


def read(located: Located) -> WorkerConfig:
    if not isinstance(located.raw, dict):
        raise BundleError(located.at((), "the top level must be a mapping"))
    parsed = validate(WorkerYaml, located, BundleError)
    patterns = parsed.routes or []
    routes = []
    for index, pattern in enumerate(patterns):
        try:
            routes.append(parse_route(pattern))
        except BundleError as error:
            message = str(error).removeprefix("routes: ")
            raise BundleError(located.at(("routes", index), message)) from None
    limits = parsed.limits or Limits()
    return WorkerConfig(
        name=parsed.name,
        routes=tuple(routes),
        route_patterns=tuple(patterns),
        kv_namespaces=dict(parsed.kv_namespaces or {}),
        durable_objects=dict(parsed.durable_objects or {}),
        vars=dict(parsed.vars or {}),
        secrets=dict(parsed.secrets or {}),
        analytics=dict(parsed.analytics or {}),
        cpu_ms=float(limits.cpu_ms),
        subrequests=limits.subrequests,
    )


__all__ = ["CONFIG_FILE", "WorkerYaml", "read"]
