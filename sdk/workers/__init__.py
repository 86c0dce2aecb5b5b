"""Cloudflare's Python Workers SDK (`from workers import ...`), for CPython on edgepop.

Cloudflare's `workers-runtime-sdk` runs only inside Pyodide, where every object is a
proxy of a JavaScript one. This module offers the same names over edgepop's own runtime,
so that a Python Worker written for Cloudflare runs here unmodified:

    from workers import DurableObject, Response, WorkerEntrypoint

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            return Response("Hello world!")

`Request`, `Response` and `fetch` are edgepop's (`edgepop.worker_api`), which take
Cloudflare's arguments too; `self.env` holds the bindings of the worker's wrangler config
(edgepop's `KvBinding` and `ObjectNamespaceBinding` answer Cloudflare's camelCase calls);
a `DurableObject` gets `self.ctx` (`ctx.storage`, `ctx.id`, `ctx.blockConcurrencyWhile`)
over the object runtime of `edgepop.durable`. Values cross RPC as JSON: `python_to_rpc`
and `python_from_rpc` are the identity, except that a dict coming back allows attribute
access (`JsDict`), as Cloudflare's conversion of a JS object does.
"""

from __future__ import annotations

from typing import Any

from edgepop.worker_api import (
    ExecutionContext,
    JsDict,
    Request,
    Response,
    current_context,
    current_env,
    fetch,
)
from workers._entrypoints import (
    DurableObject,
    DurableObjectContext,
    WorkerEntrypoint,
    WorkflowEntrypoint,
    handler,
)
from workers._rpc import python_from_rpc, python_to_rpc

# Names of Cloudflare's SDK that are types only there.
FetchResponse = Response
Context = ExecutionContext
Headers = dict[str, str] | list[tuple[str, str]]
Body = str | bytes | None

__all__ = [
    "Body",
    "Context",
    "DurableObject",
    "DurableObjectContext",
    "FetchResponse",
    "Headers",
    "JsDict",
    "Request",
    "Response",
    "WorkerEntrypoint",
    "WorkflowEntrypoint",
    "env",
    "fetch",
    "handler",
    "import_from_javascript",
    "patch_env",
    "python_from_rpc",
    "python_to_rpc",
    "waitUntil",
    "wait_until",
]


def import_from_javascript(module_name: str) -> Any:
    """Cloudflare imports JavaScript modules here; CPython has none to give."""
    raise ImportError(f"{module_name!r}: there are no JavaScript modules on edgepop")


def patch_env(*args: Any, **kwargs: Any) -> Any:
    """Cloudflare's hook for tests that swap `env`; edgepop binds `env` per request."""
    raise NotImplementedError("patch_env: edgepop binds env per request")


def wait_until(work: Any) -> None:
    """Keep `work` running after the response (the current request's `ctx.waitUntil`)."""
    context = current_context()
    if context is None:
        raise RuntimeError("wait_until outside a request")
    context.wait_until(work)


waitUntil = wait_until


def __getattr__(name: str) -> Any:
    # `from workers import env`: the bindings of the worker handling this request.
    if name == "env":
        found = current_env()
        if found is None:
            raise RuntimeError("workers.env is only available while a request is handled")
        return found
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
