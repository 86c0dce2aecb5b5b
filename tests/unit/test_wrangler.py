"""Cloudflare wrangler configs (`edgepop/wrangler.py`): Cloudflare's own examples read as
they are, every Cloudflare field edgepop honours, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepop.bundle import BundleError, check_bundle, is_bundle_folder, read_bundle
from edgepop.wrangler import dependencies_of, parse
from tests.cf_examples import cf_example


def jsonc(config: dict[str, object]) -> bytes:
    return json.dumps(config).encode()


BASE = {"name": "demo", "main": "src/entry.py"}


def test_cloudflares_hello_example_reads_as_it_is() -> None:
    folder = cf_example("01-hello")
    assert is_bundle_folder(folder)
    config = check_bundle(read_bundle(folder))
    assert config.name == "hello-python" and config.main == "src/entry.py"
    assert config.routes == () and config.kv_namespaces == {}
    assert set(config.ignored) >= {"compatibility_date", "observability", "$schema"}


def test_cloudflares_kv_example_binds_its_namespace_by_id() -> None:
    config = check_bundle(read_bundle(cf_example("02-binding")))
    # The example's placeholder id, kept to the characters a namespace allows.
    assert config.kv_namespaces == {"FOO": "YOUR_KV_NAMESPACE_ID"}


def test_cloudflares_durable_object_example_binds_its_sqlite_class() -> None:
    config = check_bundle(read_bundle(cf_example("07-durable-objects")))
    assert config.durable_objects == {"LISTS": "List"}
    assert config.sqlite_classes == frozenset({"List"})


def test_cloudflares_d1_example_binds_its_database_by_name() -> None:
    config = check_bundle(read_bundle(cf_example("04-query-d1")))
    assert config.d1_databases == {"DB": "quotes"}


def test_a_d1_binding_needs_a_valid_database_name() -> None:
    for entry, error in (
        ({"binding": "DB"}, r"d1_databases\[0\]\.database_name: required"),
        ({"binding": "DB", "database_name": "no spaces"}, r"database_name: database name"),
    ):
        raw = json.dumps({**BASE, "d1_databases": [entry]}).encode()
        with pytest.raises(BundleError, match=error):
            parse("wrangler.jsonc", raw)


def test_comments_and_trailing_commas_are_jsonc() -> None:
    text = b"""{
        // a comment, and a URL that is not one
        "name": "demo", /* block */ "main": "src/entry.py",
        "vars": {"URL": "https://example.com/x",},
    }"""
    assert parse("wrangler.jsonc", text).vars == {"URL": "https://example.com/x"}


def test_toml_configs_read_the_same() -> None:
    text = b"""name = "demo"
main = "src/entry.py"
routes = ["api.example.com/*"]
[vars]
LIMIT = 100
[limits]
cpu_ms = 20
[[kv_namespaces]]
binding = "CACHE"
id = "0f2ac74b498b48028cb68387c421e279"
[triggers]
crons = ["*/5 * * * *"]
"""
    config = parse("wrangler.toml", text)
    assert config.vars == {"LIMIT": 100} and config.cpu_ms == 20.0
    assert config.kv_namespaces == {"CACHE": "0f2ac74b498b48028cb68387c421e279"}
    assert config.route_patterns == ("api.example.com/*",)
    assert config.crons == ("*/5 * * * *",)


def test_routes_take_cloudflares_object_form_and_drop_the_scheme() -> None:
    config = parse(
        "wrangler.json",
        jsonc(
            {**BASE, "routes": [{"pattern": "https://shop.example.com/api/*", "zone_name": "x"}]}
        ),
    )
    assert config.route_patterns == ("shop.example.com/api/*",)


def test_fields_of_cloudflares_entries_edgepop_does_not_read_are_accepted() -> None:
    config = parse(
        "wrangler.json",
        jsonc(
            {
                **BASE,
                "kv_namespaces": [{"binding": "KV", "id": "abc", "preview_id": "def"}],
                "d1_databases": [{"binding": "DB", "database_name": "q", "database_id": "x"}],
                "routes": [{"pattern": "a.example.com/*", "custom_domain": True}],
                "triggers": {"crons": []},
            }
        ),
    )
    assert config.kv_namespaces == {"KV": "abc"} and config.d1_databases == {"DB": "q"}
    assert config.route_patterns == ("a.example.com/*",) and config.ignored == ()


def test_migrations_rename_and_delete_classes() -> None:
    config = parse(
        "wrangler.json",
        jsonc(
            {
                **BASE,
                "durable_objects": {"bindings": [{"name": "ROOMS", "class_name": "Room"}]},
                "migrations": [
                    {"tag": "v1", "new_sqlite_classes": ["Chat", "Old"]},
                    {"tag": "v2", "renamed_classes": [{"from": "Chat", "to": "Room"}]},
                    {"tag": "v3", "deleted_classes": ["Old"]},
                ],
            }
        ),
    )
    assert config.durable_objects == {"ROOMS": "Room"}
    assert config.sqlite_classes == frozenset({"Room"})


@pytest.mark.parametrize(
    ("config", "names"),
    [
        ({"main": "src/entry.py"}, r"name: required"),
        (
            {"name": "Bad Name", "main": "a.py"},
            r"name: must be 1-63 of \[a-z0-9-\], got 'Bad Name'",
        ),
        ({"name": "demo"}, r"main: required"),
        ({"name": "demo", "main": "src/index.js"}, r"main: must name the worker's Python entry"),
        ({**BASE, "r2_buckets": []}, r"r2_buckets: R2 is not emulated"),
        ({**BASE, "surprise": 1}, r"unknown field\(s\) \['surprise'\]"),
        ({**BASE, "kv_namespaces": [{"binding": "FOO"}]}, r"kv_namespaces\[0\]\.id: "),
        ({**BASE, "kv_namespaces": [{"binding": "1x", "id": "a"}]}, r"kv_namespaces\[0\]\.binding"),
        (
            {**BASE, "durable_objects": {"bindings": [{"name": "L", "class_name": "List"}]}},
            r"durable_objects\.bindings\[0\]\.class_name: 'List' has no migration",
        ),
        (
            {
                **BASE,
                "durable_objects": {
                    "bindings": [{"name": "L", "class_name": "List", "script_name": "other"}]
                },
            },
            r"durable_objects\.bindings\[0\]\.script_name: ",
        ),
        (
            {**BASE, "migrations": [{"tag": "v1"}, {"tag": "v1"}]},
            r"migrations\[1\]\.tag: 'v1' appears twice",
        ),
        ({**BASE, "triggers": {"crons": ["every minute"]}}, r"triggers\.crons\[0\]: "),
        ({**BASE, "limits": {"cpu_ms": -1}}, r"limits\.cpu_ms: "),
        ({**BASE, "limits": {"subrequests": -1}}, r"limits\.subrequests: "),
        ({**BASE, "limits": {"memory_mb": 1}}, r"limits\.memory_mb: unknown field"),
        ({**BASE, "limits": {"cpu_ms": True}}, r"limits\.cpu_ms: must be float, got True"),
        ({**BASE, "routes": ["a.example.com/*", "nopath"]}, r"routes\[1\]: 'nopath' has no path"),
        ({**BASE, "route": None}, r"route: must be a pattern or \{pattern, zone_name\}"),
        (
            {**BASE, "migrations": [{"tag": "v1", "renamed_classes": [{"from": "A"}]}]},
            r"migrations\[0\]\.renamed_classes\[0\]\.to: required",
        ),
        (
            {**BASE, "migrations": [{"tag": "v1", "new_classes": ["Ok", "not ok"]}]},
            r"migrations\[0\]\.new_classes\[1\]: 'not ok' is not a class name",
        ),
        (
            {**BASE, "analytics_engine_datasets": [{"dataset": "d"}]},
            r"analytics_engine_datasets\[0\]\.binding: ",
        ),
    ],
)
def test_bad_configs_are_refused_naming_the_field(config: dict[str, object], names: str) -> None:
    with pytest.raises(BundleError, match=r"^wrangler\.json: " + names):
        parse("wrangler.json", jsonc(config))


def test_a_config_that_is_not_jsonc_names_the_file() -> None:
    with pytest.raises(BundleError, match=r"^wrangler\.jsonc: not valid jsonc"):
        parse("wrangler.jsonc", b'{"name": ')


def test_a_folder_has_one_config(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text("")
    (tmp_path / "wrangler.jsonc").write_text(json.dumps(BASE))
    (tmp_path / "wrangler.toml").write_text('name = "demo"\nmain = "src/entry.py"\n')
    with pytest.raises(BundleError, match=r"found wrangler\.jsonc and wrangler\.toml"):
        read_bundle(tmp_path)


def test_the_entry_module_must_be_in_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "wrangler.jsonc").write_text(json.dumps(BASE))
    with pytest.raises(BundleError, match=r"needs src/entry.py \(its entry module\)"):
        read_bundle(tmp_path)


def test_tool_folders_are_not_deployed(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text("")
    (tmp_path / "wrangler.jsonc").write_text(json.dumps(BASE))
    for tool in ("node_modules", ".wrangler", ".venv"):
        (tmp_path / tool).mkdir()
        (tmp_path / tool / "big.json").write_text("{}")
    paths = {file.path for file in read_bundle(tmp_path).files}
    assert paths == {"src/entry.py", "wrangler.jsonc"}


def test_a_workers_packages_are_read_from_its_pyproject() -> None:
    assert dependencies_of(None) == ()
    assert dependencies_of(b'[project]\nname = "x"\ndependencies = []\n') == ()
    found = dependencies_of(
        b'[project]\nname = "x"\ndependencies = ["FastAPI >= 0.110", "anyio[trio]"]\n'
    )
    assert found == ("FastAPI>=0.110", "anyio[trio]")


@pytest.mark.parametrize(
    ("dependencies", "message"),
    [
        ('["fastapi @ https://example.com/f.whl"]', "not a URL or path"),
        ('["fast api!"]', "project.dependencies"),
        ("[3]", "is not text"),
        ('"fastapi"', "must be a list"),
    ],
)
def test_a_bad_dependency_is_refused_by_name(dependencies: str, message: str) -> None:
    content = f'[project]\nname = "x"\ndependencies = {dependencies}\n'.encode()
    with pytest.raises(BundleError, match=message):
        dependencies_of(content)


def test_a_wrangler_bundle_carries_its_dependencies(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "entry.py").write_text("")
    (tmp_path / "wrangler.jsonc").write_text(json.dumps(BASE))
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["six"]\n')
    assert check_bundle(read_bundle(tmp_path)).dependencies == ("six",)


def test_analytics_datasets_and_subrequest_limits_are_read() -> None:
    config = parse(
        "wrangler.json",
        jsonc(
            {
                **BASE,
                "analytics_engine_datasets": [
                    {"binding": "ANALYTICS", "dataset": "checkout-experiment"},
                    {"binding": "PLAIN"},
                ],
                "limits": {"cpu_ms": 20, "subrequests": 2},
            }
        ),
    )
    assert config.analytics == {"ANALYTICS": "checkout-experiment", "PLAIN": "PLAIN"}
    assert (config.cpu_ms, config.subrequests) == (20.0, 2)
