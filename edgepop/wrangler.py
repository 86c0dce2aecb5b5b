"""Cloudflare's wrangler config (`wrangler.jsonc` / `.json` / `.toml`) as a `WorkerConfig`.

What a Python Worker's folder carries on Cloudflare deploys here as it is: its name,
`main`, vars, KV namespaces, D1 databases, Durable Object bindings with their migrations,
routes, cron triggers and CPU limit. This module reads the file (JSONC by `json5`, TOML by
`tomllib`) and the worker's `pyproject.toml`; the config's declared model is
`edgepop.wrangler_model`. Every error names the file and the field
(`wrangler.jsonc: durable_objects.bindings[0].class_name: ...`). Fields with no effect here
(compatibility dates, observability, ...) are accepted and listed in
`WorkerConfig.ignored` for the deployer to show; a binding edgepop does not offer (R2,
queues, ...) is refused, never silently left out of `env`.

A KV namespace is named by its `id`, as Miniflare does, kept to the characters a
namespace allows (`<YOUR_KV_NAMESPACE_ID>`, the examples' placeholder, becomes
`YOUR_KV_NAMESPACE_ID`): two workers naming one id share it.
"""

from __future__ import annotations

import tomllib
from typing import Any

import json5
from packaging.requirements import InvalidRequirement, Requirement

from edgepop.bundle import BundleError, WorkerConfig
from edgepop.configfile import Located

PYPROJECT_FILE = "pyproject.toml"
DEPENDENCIES_MAX = 100


def parse(file_name: str, content: bytes) -> WorkerConfig:
    """Read a wrangler config; BundleError names the file and the field at fault."""
    # JSON5 and TOML give values without their lines: errors name the file and the field.
    located = Located(file_name, _load(file_name, content))
    from edgepop import wrangler_model  # pydantic loads only when a config is read

    return wrangler_model.read(located)


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
