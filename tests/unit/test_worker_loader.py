"""Loading bundles from memory (`pop_node/workers/loader.py`): package per version,
relative imports inside a bundle, Durable Object classes found, unloading, and errors
for bundles that cannot run.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepop.bundle import bundle_version, read_bundle
from edgepop.durable import DurableObject
from edgepop.worker_api import Request, Response
from pop_node.workers.loader import LoadedModule, WorkerLoadError, load_bundle

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "workers"
VERSION_A = "a" * 64
VERSION_B = "b" * 64

WORKER_WITH_HELPERS = b"""
from . import helpers
from .lib import text
from .lib.deep import constants

async def fetch(request, env, ctx):
    return helpers.answer(text.shout(constants.WORD))
"""
HELPERS = b"""
from edgepop.worker_api import Response

def answer(body):
    return Response(body)
"""
LIB_TEXT = b"def shout(word):\n    return word.upper() + '!'\n"
LIB_DEEP_CONSTANTS = b"from .. import text as _sibling\nWORD = 'hello'\n"


@pytest.fixture
def loaded() -> Iterator[list[LoadedModule]]:
    """Modules a test loads; unloaded afterwards so tests do not see each other's."""
    modules: list[LoadedModule] = []
    yield modules
    for module in modules:
        module.unload()


def run_fetch(module: LoadedModule, url: str = "http://x.test/") -> Response:
    response = asyncio.run(module.fetch(Request(url), None, None))
    assert isinstance(response, Response)
    return response


def simple_worker(body: str) -> dict[str, bytes]:
    source = (
        "from edgepop.worker_api import Response\n"
        "async def fetch(request, env, ctx):\n"
        f"    return Response({body!r})\n"
    )
    return {"worker.py": source.encode(), "worker.yaml": b"name: demo\n"}


def test_a_bundle_loads_under_a_package_named_by_worker_and_version(
    loaded: list[LoadedModule],
) -> None:
    module = load_bundle("my-worker", VERSION_A, simple_worker("hi"))
    loaded.append(module)
    assert module.package == f"_edgepop_worker_my_worker_{VERSION_A[:12]}"
    assert f"{module.package}.worker" in sys.modules
    assert inspect.iscoroutinefunction(module.fetch)
    assert run_fetch(module).body == b"hi"


def test_relative_imports_inside_a_bundle_resolve_to_the_bundle_files(
    loaded: list[LoadedModule],
) -> None:
    files = {
        "worker.py": WORKER_WITH_HELPERS,
        "helpers.py": HELPERS,
        "lib/__init__.py": b"",
        "lib/text.py": LIB_TEXT,
        "lib/deep/__init__.py": b"",
        "lib/deep/constants.py": LIB_DEEP_CONSTANTS,
        "worker.yaml": b"name: demo\n",
    }
    module = load_bundle("demo", VERSION_A, files)
    loaded.append(module)
    assert run_fetch(module).body == b"HELLO!"
    assert f"{module.package}.lib.deep.constants" in sys.modules


def test_the_echo_fixture_loads_with_its_relative_import(loaded: list[LoadedModule]) -> None:
    bundle = read_bundle(FIXTURES / "echo")
    files = {f.path: bytes(f.content) for f in bundle.files}
    version = bundle_version(bundle)
    module = load_bundle("test-echo", version, files)
    loaded.append(module)
    assert module.fetch.__module__ == f"{module.package}.worker"


def test_two_versions_of_one_worker_live_side_by_side(loaded: list[LoadedModule]) -> None:
    files_a = {**simple_worker("version A"), "shared.py": b"VALUE = 'a'\n"}
    files_b = {**simple_worker("version B"), "shared.py": b"VALUE = 'b'\n"}
    first = load_bundle("demo", VERSION_A, files_a)
    loaded.append(first)
    second = load_bundle("demo", VERSION_B, files_b)
    loaded.append(second)
    assert first.package != second.package
    assert run_fetch(first).body == b"version A"
    assert run_fetch(second).body == b"version B"
    # Each version's own modules: the same relative name, different files.
    assert sys.modules[f"{first.package}.worker"] is not sys.modules[f"{second.package}.worker"]
    __import__(f"{first.package}.shared")
    __import__(f"{second.package}.shared")
    assert sys.modules[f"{first.package}.shared"].VALUE == "a"
    assert sys.modules[f"{second.package}.shared"].VALUE == "b"
    # Unloading the old one leaves the new one working.
    first.unload()
    assert run_fetch(second).body == b"version B"


def test_module_state_is_per_version(loaded: list[LoadedModule]) -> None:
    source = b"""
from edgepop.worker_api import Response
calls = []
async def fetch(request, env, ctx):
    calls.append(1)
    return Response(str(len(calls)))
"""
    files = {"worker.py": source, "worker.yaml": b"name: demo\n"}
    first = load_bundle("demo", VERSION_A, files)
    loaded.append(first)
    second = load_bundle("demo", VERSION_B, files)
    loaded.append(second)
    assert run_fetch(first).body == b"1"
    assert run_fetch(first).body == b"2"
    assert run_fetch(second).body == b"1"


def test_unload_removes_the_package_and_its_finder(loaded: list[LoadedModule]) -> None:
    module = load_bundle("demo", VERSION_A, {**simple_worker("x"), "util.py": b"A = 1\n"})
    finders_before = len(sys.meta_path)
    __import__(f"{module.package}.util")
    module.unload()
    assert not [name for name in sys.modules if name.startswith(module.package)]
    assert module.finder not in sys.meta_path
    assert len(sys.meta_path) == finders_before - 1
    # Unloading twice is harmless.
    module.unload()


def test_durable_object_classes_defined_in_the_bundle_are_found(
    loaded: list[LoadedModule],
) -> None:
    source = b"""
from edgepop.durable import DurableObject
from edgepop.worker_api import Response
from pop_node.objects.builtin import Counter  # imported, not defined here

class MyRoom(DurableObject):
    async def join(self, member: str) -> list:
        return [member]

class Helper:  # not an object class
    pass

async def fetch(request, env, ctx):
    return Response("ok")
"""
    module = load_bundle("rooms", VERSION_A, {"worker.py": source, "worker.yaml": b"name: rooms\n"})
    loaded.append(module)
    assert set(module.classes) == {"MyRoom"}
    assert issubclass(module.classes["MyRoom"], DurableObject)


@pytest.mark.parametrize(
    ("source", "names"),
    [
        (b"X = 1\n", "needs `async def fetch"),
        (b"def fetch(request, env, ctx):\n    return None\n", "needs `async def fetch"),
        (b"fetch = 'not a function'\n", "needs `async def fetch"),
        (b"async def fetch(request, env, ctx)\n    return None\n", "SyntaxError"),
        (b"import module_that_does_not_exist_anywhere\n", "ModuleNotFoundError"),
        (b"from . import missing_helper\n", "ImportError"),
        (b"raise RuntimeError('boom at import')\n", "RuntimeError: boom at import"),
    ],
)
def test_bundles_that_cannot_run_fail_to_load_naming_why_and_leave_nothing_behind(
    source: bytes, names: str
) -> None:
    finders_before = list(sys.meta_path)
    with pytest.raises(WorkerLoadError, match=names) as raised:
        load_bundle("broken", VERSION_A, {"worker.py": source, "worker.yaml": b"name: broken\n"})
    assert "worker broken" in str(raised.value)
    assert sys.meta_path == finders_before
    package = f"_edgepop_worker_broken_{VERSION_A[:12]}"
    assert not [name for name in sys.modules if name.startswith(package)]


def test_a_failed_load_does_not_disturb_a_loaded_version(loaded: list[LoadedModule]) -> None:
    good = load_bundle("demo", VERSION_A, simple_worker("still here"))
    loaded.append(good)
    with pytest.raises(WorkerLoadError):
        load_bundle("demo", VERSION_B, {"worker.py": b"syntax error here(", "worker.yaml": b""})
    assert run_fetch(good).body == b"still here"


def test_a_bundle_cannot_import_files_of_another_bundle_relatively(
    loaded: list[LoadedModule],
) -> None:
    other = load_bundle("other", VERSION_A, {**simple_worker("x"), "secret.py": b"KEY = 1\n"})
    loaded.append(other)
    with pytest.raises(WorkerLoadError, match="ImportError"):
        load_bundle("demo", VERSION_B, {"worker.py": b"from . import secret\n"})


# -- Cloudflare's entry forms ---------------------------------------------------------

CF_DEFAULT = b"""
from workers import Response, WorkerEntrypoint
from .helpers import greeting


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response(greeting() + self.env["who"] + (await request.text()), status=201)
"""
CF_ON_FETCH = b"""
from js import Response


async def on_fetch(request, env):
    return Response.new("legacy " + env["who"], status=202)
"""
CF_DURABLE_OBJECT = b"""
from workers import DurableObject, Response, WorkerEntrypoint


class Room(DurableObject):
    async def hello(self):
        return "hi"


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")
"""


def test_a_cloudflare_default_class_answers_from_its_main_module_in_a_folder(
    loaded: list[LoadedModule],
) -> None:
    files = {
        "src/entry.py": CF_DEFAULT,
        "src/helpers.py": b"def greeting():\n    return 'hello '\n",
        "wrangler.jsonc": b"{}",
    }
    module = load_bundle("cf", VERSION_A, files, "src/entry.py")
    loaded.append(module)
    request = Request("http://x.test/", method="POST", body=b"!")
    response = asyncio.run(module.fetch(request, {"who": "tokyo"}, None))
    assert (response.status, response.body) == (201, b"hello tokyo!")


def test_cloudflares_older_on_fetch_form_answers(loaded: list[LoadedModule]) -> None:
    module = load_bundle("cf", VERSION_A, {"entry.py": CF_ON_FETCH}, "entry.py")
    loaded.append(module)
    response = asyncio.run(module.fetch(Request("http://x.test/"), {"who": "me"}, None))
    assert (response.status, response.body) == (202, b"legacy me")


def test_a_cloudflare_durable_object_class_is_found_and_only_its_own_methods_are_rpc(
    loaded: list[LoadedModule],
) -> None:
    from edgepop.durable import callable_methods

    module = load_bundle("cf", VERSION_A, {"entry.py": CF_DURABLE_OBJECT}, "entry.py")
    loaded.append(module)
    assert set(module.classes) == {"Room"}
    assert callable_methods(module.classes["Room"]) == {"hello"}


def test_a_main_module_without_an_entry_point_is_refused(loaded: list[LoadedModule]) -> None:
    with pytest.raises(WorkerLoadError, match=r"src/entry.py needs `async def fetch"):
        load_bundle("cf", VERSION_A, {"src/entry.py": b"x = 1\n"}, "src/entry.py")


CF_SCHEDULED = b"""
from workers import Response, WorkerEntrypoint

RUNS = []


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("ok")

    async def scheduled(self, controller, env, ctx):
        RUNS.append((controller.cron, controller.scheduledTime, env["who"]))
"""


def test_cron_handlers_load_in_each_form(loaded: list[LoadedModule]) -> None:
    from edgepop.worker_api import ScheduledController

    cloudflare = load_bundle("cf", VERSION_A, {"entry.py": CF_SCHEDULED}, "entry.py")
    loaded.append(cloudflare)
    assert cloudflare.scheduled is not None
    asyncio.run(cloudflare.scheduled(ScheduledController("0 * * * *", 60_000), {"who": "x"}, None))
    runs = sys.modules[f"{cloudflare.package}.entry"].RUNS
    assert runs == [("0 * * * *", 60_000, "x")]
    plain = load_bundle("demo", VERSION_B, simple_worker("hi"))
    loaded.append(plain)
    assert plain.scheduled is None
    legacy = {
        "entry.py": CF_ON_FETCH + b"\nasync def on_scheduled(controller, env, ctx):\n    pass\n"
    }
    older = load_bundle("cf-old", VERSION_A, legacy, "entry.py")
    loaded.append(older)
    assert older.scheduled is not None


SIBLING_ENTRY = b"""
import helpers
import pkg.tools
from helpers import greeting
from pkg import tools as same_tools

from workers import Response, WorkerEntrypoint


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        import json  # a module that is not a sibling still comes from the path
        late = __import__("helpers")
        assert late is helpers and same_tools is pkg.tools
        return Response(json.dumps([greeting(), pkg.tools.shout("hi"), helpers.__name__]))
"""


def test_modules_beside_main_import_by_name_and_stay_the_bundles_own(
    loaded: list[LoadedModule],
) -> None:
    def bundle(word: bytes) -> dict[str, bytes]:
        return {
            "src/entry.py": SIBLING_ENTRY,
            "src/helpers.py": b"def greeting():\n    return '" + word + b"'\n",
            "src/pkg/tools.py": b"def shout(text):\n    return text.upper()\n",
        }

    first = load_bundle("one", VERSION_A, bundle(b"hello"), "src/entry.py")
    second = load_bundle("two", VERSION_B, bundle(b"bonjour"), "src/entry.py")
    loaded.extend([first, second])
    answers = [
        asyncio.run(module.fetch(Request("http://x.test/"), {}, None)).body
        for module in (first, second)
    ]
    assert answers == [
        f'["hello", "HI", "{first.package}.src.helpers"]'.encode(),
        f'["bonjour", "HI", "{second.package}.src.helpers"]'.encode(),
    ]
    assert "helpers" not in sys.modules  # nothing leaked to the process's own names


def test_importing_the_subrequest_fetch_does_not_make_it_the_handler(
    loaded: list[LoadedModule],
) -> None:
    source = b"""
from workers import Response, WorkerEntrypoint, fetch


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        return Response("from Default")
"""
    module = load_bundle("cf", VERSION_A, {"src/entry.py": source}, "src/entry.py")
    loaded.append(module)
    response = asyncio.run(module.fetch(Request("http://x.test/"), {}, None))
    assert response.body == b"from Default"
