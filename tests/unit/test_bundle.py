"""Worker bundles (`edgepop/bundle.py`): worker.yaml validation, routes, file checks, the
version hash, and reading a folder. Errors must name what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.v1 import workers_pb2
from edgepop.bundle import (
    BUNDLE_FILE_BYTES_MAX,
    BUNDLE_FILES_MAX,
    CPU_MS_DEFAULT,
    CPU_MS_MAX,
    SUBREQUESTS_DEFAULT,
    SUBREQUESTS_MAX,
    BundleError,
    Route,
    bundle_version,
    check_bundle,
    parse_config,
    parse_route,
    read_bundle,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = ["api-router", "jwt-auth", "ab-test", "personalize", "rate-limit", "middleware"]
FIXTURES = REPO / "tests" / "fixtures" / "workers"
WORKER_PY = b"async def fetch(request, env, ctx):\n    return None\n"


def bundle_of(files: dict[str, bytes]) -> workers_pb2.WorkerBundle:
    return workers_pb2.WorkerBundle(
        files=[
            workers_pb2.WorkerFile(path=path, content=content) for path, content in files.items()
        ]
    )


def minimal(
    extra: dict[str, bytes] | None = None, config: str = "name: demo\nroutes: ['/*']\n"
) -> workers_pb2.WorkerBundle:
    """worker.py, worker.yaml and `extra` files."""
    return bundle_of({"worker.py": WORKER_PY, "worker.yaml": config.encode(), **(extra or {})})


# -- worker.yaml --------------------------------------------------------------------------


def test_a_full_config_parses_into_typed_fields() -> None:
    config = parse_config(
        b"""
name: api-router
routes: ["api.example.com/*", "/exact"]
kv_namespaces: {AUTH_CACHE: auth-cache}
durable_objects: {LIMITER: RateLimiter}
vars: {ORDER_SERVICE_URL: "http://origin/api/v1", RETRIES: 3, DEBUG: true}
secrets: {API_KEY: "s3cret"}
analytics: {ANALYTICS: checkout}
limits: {cpu_ms: 25, subrequests: 7}
"""
    )
    assert config.name == "api-router"
    assert config.route_patterns == ("api.example.com/*", "/exact")
    assert config.routes == (Route("api.example.com", "/", True), Route("", "/exact", False))
    assert config.kv_namespaces == {"AUTH_CACHE": "auth-cache"}
    assert config.durable_objects == {"LIMITER": "RateLimiter"}
    # Scalars become strings, as env vars are in Workers.
    assert config.vars == {
        "ORDER_SERVICE_URL": "http://origin/api/v1",
        "RETRIES": "3",
        "DEBUG": "True",
    }
    assert config.secrets == {"API_KEY": "s3cret"}
    assert config.analytics == {"ANALYTICS": "checkout"}
    assert config.cpu_ms == 25.0
    assert config.subrequests == 7


def test_limits_default_when_not_given() -> None:
    config = parse_config(b"name: x\n")
    assert config.routes == ()
    assert config.cpu_ms == CPU_MS_DEFAULT
    assert config.subrequests == SUBREQUESTS_DEFAULT


@pytest.mark.parametrize(
    ("yaml_text", "names"),
    [
        (b"name: [unclosed", "not valid YAML"),
        (b"- a list", "top level must be a mapping"),
        (b"name: x\nroute: ['/*']\n", "unknown field"),
        (b"routes: ['/*']\n", "worker.yaml:1: name: required"),
        (b"name: Api_Router\n", "name: must be"),
        (b"name: -leading-dash\n", "name: must be"),
        (b"name: " + b"a" * 64 + b"\n", "name: must be"),
        (b"name: x\nroutes: '/*'\n", "routes: must be a list"),
        (b"name: x\nroutes: ['']\n", "non-empty string"),
        (b"name: x\nroutes: [42]\n", "routes\\[0\\]: must be str"),
        (b"name: x\nroutes: ['example.com']\n", "has no path"),
        (b"name: x\nroutes: ['/a*/b']\n", "'*' is allowed only at the end"),
        (b"name: x\nroutes: ['*.example.com/*']\n", "'*' is allowed only at the end"),
        (b"name: x\nlimits: {memory_mb: 128}\n", "limits.memory_mb: unknown field"),
        (b"name: x\nlimits: [1]\n", "limits: must be a mapping"),
        (b"name: x\nlimits: {cpu_ms: 0}\n", "limits.cpu_ms"),
        (b"name: x\nlimits: {cpu_ms: -5}\n", "limits.cpu_ms"),
        (b"name: x\nlimits: {cpu_ms: 30001}\n", "limits.cpu_ms"),
        (b"name: x\nlimits: {cpu_ms: fast}\n", "limits.cpu_ms"),
        (b"name: x\nlimits: {subrequests: -1}\n", "limits.subrequests"),
        (b"name: x\nlimits: {subrequests: 1001}\n", "limits.subrequests"),
        (b"name: x\nlimits: {subrequests: 2.5}\n", "limits.subrequests"),
        (b"name: x\nvars: [A, B]\n", "vars: must be a mapping"),
        (b"name: x\nvars: {1BAD: v}\n", "vars: '1BAD' is not a valid name"),
        (b"name: x\nvars: {A: {nested: map}}\n", "vars.A: must be a string"),
        (b"name: x\nsecrets: {KEY: [1, 2]}\n", "secrets.KEY: must be a string"),
        (b"name: x\nkv_namespaces: {my-kv: ns}\n", "kv_namespaces: 'my-kv' is not a valid name"),
        (b"name: x\ndurable_objects: {'A B': C}\n", "durable_objects: 'A B' is not a valid name"),
        (b"name: x\nanalytics: {A: null}\n", "analytics.A: must be a string"),
    ],
)
def test_invalid_configs_are_rejected_naming_the_problem(yaml_text: bytes, names: str) -> None:
    with pytest.raises(BundleError, match=names.replace("*", r"\*").replace("(", r"\(")):
        parse_config(yaml_text)


def test_a_bad_worker_yaml_names_the_line_and_the_field() -> None:
    text = b"name: api\nroutes:\n  - /api/*\n  - example.com\nlimits:\n  cpu_ms: 20\n"
    with pytest.raises(BundleError, match=r"^worker\.yaml:4: routes\[1\]: .*has no path"):
        parse_config(text)
    fixed = text.replace(b"example.com", b"example.com/*")
    assert parse_config(fixed).cpu_ms == 20.0
    with pytest.raises(BundleError, match=r"^worker\.yaml:6: limits\.cpu_ms: .*greater than 0"):
        parse_config(fixed.replace(b"cpu_ms: 20", b"cpu_ms: 0"))


def test_limits_at_their_bounds_are_accepted() -> None:
    config = parse_config(
        f"name: x\nlimits: {{cpu_ms: {CPU_MS_MAX:.0f}, subrequests: 0}}\n".encode()
    )
    assert config.cpu_ms == CPU_MS_MAX
    assert config.subrequests == 0
    config = parse_config(
        f"name: x\nlimits: {{cpu_ms: 0.5, subrequests: {SUBREQUESTS_MAX}}}\n".encode()
    )
    assert config.cpu_ms == 0.5
    assert config.subrequests == SUBREQUESTS_MAX


# -- routes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "path", "matches"),
    [
        ("api.example.com/*", "api.example.com", "/", True),
        ("api.example.com/*", "api.example.com", "/api/v1/orders", True),
        ("api.example.com/*", "www.example.com", "/api", False),
        ("API.Example.com/*", "api.example.com", "/x", True),
        ("/*", "anything.test", "/x", True),
        ("/exact", "h", "/exact", True),
        ("/exact", "h", "/exact/more", False),
        ("shop.example.com/checkout*", "shop.example.com", "/checkout-v2", True),
        ("shop.example.com/checkout*", "shop.example.com", "/cart", False),
    ],
)
def test_route_matching(pattern: str, host: str, path: str, matches: bool) -> None:
    assert parse_route(pattern).matches(host, path) is matches


def test_more_specific_routes_sort_first_host_then_exact_then_longer_path() -> None:
    patterns = ["/*", "/api/*", "a.test/*", "a.test/api/*", "a.test/api/v1", "/api/v1"]
    ordered = sorted(patterns, key=lambda p: parse_route(p).specificity, reverse=True)
    assert ordered == ["a.test/api/v1", "a.test/api/*", "a.test/*", "/api/v1", "/api/*", "/*"]


# -- files ---------------------------------------------------------------------------------


def test_a_minimal_bundle_checks_and_returns_its_config() -> None:
    assert check_bundle(minimal()).name == "demo"


@pytest.mark.parametrize(
    ("files", "names"),
    [
        ({"worker.yaml": b"name: x\n"}, "needs worker.py"),
        ({"worker.py": WORKER_PY}, "needs worker.yaml"),
        (
            {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "../escape.py": b""},
            "not an allowed path",
        ),
        (
            {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "lib/../x.py": b""},
            "not an allowed path",
        ),
        (
            {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "tool.sh": b""},
            "not an allowed path",
        ),
        (
            {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "a b.py": b""},
            "not an allowed path",
        ),
        (
            {
                "worker.py": WORKER_PY,
                "worker.yaml": b"name: x\n",
                "big.txt": b"x" * (BUNDLE_FILE_BYTES_MAX + 1),
            },
            "is over",
        ),
    ],
)
def test_bad_bundles_are_rejected_naming_the_problem(files: dict[str, bytes], names: str) -> None:
    with pytest.raises(BundleError, match=names):
        check_bundle(bundle_of(files))


def test_a_file_listed_twice_is_rejected() -> None:
    bundle = minimal()
    bundle.files.append(workers_pb2.WorkerFile(path="worker.py", content=b"other"))
    with pytest.raises(BundleError, match="twice"):
        check_bundle(bundle)


def test_too_many_files_are_rejected() -> None:
    extra = {f"m{index}.py": b"" for index in range(BUNDLE_FILES_MAX)}
    with pytest.raises(BundleError, match=f"at most {BUNDLE_FILES_MAX} files"):
        check_bundle(minimal(extra))


def test_the_whole_bundle_is_bounded_in_bytes() -> None:
    chunk = b"x" * BUNDLE_FILE_BYTES_MAX
    extra = {f"data{index}.txt": chunk for index in range(10)}
    with pytest.raises(BundleError, match="the bundle is over"):
        check_bundle(minimal(extra))


def test_nested_files_with_allowed_extensions_are_fine() -> None:
    bundle = minimal(
        {"lib/__init__.py": b"", "lib/helpers.py": b"X = 1\n", "static/page.html": b"<p>"}
    )
    assert check_bundle(bundle).name == "demo"


# -- version -------------------------------------------------------------------------------


def test_the_version_is_a_sha256_of_the_files_independent_of_their_order() -> None:
    files = {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "util.py": b"A = 1\n"}
    forward = bundle_of(files)
    backward = bundle_of(dict(reversed(list(files.items()))))
    version = bundle_version(forward)
    assert len(version) == 64 and int(version, 16) >= 0
    assert bundle_version(backward) == version


@pytest.mark.parametrize(
    "change",
    [
        {"util.py": b"A = 2\n"},  # content
        {"util2.py": b"A = 1\n"},  # a renamed file (same bytes)
        {"extra.txt": b""},  # an added empty file
    ],
)
def test_any_change_to_the_files_changes_the_version(change: dict[str, bytes]) -> None:
    base = {"worker.py": WORKER_PY, "worker.yaml": b"name: x\n", "util.py": b"A = 1\n"}
    changed = dict(base)
    if "util2.py" in change:
        del changed["util.py"]
    changed.update(change)
    assert bundle_version(bundle_of(changed)) != bundle_version(bundle_of(base))


def test_path_and_content_boundaries_cannot_be_shifted_to_collide() -> None:
    # The same concatenated bytes split differently between path and content.
    one = bundle_of({"ab.py": b"c", "worker.py": WORKER_PY})
    two = bundle_of({"a.py": b"bc", "worker.py": WORKER_PY})
    assert bundle_version(one) != bundle_version(two)


# -- reading folders -----------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_reads_and_checks(example: str) -> None:
    bundle = read_bundle(REPO / "workers" / example)
    config = check_bundle(bundle)
    assert (config.name, config.main) == (example, "src/entry.py")
    # Written against Cloudflare's API only: a wrangler config and a Default class.
    assert {f.path for f in bundle.files} == {"wrangler.jsonc", "src/entry.py"}
    entry = next(f.content for f in bundle.files if f.path == "src/entry.py")
    assert b"class Default(WorkerEntrypoint)" in entry
    assert b"edgepop" not in entry


def test_reading_a_folder_skips_caches_and_other_file_types(tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_bytes(WORKER_PY)
    (tmp_path / "worker.yaml").write_text("name: demo\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helpers.py").write_text("X = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "worker.cpython-311.pyc").write_bytes(b"\x00")
    (tmp_path / "lib" / "__pycache__").mkdir()
    (tmp_path / "lib" / "__pycache__" / "cached.py").write_text("stale\n")
    (tmp_path / "notes.md").write_text("not deployed\n")
    (tmp_path / ".env").write_text("SECRET=1\n")
    bundle = read_bundle(tmp_path)
    assert sorted(f.path for f in bundle.files) == ["lib/helpers.py", "worker.py", "worker.yaml"]


def test_reading_the_same_folder_twice_gives_the_same_version() -> None:
    folder = FIXTURES / "echo"
    assert bundle_version(read_bundle(folder)) == bundle_version(read_bundle(folder))


def test_reading_a_missing_folder_or_a_folder_without_config_fails(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a folder"):
        read_bundle(tmp_path / "missing")
    (tmp_path / "worker.py").write_bytes(WORKER_PY)
    with pytest.raises(BundleError, match=r"needs worker\.yaml"):
        read_bundle(tmp_path)
