"""`pyodide.ffi` without JavaScript: conversions are the identity (see `pyodide`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

# Raised where a Cloudflare binding would throw a JS error (a D1 query's D1Error).
from edgepop.worker_api import JsException

T = TypeVar("T")


class JsProxy:
    """The type of a JavaScript object in Pyodide; no value is one here."""


def to_js(value: T, **options: Any) -> T:
    """Pyodide converts `value` to a JavaScript value; edgepop keeps it as it is."""
    return value


def create_proxy(value: T, **options: Any) -> T:
    return value


def create_once_callable(function: Callable[..., T], **options: Any) -> Callable[..., T]:
    return function


def destroy_proxies(proxies: Any) -> None:
    """Nothing to free without JavaScript."""


__all__ = [
    "JsException",
    "JsProxy",
    "create_once_callable",
    "create_proxy",
    "destroy_proxies",
    "to_js",
]
