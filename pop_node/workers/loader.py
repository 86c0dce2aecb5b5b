"""Load a worker bundle into this process, from memory, under its own package name.

Each version gets a package `_edgepop_worker_<name>_<version[:12]>`: two versions of one
worker live side by side (requests in flight finish on the old one), and the bundle's
own modules import each other relatively (`from . import helpers`), or by name from the
entry module's folder (`import helpers` beside `src/entry.py`, as on Cloudflare), which
resolves to the bundle's own module, never another worker's. A folder of the bundle is a
package even without `__init__.py` (Cloudflare's `main = "src/entry.py"`).

The entry module answers requests in one of three forms, tried in this order: edgepop's
`async def fetch(request, env, ctx)`; Cloudflare's `class Default(WorkerEntrypoint)`
with `async def fetch(self, request)` (an instance per request, given `ctx` and `env`);
Cloudflare's older `async def on_fetch(request, env[, ctx])`. Cron triggers call
`scheduled(controller, env, ctx)` in the same three forms (`on_scheduled` the older).
"""

from __future__ import annotations

import asyncio
import builtins
import importlib
import importlib.abc
import importlib.machinery
import inspect
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgepop.durable import DurableObject
from edgepop.worker_api import fetch as subrequest
from pop_node.workers.cpu import interrupt_thread

_builtin_import = builtins.__import__


class WorkerLoadError(Exception):
    """A bundle that cannot be loaded (syntax error, no fetch, import failure, too slow)."""


class _LoadInterrupted(BaseException):
    """Raised inside a loader thread that overran its time (BaseException: not swallowed)."""


class _BundleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(
        self, package: str, files: dict[str, bytes], label: str, main: str = "worker.py"
    ) -> None:
        self.package = package
        self.files = files
        self.label = label
        # The modules beside `main` import each other by name (`import helpers`), as
        # Cloudflare puts main's folder on the path. Resolved to this bundle's own
        # package by the bundle's `__import__`, so two workers' `helpers` never meet in
        # sys.modules.
        main_dir = main.rpartition("/")[0]
        self.sibling_prefix = (
            f"{package}.{main_dir.replace('/', '.')}." if main_dir else (f"{package}.")
        )
        self.siblings = _top_level_names(files, main_dir)
        self.builtins = dict(vars(builtins))
        self.builtins["__import__"] = self._import

    def _import(
        self,
        name: str,
        globals: Any = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> types.ModuleType:
        head = name.partition(".")[0]
        if level != 0 or head not in self.siblings:
            return _builtin_import(name, globals, locals, fromlist, level)
        module = importlib.import_module(self.sibling_prefix + name)
        if fromlist:
            return module
        return importlib.import_module(self.sibling_prefix + head)

    def _path_of(self, fullname: str) -> tuple[str, bool] | None:
        if fullname == self.package:
            return "__init__.py", True
        if not fullname.startswith(self.package + "."):
            return None
        relative = fullname[len(self.package) + 1 :].replace(".", "/")
        if f"{relative}.py" in self.files:
            return f"{relative}.py", False
        if f"{relative}/__init__.py" in self.files:
            return f"{relative}/__init__.py", True
        if any(path.startswith(f"{relative}/") for path in self.files):
            return f"{relative}/__init__.py", True  # a folder: an empty package
        return None

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        found = self._path_of(fullname)
        if found is None:
            return None
        file_path, is_package = found
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)
        spec.origin = f"<worker {self.label}>/{file_path}"
        return spec

    def create_module(self, spec: Any) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        found = self._path_of(module.__name__)
        assert found is not None
        file_path, is_package = found
        if is_package:
            module.__path__ = []
        source = self.files.get(file_path, b"")
        code = compile(source, f"<worker {self.label}>/{file_path}", "exec")
        module.__dict__["__builtins__"] = self.builtins
        exec(code, module.__dict__)


def _top_level_names(files: dict[str, bytes], folder: str) -> frozenset[str]:
    """Names importable from `folder` of a bundle: its .py modules and subfolders."""
    prefix = f"{folder}/" if folder else ""
    names = set()
    for path in files:
        if not path.startswith(prefix):
            continue
        first, slash, _ = path[len(prefix) :].partition("/")
        if slash and first.isidentifier():
            names.add(first)
        elif first.endswith(".py") and first[:-3].isidentifier():
            names.add(first[:-3])
    return frozenset(names)


@dataclass
class LoadedModule:
    package: str
    fetch: Callable[..., Any]
    classes: dict[str, type[DurableObject]] = field(default_factory=dict)
    finder: _BundleFinder | None = None
    # `scheduled(controller, env, ctx)` for cron triggers, when the worker has one.
    scheduled: Callable[..., Any] | None = None

    def unload(self) -> None:
        if self.finder is not None and self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        for name in [
            n for n in sys.modules if n == self.package or n.startswith(self.package + ".")
        ]:
            del sys.modules[name]


def entry_fetch(module: types.ModuleType) -> Callable[..., Any] | None:
    """`fetch(request, env, ctx)` for the entry module's form, or None if it has none."""
    fetch = getattr(module, "fetch", None)
    # `from workers import fetch` (the subrequest function) is not a handler.
    if fetch is not None and fetch is not subrequest and inspect.iscoroutinefunction(fetch):
        return fetch  # type: ignore[no-any-return]
    default = getattr(module, "Default", None)
    if inspect.isclass(default) and inspect.iscoroutinefunction(getattr(default, "fetch", None)):
        entrypoint: Any = default

        async def fetch_default(request: Any, env: Any, ctx: Any) -> Any:
            return await entrypoint(ctx, env).fetch(request)

        return fetch_default
    on_fetch = getattr(module, "on_fetch", None)
    if on_fetch is not None and inspect.iscoroutinefunction(on_fetch):
        handler = on_fetch
        takes_ctx = len(inspect.signature(handler).parameters) >= 3

        async def fetch_legacy(request: Any, env: Any, ctx: Any) -> Any:
            return await (handler(request, env, ctx) if takes_ctx else handler(request, env))

        return fetch_legacy
    return None


def entry_scheduled(module: types.ModuleType) -> Callable[..., Any] | None:
    """`scheduled(controller, env, ctx)` for the entry module's form, or None."""
    scheduled = getattr(module, "scheduled", None)
    if scheduled is not None and inspect.iscoroutinefunction(scheduled):
        return scheduled  # type: ignore[no-any-return]
    default = getattr(module, "Default", None)
    if inspect.isclass(default) and inspect.iscoroutinefunction(
        getattr(default, "scheduled", None)
    ):
        entrypoint: Any = default

        async def scheduled_default(controller: Any, env: Any, ctx: Any) -> Any:
            # Cloudflare's SDK passes (controller, env, ctx) to the method as well.
            return await entrypoint(ctx, env).scheduled(controller, env, ctx)

        return scheduled_default
    on_scheduled = getattr(module, "on_scheduled", None)
    if on_scheduled is not None and inspect.iscoroutinefunction(on_scheduled):
        return on_scheduled  # type: ignore[no-any-return]
    return None


def load_bundle(
    name: str, version: str, files: dict[str, bytes], main: str = "worker.py"
) -> LoadedModule:
    package = f"_edgepop_worker_{name.replace('-', '_')}_{version[:12]}"
    finder = _BundleFinder(package, files, f"{name}@{version[:12]}", main)
    sys.meta_path.insert(0, finder)
    loaded = LoadedModule(package=package, fetch=lambda *a: None, finder=finder)
    try:
        importlib.import_module(package)
        entry_module = main.removesuffix(".py").replace("/", ".")
        module = importlib.import_module(f"{package}.{entry_module}")
    except Exception as error:
        loaded.unload()
        raise WorkerLoadError(f"worker {name}: {type(error).__name__}: {error}") from error
    fetch = entry_fetch(module)
    if fetch is None:
        loaded.unload()
        raise WorkerLoadError(
            f"worker {name}: {main} needs `async def fetch(request, env, ctx)` or a "
            "`class Default(WorkerEntrypoint)` with `async def fetch(self, request)`"
        )
    loaded.fetch = fetch
    loaded.scheduled = entry_scheduled(module)
    loaded.classes = {
        member_name: member
        for member_name, member in vars(module).items()
        if inspect.isclass(member)
        and issubclass(member, DurableObject)
        and member is not DurableObject
        and member.__module__ == module.__name__
    }
    return loaded


async def load_bundle_bounded(
    name: str, version: str, files: dict[str, bytes], timeout_s: float, main: str = "worker.py"
) -> LoadedModule:
    """`load_bundle` on its own thread, stopped if its module code runs past `timeout_s`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[LoadedModule] = loop.create_future()

    def settle(result: LoadedModule | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            assert result is not None
            done.set_result(result)

    def work() -> None:
        try:
            loaded = load_bundle(name, version, files, main)
        except _LoadInterrupted:
            loop.call_soon_threadsafe(
                settle, None, WorkerLoadError(f"worker {name}: loading took over {timeout_s} s")
            )
            return
        except BaseException as error:
            loop.call_soon_threadsafe(settle, None, error)
            return
        loop.call_soon_threadsafe(settle, loaded, None)

    thread = threading.Thread(target=work, name=f"load-{name}", daemon=True)
    thread.start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), timeout_s)
    except TimeoutError:
        if thread.ident is not None:
            interrupt_thread(thread.ident, _LoadInterrupted)
        raise WorkerLoadError(f"worker {name}: loading took over {timeout_s} s") from None
