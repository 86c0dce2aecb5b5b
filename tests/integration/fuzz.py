"""Hypothesis strategies for fuzzing a running cluster: every edge.v1 RPC, and raw HTTP.

The gRPC side is built from the protobuf descriptors, so a method or field added to a
.proto is fuzzed without a change here. Each field gets values by its type (empty,
boundary sizes around the named limits, NUL bytes, invalid UTF-8 where the wire allows it,
integers at 0 / negative / maximum, unknown enum values, repeated fields empty and over
their limit) and, where the field has a meaning the cluster checks, "valid" values taken
from the cluster under test (its regions, nodes, KV namespaces and keys, object classes
and methods). A request is drawn in one of three modes:

- `valid`: every field valid (so calls reach the deepest checks and real work is done);
- `almost`: valid, then one or two fields replaced with a random value of their type;
- `random`: every field random or unset.

On top, a request may go out as mangled bytes: an unknown field appended (proto3 keeps
it), a string field carrying invalid UTF-8, or random bytes. Each call is sent with the
cluster token, with none, or with a wrong one.

Sizes far beyond a limit (a 25 MiB value) cost real bandwidth, so the random strategies
stop at 64 KiB and the large boundaries are left to explicit cases in the tests.
"""

from __future__ import annotations

import functools
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import hypothesis
from google.protobuf import message_factory, text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import strategies as st

from edge.v1 import control_plane_pb2, origin_pb2, pop_pb2
from edgepop import objectid
from edgepop.kvstore import encode_cursor

# `make test` replays one fixed sequence of requests (derandomized), which moves only when
# a strategy changes; `make fuzz` draws another from this seed. That is how a run finds
# what the fixed one misses (SQL text holding a NUL was found when the draws moved).
FUZZ_SEED_ENV = "EDGEPOP_FUZZ_SEED"
_Test = TypeVar("_Test", bound=Callable[..., Any])


def reseeded(test: _Test) -> _Test:
    """`test` drawing from the seed in EDGEPOP_FUZZ_SEED when it is set (a seed overrides
    `derandomize`); unchanged otherwise."""
    value = os.environ.get(FUZZ_SEED_ENV, "").strip()
    if not value:
        return test
    seeded: _Test = hypothesis.seed(int(value))(test)
    return seeded


Strategy = st.SearchStrategy

# -- the API, read from the descriptors ------------------------------------------------------

PROTO_DIR = Path(__file__).resolve().parents[2] / "proto" / "edge" / "v1"
_SERVICE_RE = re.compile(r"^service (\w+) \{")
_RPC_RE = re.compile(r"^\s*rpc (\w+)\(")


def token_methods(proto_dir: Path = PROTO_DIR) -> frozenset[str]:
    """Methods whose comment in the .proto says they need the cluster token.

    The wire API is the spec (DESIGN.md: register, stream, faults, deploy and placement
    need the token): the fuzz holds the servers to what each method's comment promises,
    and a method added later is covered without a change here.
    """
    found = set()
    for proto in sorted(proto_dir.glob("*.proto")):
        service = ""
        comment: list[str] = []
        for line in proto.read_text().splitlines():
            stripped = line.strip()
            if match := _SERVICE_RE.match(stripped):
                service = match.group(1)
            elif stripped.startswith("//"):
                comment.append(stripped)
                continue
            elif (match := _RPC_RE.match(line)) and "(cluster token)" in " ".join(comment):
                found.add(f"{service}/{match.group(1)}")
            comment = []
    return frozenset(found)


INTERNAL_METHODS = token_methods()


@dataclass(frozen=True)
class Rpc:
    """One method of one edge.v1 service."""

    service: str
    name: str
    request: type[Message]
    response: type[Message]
    client_streaming: bool
    server_streaming: bool

    @property
    def key(self) -> str:
        return f"{self.service}/{self.name}"

    @property
    def path(self) -> str:
        return f"/edge.v1.{self.service}/{self.name}"

    @property
    def internal(self) -> bool:
        return self.key in INTERNAL_METHODS


def _rpc(service: str, method: MethodDescriptor) -> Rpc:
    return Rpc(
        service,
        method.name,
        message_factory.GetMessageClass(method.input_type),
        message_factory.GetMessageClass(method.output_type),
        method.client_streaming,
        method.server_streaming,
    )


RPCS: tuple[Rpc, ...] = tuple(
    _rpc(service.name, method)
    for module in (pop_pb2, origin_pb2, control_plane_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
)
RPC_BY_KEY = {rpc.key: rpc for rpc in RPCS}

# -- the cluster under test ------------------------------------------------------------------

LONG_TEXT = "k" * 600  # past the 400-byte storage key limit once prefixed
OBJECT_CLASSES: dict[str, dict[str, list[str]]] = {
    # class -> method -> argument JSON a client may send: correct, and wrong in the ways
    # the object's own code must turn into a clear error.
    "Counter": {
        "increment": ["", "[1]", '{"by": 3}', "[-2]", '{"by": "x"}', '{"nope": 1}', "[1e308]"],
        "get": ["", "[1, 2, 3]"],
    },
    "RateLimiter": {
        "check": [
            '{"key": "a"}',
            '["b", 5, 1.0]',
            "",
            f'{{"key": "{LONG_TEXT}"}}',
            '{"key": "a", "limit": -1}',
            '{"window_s": NaN}',
        ],
    },
    "DocumentSession": {
        "apply": ['[{"insert": "x"}]', '["op"]', '["' + "x" * 200_000 + '"]'],
        "ops": ["", "[0]", "[0, 10]", '{"since": -5, "limit": -1}'],
        "head": [""],
    },
    "Lock": {
        "acquire": ['["fuzz-holder"]', '["fuzz-holder", 0.5]', '["", 1]', '["h", "nan"]'],
        "release": ['["fuzz-holder", 1]', '["fuzz-holder", "x"]'],
        "status": [""],
    },
}
SESSION_DATA = [
    '{"type": "hello", "last_seen": 0}',
    '{"type": "hello", "last_seen": 3}',
    '{"type": "op", "op": {"insert": "y"}}',
    '{"type": "nope"}',
    "not json",
    "[]",
    "",
]


# Statements for SQL queries: reads, writes, errors, and what is refused.
SQL_STATEMENTS = (
    "SELECT * FROM t",
    "SELECT v FROM t WHERE id = ?",
    "SELECT count(*) FROM t",
    "INSERT INTO t (v) VALUES (?)",
    "UPDATE t SET v = ? WHERE id = 1",
    "DELETE FROM t WHERE id > 5",
    "SELECT * FROM missing",
    "SELEKT 1",
    "BEGIN",
    "PRAGMA journal_mode=DELETE",
    "ATTACH DATABASE 'x' AS x",
    "SELECT * FROM _edgepop_meta",
    "CREATE TEMP TABLE tmp (x)",
    "",
)


@dataclass(frozen=True)
class FuzzContext:
    """What exists in the cluster under test: the valid values requests are built from."""

    regions: tuple[str, ...]
    node_names: tuple[str, ...]
    pop_names: tuple[str, ...]
    kv_namespaces: tuple[str, ...]
    kv_keys: tuple[str, ...]
    object_names: tuple[str, ...]
    worker_names: tuple[str, ...] = ()
    worker_versions: tuple[str, ...] = ()
    # Classes whose objects ObjectReplicate may write to (never the ones the fuzz calls:
    # a trusted caller with the token can depose an owner, which is not what is tested).
    replicate_namespaces: tuple[str, ...] = ("FuzzReplica",)
    # SQL databases that exist (each with a table t (id, v)).
    sql_databases: tuple[str, ...] = ()


# -- generic values by type ------------------------------------------------------------------

# Byte sizes around every named limit (namespace 64, key 512, metadata 1024, request id 64,
# object name 1024, class namespace 128, URL 16 KiB) and a few far beyond.
BOUNDARY_SIZES = (1, 2, 63, 64, 65, 127, 128, 129, 500, 501, 511, 512, 513, 1023, 1024, 1025)
LARGE_SIZES = (16 * 1024 + 1, 64 * 1024 + 1)
# One character of each UTF-8 length, and NUL: boundary strings made of them end exactly
# on (or one character past) a byte limit.
UNITS = ("a", "\x00", "é", "€", "💥")
SPECIAL_STRINGS = (
    "",
    " ",
    ".",
    "..",
    "/",
    "\x00",
    "a\x00b",
    "\t\r\n",
    "../../etc/passwd",
    "%00",
    "\u202e",
    "\ufeff",
    "\U0010ffff",
    "null",
    "NaN",
    "Infinity",
    "-1",
    "[]",
    "{}",
    '{"a": NaN}',
    "[" * 2000,
    "0" * 64,
    "f" * 64,
    "F" * 64,
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "0x" + "0" * 62,
    "localhost:0",
    "127.0.0.1:1",
    "[::1]:99999",
    "unix:/nonexistent",
    "us-east-1",
    "tokyo",
    "Counter",
    "a.Counter",
    "a" * 1024 + ".Counter",
)
INVALID_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b", b"\xc0\xaf")
DOUBLES = (0.0, -0.0, 1.0, -1.0, 0.5, 0.999999, 2.0, 1e-9, 5e-324, 1e308, -1e308)
DOUBLES_NONFINITE = (math.nan, math.inf, -math.inf)

INT_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def sized_text(sizes: Sequence[int] = BOUNDARY_SIZES) -> Strategy[str]:
    """A string of one repeated character whose UTF-8 length is about `size` bytes."""
    return st.builds(
        lambda unit, size: unit * max(1, size // len(unit.encode())),
        st.sampled_from(UNITS),
        st.sampled_from(sizes),
    )


def any_text() -> Strategy[str]:
    return st.one_of(
        st.sampled_from(SPECIAL_STRINGS),
        st.text(max_size=24),
        sized_text(),
        sized_text(LARGE_SIZES),
    )


def any_bytes() -> Strategy[bytes]:
    return st.one_of(
        st.just(b""),
        st.binary(max_size=48),
        st.sampled_from(INVALID_UTF8),
        # Sizes are drawn, content repeated: hypothesis stays cheap for large values.
        st.builds(
            lambda unit, size: unit * size,
            st.sampled_from([b"\x00", b"\xff", b"v"]),
            st.sampled_from(BOUNDARY_SIZES + LARGE_SIZES),
        ),
    )


def any_int(field_type: int) -> Strategy[int]:
    low, high = INT_RANGES[field_type]
    boundaries = sorted(
        {
            value
            for value in (
                0,
                1,
                -1,
                2,
                low,
                high,
                high - 1,
                2**31 - 1,
                2**31,
                2**53 + 1,
                -(2**31),
                10**6,
            )
            if low <= value <= high
        }
    )
    return st.one_of(
        st.sampled_from(boundaries),
        st.integers(low, high),
        st.integers(-3, 64).filter(lambda value: low <= value <= high),
    )


def any_double() -> Strategy[float]:
    return st.one_of(
        st.sampled_from(DOUBLES + DOUBLES_NONFINITE), st.floats(allow_nan=True, allow_infinity=True)
    )


def any_enum(descriptor: FieldDescriptor) -> Strategy[int]:
    defined = [value.number for value in descriptor.enum_type.values]
    # proto3 enums are open: an unknown number is kept and reaches the handler.
    return st.one_of(
        st.sampled_from(defined),
        st.sampled_from([-1, max(defined) + 1, 2**31 - 1, -(2**31)]),
        st.integers(-(2**31), 2**31 - 1),
    )


def any_scalar(descriptor: FieldDescriptor) -> Strategy[Any]:
    kind = descriptor.type
    if kind == FieldDescriptor.TYPE_STRING:
        return any_text()
    if kind == FieldDescriptor.TYPE_BYTES:
        return any_bytes()
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return any_enum(descriptor)
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return any_double()
    if kind in INT_RANGES:
        return any_int(kind)
    raise AssertionError(f"no strategy for field type {kind} ({descriptor.full_name})")


# -- valid values, from the cluster ----------------------------------------------------------

# Repeated fields with a named limit: the fuzz sends limit + 1 elements sometimes.
REPEATED_LIMITS: dict[tuple[str, str], int] = {
    ("KvGetManyRequest", "keys"): 100,
    ("KvPutManyRequest", "entries"): 10_000,
    ("WorkerBundle", "files"): 100,
}

ValidBuilder = Callable[[FuzzContext], Strategy[dict[str, Any]]]


def _hex_id(namespace: str, name: str) -> str:
    try:
        return objectid.id_from_name(namespace, name).hex()
    except Exception:  # an invalid namespace or name: the id is the fuzz's problem
        return "0" * 64


def _valid_object_ref(ctx: FuzzContext, classes: Sequence[str]) -> Strategy[dict[str, Any]]:
    """namespace + exactly one of name / id, of an object the cluster may hold."""

    def build(namespace: str, name: str, by_id: bool) -> dict[str, Any]:
        if by_id:
            return {"namespace": namespace, "id": _hex_id(namespace, name)}
        return {"namespace": namespace, "name": name}

    return st.builds(
        build, st.sampled_from(list(classes)), st.sampled_from(ctx.object_names), st.booleans()
    )


def _valid_object_call(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        values = draw(_valid_object_ref(ctx, list(OBJECT_CLASSES)))
        methods = OBJECT_CLASSES[values["namespace"]]
        method = draw(st.sampled_from(sorted(methods)))
        values["method"] = method
        values["args_json"] = draw(st.sampled_from(methods[method]))
        values["request_id"] = draw(st.sampled_from(["", "", "fuzz-rid"]) | st.uuids().map(str))
        values["location_hint"] = draw(st.sampled_from(["", *ctx.regions]))
        return values

    return build()


def _valid_object_open(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    return st.builds(
        lambda ref, hint: {**ref, "location_hint": hint},
        _valid_object_ref(ctx, ["DocumentSession", "Counter"]),
        st.sampled_from(["", *ctx.regions]),
    )


def _valid_locate(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    def build(namespace: str, name: str, region: str, hint: str) -> dict[str, Any]:
        return {
            "namespace": namespace,
            "id": _hex_id(namespace, name),
            "region": region,
            "location_hint": hint,
        }

    return st.builds(
        build,
        st.sampled_from([*OBJECT_CLASSES, "FuzzLocated"]),
        st.sampled_from(ctx.object_names),
        st.sampled_from(ctx.regions),
        st.sampled_from(["", *ctx.regions]),
    )


def _valid_confirm_standby(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    def build(
        namespace: str, name: str, owner: str, standby: str, epoch: int, seq: int
    ) -> dict[str, Any]:
        return {
            "namespace": namespace,
            "id": _hex_id(namespace, name),
            "owner": owner,
            "epoch": epoch,
            "standby": standby,
            "seq": seq,
        }

    return st.builds(
        build,
        st.sampled_from(["FuzzLocated", *OBJECT_CLASSES]),
        st.sampled_from(ctx.object_names),
        st.sampled_from(ctx.pop_names),
        st.sampled_from(ctx.pop_names),
        st.integers(0, 3),
        st.integers(0, 5),
    )


def _valid_replica_update(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    def build(namespace: str, name: str, epoch: int, seq: int, full: bool) -> dict[str, Any]:
        return {
            "namespace": namespace,
            "id": bytes.fromhex(_hex_id(namespace, name)),
            "epoch": epoch,
            "base_seq": seq,
            "seq": seq + 1,
            "full": full,
        }

    return st.builds(
        build,
        st.sampled_from(ctx.replicate_namespaces),
        st.sampled_from(ctx.object_names),
        st.integers(0, 5),
        st.integers(0, 5),
        st.booleans(),
    )


WORKER_YAML = "name: {name}\nroutes: ['{name}.fuzz.test/*']\nvars: {{V: '{var}'}}\n"
WORKER_PY = (
    b"async def fetch(request, env, ctx):\n"
    b"    from edgepop import worker_api as edge\n"
    b"    return edge.Response('fuzz ' + env.V)\n"
)
BAD_WORKER_SOURCES = (
    b"def fetch(:\n",  # a syntax error
    b"raise RuntimeError('module body fails')\n",
    b"fetch = 3\n",
    b"",
    b"\xff\xfe not utf-8\n",
)


def _valid_bundle(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    def build(name: str, var: str, source: bytes) -> dict[str, Any]:
        return {
            "files": [
                {"path": "worker.yaml", "content": WORKER_YAML.format(name=name, var=var).encode()},
                {"path": "worker.py", "content": source},
            ]
        }

    return st.builds(
        build,
        st.sampled_from(ctx.worker_names),
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from([WORKER_PY, WORKER_PY, *BAD_WORKER_SOURCES]),
    )


def _valid_deploy(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    return st.one_of(
        st.builds(lambda bundle: {"bundle": bundle}, _valid_bundle(ctx)),
        st.builds(lambda name: {"rollback": True, "name": name}, st.sampled_from(ctx.worker_names)),
    )


def _valid_register(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    def build(name: str, region: str, role: int) -> dict[str, Any]:
        return {
            "node": {
                "name": name,
                "region": region,
                "role": role,
                # Nothing listens there: a registered fake node never answers.
                "grpc_address": "127.0.0.1:9",
                "http_address": "127.0.0.1:9",
                "metrics_address": "127.0.0.1:9",
                "pid": 1,
            }
        }

    return st.builds(
        build,
        st.sampled_from(["fuzz-node-1", "fuzz-node-2"]),
        st.sampled_from(ctx.regions),
        st.sampled_from([1, 2, 3]),
    )


def _valid_set_fault(ctx: FuzzContext) -> Strategy[dict[str, Any]]:
    regions = ctx.regions

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        pair = draw(st.lists(st.sampled_from(regions), min_size=2, max_size=2, unique=True))
        values: dict[str, Any] = {"from_region": pair[0], "to_region": pair[1]}
        for name, strategy in (
            ("delay_ms", st.floats(0, 50)),
            ("jitter_ms", st.floats(0, 10)),
            ("loss", st.floats(0, 0.5)),
            ("partitioned", st.booleans()),
        ):
            if draw(st.booleans()):
                values[name] = draw(strategy)
        values["one_way"] = draw(st.booleans())
        values["duration_s"] = draw(st.sampled_from([0.0, 0.5, 60.0]))
        return values

    return build()


def _expiration() -> Strategy[int]:
    # Absolute: drawn as an offset, made absolute when drawn (a minute to a year ahead).
    return st.integers(60, 365 * 86_400).map(lambda offset: int(time.time()) + offset)


def valid_builders(ctx: FuzzContext) -> dict[str, ValidBuilder]:
    """Messages whose fields must agree with each other to be valid."""
    del ctx
    return {
        "ObjectCallRequest": _valid_object_call,
        "ObjectOpen": _valid_object_open,
        "ObjectIdRequest": lambda c: _valid_object_ref(c, list(OBJECT_CLASSES)),
        "LocateObjectRequest": _valid_locate,
        "ConfirmStandbyRequest": _valid_confirm_standby,
        "ObjectReplicaUpdate": _valid_replica_update,
        "WorkerBundle": _valid_bundle,
        "DeployRequest": _valid_deploy,
        "RegisterNodeRequest": _valid_register,
        "SetLinkFaultRequest": _valid_set_fault,
    }


def field_hints(ctx: FuzzContext) -> dict[tuple[str, str], Strategy[Any]]:
    """Valid values of single fields, by (message, field); "*" matches any message."""
    kv_key = st.one_of(
        st.sampled_from(ctx.kv_keys),
        st.text("abcdefgh-_/:.", min_size=1, max_size=12).map(lambda text: "fuzz-" + text),
    )
    region = st.sampled_from(ctx.regions)
    node = st.sampled_from(ctx.node_names)
    request_id = st.one_of(st.just(""), st.uuids().map(str), st.just("fuzz-rid"))
    metadata = st.sampled_from(["", "{}", '{"a": 1}', "[1, 2]", '"s"', "null", "1.5"])
    consistency = st.sampled_from([0, 1, 2])
    version = st.one_of(st.sampled_from(ctx.worker_versions or ("0" * 64,)), st.just("f" * 64))
    database = st.sampled_from(ctx.sql_databases or ("none",))
    return {
        ("*", "namespace"): st.sampled_from(ctx.kv_namespaces),
        ("*", "key"): kv_key,
        ("*", "keys"): st.lists(kv_key, min_size=1, max_size=8),
        ("*", "value"): st.binary(max_size=32),
        ("*", "metadata_json"): metadata,
        ("*", "expiration"): st.one_of(st.just(0), _expiration()),
        ("*", "expiration_ttl"): st.one_of(st.just(0), st.integers(1, 86_400)),
        ("*", "request_id"): request_id,
        ("*", "consistency"): consistency,
        ("*", "min_seq"): st.integers(0, 50),
        ("KvListRequest", "prefix"): st.sampled_from(["", "fuzz-", "k", "fuzz-a"]),
        ("KvListRequest", "limit"): st.sampled_from([0, 1, 2, 10, 1000]),
        ("KvListRequest", "cursor"): st.one_of(
            st.just(""), st.sampled_from(ctx.kv_keys).map(lambda key: encode_cursor(key.encode()))
        ),
        ("KvPutManyRequest", "entries"): st.lists(
            st.fixed_dictionaries(
                {"key": kv_key, "value": st.binary(max_size=16)},
                optional={"metadata_json": metadata, "expiration_ttl": st.integers(1, 86_400)},
            ),
            min_size=1,
            max_size=5,
        ),
        ("ObjectClientMessage", "data"): st.sampled_from(SESSION_DATA),
        ("SubscribeRequest", "node"): node,
        ("SubscribeRequest", "from_seq"): st.sampled_from([0, 1, 2, 10**9, 2**64 - 1]),
        ("HeartbeatRequest", "name"): node,
        ("HeartbeatRequest", "incarnation"): st.integers(0, 5),
        ("RouteRequest", "region"): region,
        ("RouteRequest", "client_id"): st.sampled_from(["", "client-1", "client-2"]),
        ("ClearFaultsRequest", "from_region"): region,
        ("ClearFaultsRequest", "to_region"): region,
        ("LocateObjectRequest", "unreachable_standby"): st.sampled_from(["", *ctx.pop_names]),
        ("LocateObjectRequest", "requester"): st.sampled_from(["", *ctx.pop_names]),
        ("ObjectReplicateRequest", "owner"): node,
        ("GetWorkerBundleRequest", "name"): st.sampled_from(ctx.worker_names or ("none",)),
        ("GetWorkerBundleRequest", "version"): version,
        ("SqlQueryRequest", "database"): database,
        ("SqlDumpRequest", "database"): database,
        ("SqlCreateRequest", "name"): st.one_of(
            database, st.text("abcdef-_", min_size=1, max_size=8).map(lambda t: "fuzz-" + t)
        ),
        ("SqlQueryRequest", "bookmark"): st.sampled_from(
            ["", "0000000000000001", "00000000000000ff", "ffffffffffffffff", "bookmark"]
        ),
        ("SqlStatement", "sql"): st.sampled_from(SQL_STATEMENTS),
        ("ObjectWrite", "key"): st.binary(min_size=1, max_size=16),
        ("ObjectWrite", "value"): st.binary(max_size=32),
    }


# -- messages ----------------------------------------------------------------------------------


def _synthetic(oneof_name: str) -> bool:
    # proto3 `optional` fields sit in a synthetic oneof named after the field ("_loss").
    return oneof_name.startswith("_")


def _in_real_oneof(descriptor: FieldDescriptor) -> bool:
    oneof = descriptor.containing_oneof
    return oneof is not None and not _synthetic(oneof.name)


MODES = ("valid", "almost", "almost", "random")
MESSAGE_DEPTH_MAX = 3


class MessageStrategies:
    """Strategies for every message type, in the three modes, for one cluster.

    Field values are plain Python data (dicts for sub-messages, lists for repeated
    fields); `to_message` builds the protobuf at the end. Strategies are built once per
    (message, mode, depth) and reused: building them per draw costs more than drawing.
    """

    def __init__(self, ctx: FuzzContext) -> None:
        self.ctx = ctx
        self.hints = field_hints(ctx)
        self.builders = valid_builders(ctx)
        self._cache: dict[tuple[str, str, int], Strategy[dict[str, Any]]] = {}

    def _hint(self, message: Descriptor, descriptor: FieldDescriptor) -> Strategy[Any] | None:
        hint = self.hints.get((message.name, descriptor.name))
        if hint is None:
            hint = self.hints.get(("*", descriptor.name))
        return hint

    def random_field(self, descriptor: FieldDescriptor, depth: int) -> Strategy[Any]:
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            element: Strategy[Any] = self.values(descriptor.message_type, "random", depth + 1)
            small: Strategy[Any] = st.just({})
        else:
            element = any_scalar(descriptor)
            small = st.just(_zero(descriptor))
        if not descriptor.is_repeated:
            return element
        limit = REPEATED_LIMITS.get((descriptor.containing_type.name, descriptor.name))
        choices = [st.just([]), st.lists(element, min_size=1, max_size=4)]
        if limit is not None:
            # limit + 1 elements: over the limit. Small ones (a valid one, or an empty
            # one), so that the request stays far under the message limit.
            valid = self.valid_field(descriptor.containing_type, descriptor, depth)
            one = small if valid is None else st.one_of(small, valid.map(lambda values: values[0]))
            choices.append(one.map(lambda value: [value] * (limit + 1)))
        return st.one_of(*choices)

    def valid_field(
        self, message: Descriptor, descriptor: FieldDescriptor, depth: int
    ) -> Strategy[Any] | None:
        """A valid value of one field, or None: leave it unset."""
        hint = self._hint(message, descriptor)
        if hint is not None:
            return hint
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            element = self.values(descriptor.message_type, "valid", depth + 1)
            if descriptor.is_repeated:
                return st.lists(element, min_size=1, max_size=3)
            return element
        return None

    def values(self, message: Descriptor, mode: str, depth: int = 0) -> Strategy[dict[str, Any]]:
        """Field values of one `message` drawn in `mode`."""
        if depth > MESSAGE_DEPTH_MAX:
            return st.just({})
        key = (message.full_name, mode, depth)
        cached = self._cache.get(key)
        if cached is None:
            if mode == "random":
                cached = self._random(message, depth)
            elif mode == "valid":
                cached = self._valid(message, depth)
            else:
                cached = self._almost(message, self.values(message, "valid", depth), depth)
            self._cache[key] = cached
        return cached

    def _valid(self, message: Descriptor, depth: int) -> Strategy[dict[str, Any]]:
        builder = self.builders.get(message.name)
        if builder is not None:
            return builder(self.ctx)
        fields: dict[str, Strategy[Any]] = {}
        for descriptor in message.fields:
            strategy = self.valid_field(message, descriptor, depth)
            if strategy is not None and not _in_real_oneof(descriptor):
                fields[descriptor.name] = strategy
        base = st.fixed_dictionaries(fields)
        members = [
            st.tuples(st.just(member.name), self._member(message, member, depth))
            for oneof in message.oneofs
            if not _synthetic(oneof.name)
            for member in oneof.fields
        ]
        if not members:
            return base
        # A real oneof: set one member.
        return st.builds(
            lambda values, chosen: {**values, chosen[0]: chosen[1]}, base, st.one_of(*members)
        )

    def _member(self, message: Descriptor, member: FieldDescriptor, depth: int) -> Strategy[Any]:
        valid = self.valid_field(message, member, depth)
        return valid if valid is not None else self.random_field(member, depth)

    def _almost(
        self, message: Descriptor, valid: Strategy[dict[str, Any]], depth: int
    ) -> Strategy[dict[str, Any]]:
        if not message.fields:
            return valid
        # One or two fields replaced with a random value of their type, or left unset.
        replacements = st.one_of(
            *(
                st.tuples(
                    st.just(descriptor.name),
                    st.one_of(st.just(_UNSET), self.random_field(descriptor, depth)),
                )
                for descriptor in message.fields
            )
        )

        def apply(values: dict[str, Any], changes: list[tuple[str, Any]]) -> dict[str, Any]:
            changed = dict(values)
            for name, value in changes:
                if value is _UNSET:
                    changed.pop(name, None)
                else:
                    changed[name] = value
            return changed

        return st.builds(apply, valid, st.lists(replacements, min_size=1, max_size=2))

    def _random(self, message: Descriptor, depth: int) -> Strategy[dict[str, Any]]:
        optional = {
            descriptor.name: self.random_field(descriptor, depth) for descriptor in message.fields
        }
        return st.fixed_dictionaries({}, optional=optional)


_UNSET = object()


def _zero(descriptor: FieldDescriptor) -> Any:
    """The default value of one element of a (repeated) scalar field."""
    if descriptor.type == FieldDescriptor.TYPE_STRING:
        return ""
    if descriptor.type == FieldDescriptor.TYPE_BYTES:
        return b""
    if descriptor.type == FieldDescriptor.TYPE_BOOL:
        return False
    if descriptor.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 0.0
    return 0


def to_message(cls: type[Message], values: dict[str, Any]) -> Message:
    """Build a message from plain values (dicts for sub-messages, lists for repeated)."""
    message = cls()
    descriptor = message.DESCRIPTOR
    for name, value in values.items():
        field_descriptor = descriptor.fields_by_name[name]
        if field_descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            sub_cls = message_factory.GetMessageClass(field_descriptor.message_type)
            if field_descriptor.is_repeated:
                getattr(message, name).extend(to_message(sub_cls, item) for item in value)
            else:
                getattr(message, name).CopyFrom(to_message(sub_cls, value))
        elif field_descriptor.is_repeated:
            getattr(message, name).extend(value)
        else:
            setattr(message, name, value)
    return message


# -- wire-level mangling -------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One length-delimited field (strings, bytes, messages) in wire format."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def string_fields(cls: type[Message]) -> list[int]:
    return [f.number for f in cls.DESCRIPTOR.fields if f.type == FieldDescriptor.TYPE_STRING]


Mangling = Callable[[bytes], bytes]


def manglings(cls: type[Message]) -> Strategy[Mangling]:
    """Ways a peer could send bytes that are not (quite) this message (applied to it)."""
    strings = string_fields(cls)
    garbage = [b"\xff", b"\x80" * 11, b"\x0f", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05ab"]
    choices: list[Strategy[Mangling]] = [
        # An unknown field (proto3 keeps it): the message must still be served.
        st.builds(
            lambda number, extra: lambda encoded: encoded + length_delimited(number, extra),
            st.integers(100, 2**29 - 1),
            st.binary(max_size=16),
        ),
        # Garbage: truncated varints, bad wire types, lengths past the end.
        st.sampled_from(garbage).map(lambda junk: lambda encoded: junk),
        st.just(lambda encoded: encoded + b"\x80"),
        st.binary(min_size=1, max_size=32).map(lambda junk: lambda encoded: junk),
    ]
    if strings:
        # proto3 strings must be UTF-8: the parser refuses these.
        choices.append(
            st.builds(
                lambda number, bad: lambda encoded: encoded + length_delimited(number, bad),
                st.sampled_from(strings),
                st.sampled_from(INVALID_UTF8),
            )
        )
    return st.one_of(*choices)


def parse_or_none(cls: type[Message], payload: bytes) -> Message | None:
    """The message the server will see, or None when the bytes do not parse."""
    try:
        return cls.FromString(payload)
    except (DecodeError, RuntimeError, ValueError):
        return None


# -- calls ---------------------------------------------------------------------------------------

AUTH_MODES = ("token", "token", "token", "none", "wrong")
# Caller metadata: no region (most), a real region, nonsense; send times that are garbage.
REGION_METADATA: tuple[tuple[tuple[str, str], ...], ...] = (
    (),
    (),
    (),
    (("x-edge-region", "tokyo"),),
    (("x-edge-region", "atlantis"),),
    (("x-edge-region", "tokyo"), ("x-edge-sent-at", "nan")),
    (("x-edge-region", "london"), ("x-edge-sent-at", "-1e308")),
    (("x-edge-region", "us-east-1"), ("x-edge-node", "fuzz"), ("x-edge-sent-at", "inf")),
)


@dataclass
class FuzzCall:
    """One generated call: where it goes, what bytes it carries, with what credentials."""

    rpc: Rpc
    target: str
    payload: bytes
    mode: str
    auth: str
    metadata: tuple[tuple[str, str], ...]
    # Bidi streams: the messages after the first.
    more: list[bytes] = field(default_factory=list)

    @functools.cached_property
    def request(self) -> Message | None:
        """The request as the server parses it (None: the bytes are not the message)."""
        return parse_or_none(self.rpc.request, self.payload)

    def describe(self, limit: int = 600) -> str:
        parsed = self.request
        if parsed is None:
            body = f"<{len(self.payload)} bytes that do not parse: {self.payload[:80]!r}>"
        else:
            text = text_format.MessageToString(parsed, as_one_line=True)
            body = f"{type(parsed).__name__}({text[:limit]})"
        extra = f" +{len(self.more)} stream messages" if self.more else ""
        return (
            f"{self.rpc.key} -> {self.target} [{self.mode}, auth={self.auth},"
            f" metadata={dict(self.metadata)}]{extra}: {body}"
        )


def targets_for(rpc: Rpc, ctx: FuzzContext) -> list[str]:
    if rpc.service == "Pop":
        return list(ctx.pop_names)
    if rpc.service == "Origin":
        return ["origin"]
    return ["control-plane"]


def call_for(ctx: FuzzContext, rpc: Rpc, messages: MessageStrategies) -> Strategy[FuzzCall]:
    """A call to `rpc`, in any mode, with any credentials."""
    descriptor = rpc.request.DESCRIPTOR
    request = st.one_of(
        *(
            messages.values(descriptor, mode).map(
                lambda values, mode=mode: (
                    mode,
                    to_message(rpc.request, values).SerializeToString(),
                )
            )
            for mode in MODES
        )
    )

    mangled = st.builds(
        lambda chosen, mangling: ("wire", mangling(chosen[1])), request, manglings(rpc.request)
    )
    # About one request in eight goes out mangled.
    payload = st.one_of(*[request] * 7, mangled)
    more: Strategy[list[bytes]] = st.just([])
    if rpc.client_streaming:
        data: Strategy[bytes]
        if "data" in rpc.request.DESCRIPTOR.fields_by_name:  # a session's later messages
            data = st.one_of(st.sampled_from(SESSION_DATA), any_text()).map(
                lambda text: rpc.request(data=text).SerializeToString()
            )
        else:  # any other stream (the standby's copies): more requests like the first
            data = request.map(_payload)
        # Now and then a later message that does not parse (the session must still end).
        broken = st.sampled_from([b"\x80" * 11, b"\x12\x02\xc3\x28", b"\x0a\x05ab"])
        more = st.lists(st.one_of(*[data] * 5, broken), max_size=3)
    return st.builds(
        lambda chosen, target, auth, metadata, extra: FuzzCall(
            rpc, target, chosen[1], chosen[0], auth, metadata, extra
        ),
        payload,
        st.sampled_from(targets_for(rpc, ctx)),
        st.sampled_from(AUTH_MODES),
        st.sampled_from(REGION_METADATA),
        more,
    )


def _payload(chosen: tuple[str, bytes]) -> bytes:
    return chosen[1]


def batches(
    ctx: FuzzContext, rpcs: Sequence[Rpc], size: int, messages: MessageStrategies | None = None
) -> Strategy[list[FuzzCall]]:
    """`size` calls that go round `rpcs` from a drawn start, so every method gets its share."""
    strategies = messages or MessageStrategies(ctx)
    per_rpc = [call_for(ctx, rpc, strategies) for rpc in rpcs]

    @st.composite
    def build(draw: st.DrawFn) -> list[FuzzCall]:
        start = draw(st.integers(0, len(per_rpc) - 1))
        return [draw(per_rpc[(start + index) % len(per_rpc)]) for index in range(size)]

    return build()


# -- HTTP/1.1 at a PoP's ingress ---------------------------------------------------------------
#
# Raw bytes, not a client library: the point is what no library would send. A request is a
# request line, header lines and a body framing, each drawn well-formed or broken, joined
# by a line ending (CRLF, or a bare LF / CR); sometimes a second request is pipelined
# behind it, or garbage.

FUZZ_HOST = "echo.fuzz.test"
# A worker that answers from the request alone (no query-driven sleeps or storage), so
# that every answer depends on the ingress, not on what the worker was asked to do.
HTTP_WORKER_YAML = f"name: fuzz-http\nroutes: ['{FUZZ_HOST}/*']\nlimits: {{cpu_ms: 500}}\n"
HTTP_WORKER_PY = b"""
from edgepop import worker_api as edge


async def fetch(request, env, ctx):
    return edge.Response.json(
        {"method": request.method, "path": request.path, "body_bytes": len(request.body)}
    )
"""

HTTP_URL_BYTES_MAX = 16 * 1024
HTTP_HEADER_BYTES_MAX = 32 * 1024
HTTP_HEADER_COUNT_MAX = 256
HTTP_BODY_BYTES_MAX = 10 * 1024 * 1024

METHODS = (
    # Well-formed values repeat: most requests should be broken in one place, not all.
    b"GET",
    b"GET",
    b"POST",
    b"POST",
    b"GET",
    b"POST",
    b"PUT",
    b"DELETE",
    b"HEAD",
    b"OPTIONS",
    b"PATCH",
    b"CONNECT",
    b"TRACE",
    b"BREW",
    b"get",
    b"G\x00T",
    b"",
    b"GET GET",
    b"\xff\xfe",
    b"M" * 9000,
)
TARGETS = (
    b"/",
    b"/",
    b"/a/b?q=1&r",
    b"/",
    b"/a/b?q=1&r",
    b"*",
    b"http://" + FUZZ_HOST.encode() + b"/x",
    b"//",
    b"/%00",
    b"/%",
    b"/%zz",
    b"/a b",
    b"/\x00",
    b"/\xff",
    b"/..%2f..%2f",
    b"?",
    b"",
    b"/" + b"u" * (HTTP_URL_BYTES_MAX + 1),
    b"/" + b"u" * (70 * 1024),
    b"/" + b"u" * (1024 * 1024 + 1),
)
VERSIONS = (
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/0.9",
    b"HTTP/2.0",
    b"HTTP/1.10",
    b"HTTP/11",
    b"http/1.1",
    b"HTTP/",
    b"",
    b"HTTP/1.1 extra",
    b"HTTP/1.1\x00",
    b"HTTP/9.9",
)
LINE_ENDS = (b"\r\n", b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r")
HEADER_NAMES = (
    b"X-Fuzz",
    b"x-fuzz",
    b"X Fuzz",
    b"X-Fuzz ",
    b" X-Fuzz",
    b"X-F\x00zz",
    b"",
    b"\xff\xfe",
    b"X-" + b"n" * 9000,
    b"Content-Type",
    b"Cookie",
    b"x-edge-region",
    b"x-edge-sent-at",
    b"Expect",
    b"Connection",
    b"Upgrade",
)
HEADER_VALUES = (
    b"",
    b"v",
    b" v ",
    b"v\x00v",
    b"\xff\xfe",
    b"tokyo",
    b"atlantis",
    b"nan",
    b"100-continue",
    b"close",
    b"keep-alive",
    b"websocket",
    b"v\r\n folded",
    b"a=" + b"b" * 9000,
)


@dataclass(frozen=True)
class HttpRequest:
    """One generated exchange: the bytes to send on a fresh connection."""

    data: bytes
    what: str

    def describe(self, limit: int = 300) -> str:
        return f"{self.what}: {self.data[:limit]!r}" + (
            f" … ({len(self.data)} bytes)" if len(self.data) > limit else ""
        )


def _chunked(pieces: Sequence[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


# (framing headers, body, name): well-formed and broken ways to say how long a body is.
def _framings() -> Strategy[tuple[list[tuple[bytes, bytes]], bytes, str]]:
    body = st.binary(max_size=64)
    te = (b"Transfer-Encoding", b"chunked")
    fixed: list[tuple[list[tuple[bytes, bytes]], bytes, str]] = [
        ([], b"", "no body"),
        ([(b"Content-Length", b"-1")], b"", "negative length"),
        ([(b"Content-Length", b"nope")], b"", "length not a number"),
        ([(b"Content-Length", b"99999999999999999999999")], b"", "length overflows"),
        ([(b"Content-Length", b"0x10")], b"0123456789abcdef", "hex length"),
        ([(b"Content-Length", b" 3")], b"abc", "length with a space"),
        ([(b"Content-Length", b"3"), (b"Content-Length", b"4")], b"abcd", "two lengths"),
        ([(b"Content-Length", b"3"), te], b"3\r\nabc\r\n0\r\n\r\n", "length and chunked"),
        ([(b"Content-Length", str(HTTP_BODY_BYTES_MAX + 1).encode())], b"", "length over 10 MiB"),
        ([(b"Content-Length", b"100")], b"short", "length larger than the body"),
        ([(b"Content-Length", b"2")], b"abcdef", "length smaller than the body"),
        ([te], _chunked([b"abc", b"de"]), "chunked"),
        ([te], b"zz\r\nabc\r\n0\r\n\r\n", "chunk size not hex"),
        ([te], b"-1\r\nabc\r\n0\r\n\r\n", "negative chunk size"),
        ([te], b"ffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", "chunk size overflows"),
        ([te], b"3;ext=1\r\nabc\r\n0\r\n\r\n", "chunk extension"),
        ([te], b"3\r\nabcXY0\r\n\r\n", "chunk data not followed by CRLF"),
        ([te], b"3\r\nabc\r\n", "no last chunk"),
        ([te], b"10\r\nabc", "chunk shorter than its size"),
        ([te], b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n", "a trailer"),
        ([te], b"3\r\nabc\r\n0\r\n\x00garbage\r\n\r\n", "a garbage trailer"),
        ([te], b"\r\n\r\n", "empty chunk size"),
        ([te], b"1\r\nab\r\n0\r\n\r\n", "chunk longer than its size"),
        ([te, te], _chunked([b"abc"]), "chunked twice"),
        ([(b"Transfer-Encoding", b"gzip")], b"abc", "only gzip"),
        ([(b"Transfer-Encoding", b"chunked, identity")], _chunked([b"abc"]), "chunked, identity"),
        ([(b"Transfer-Encoding", b"gzip, chunked")], _chunked([b"\x1f\x8b\x00"]), "bad gzip"),
        ([(b"Transfer-Encoding", b" chunked")], _chunked([b"abc"]), "chunked with a space"),
        ([(b"Transfer-Encoding", b"CHUNKED")], _chunked([b"abc"]), "CHUNKED"),
        ([(b"Content-Encoding", b"gzip"), (b"Content-Length", b"3")], b"abc", "not gzip"),
    ]
    return st.one_of(
        st.sampled_from(fixed),
        body.map(lambda data: ([(b"Content-Length", str(len(data)).encode())], data, "length")),
        st.lists(body, max_size=4).map(lambda pieces: ([te], _chunked(pieces), "chunks")),
    )


def _headers() -> Strategy[tuple[list[tuple[bytes, bytes]], str]]:
    one = st.tuples(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES))
    return st.one_of(
        st.lists(one, max_size=4).map(lambda headers: (headers, "headers")),
        st.sampled_from(
            [
                ([(b"X-Big", b"h" * (HTTP_HEADER_BYTES_MAX + 1))], "one header over 32 KiB"),
                ([(b"X-Big", b"h" * (70 * 1024))], "one header of 70 KiB"),
                ([(b"X-Big", b"h" * (1024 * 1024 + 1))], "one header past the parser"),
                (
                    [(b"X-H%d" % i, b"h") for i in range(HTTP_HEADER_COUNT_MAX - 2)],
                    "just under 256 fields",
                ),
                ([(b"X-H%d" % i, b"h") for i in range(HTTP_HEADER_COUNT_MAX + 1)], "257 fields"),
                ([(b"X-H%d" % i, b"h") for i in range(9000)], "9000 fields"),
                ([(b"X-H%d" % i, b"h" * 1024) for i in range(40)], "40 KiB of fields"),
            ]
        ),
    )


def http_requests() -> Strategy[HttpRequest]:
    """A request at the fuzz worker's host, well-formed or broken in one or more places."""

    @st.composite
    def build(draw: st.DrawFn) -> HttpRequest:
        method = draw(st.sampled_from(METHODS))
        target = draw(st.sampled_from(TARGETS))
        version = draw(st.sampled_from(VERSIONS))
        end = draw(st.sampled_from(LINE_ENDS))
        host = draw(
            st.sampled_from(
                [[(b"Host", FUZZ_HOST.encode())]] * 4
                + [
                    [],
                    [(b"Host", b"")],
                    [(b"Host", FUZZ_HOST.encode())] * 2,
                    [(b"Host", b"h" * 5000)],
                    [(b"Host", b"a b")],
                ]
            )
        )
        headers, headers_what = draw(_headers())
        framing, body, framing_what = draw(_framings())
        lines = [method + b" " + target + (b" " + version if version else b"")]
        lines += [name + b": " + value for name, value in [*host, *headers, *framing]]
        data = end.join(lines) + end + end + body
        tail = draw(
            st.sampled_from(
                [
                    b"",
                    b"",
                    b"",
                    b"GARBAGE\r\n\r\n",
                    b"GET / HTTP/1.1\r\nHost: " + FUZZ_HOST.encode() + b"\r\n\r\n",
                    b"\x16\x03\x01\x02\x00",
                ]
            )
        )
        what = f"{method[:20]!r} {target[:40]!r} {version!r}, {headers_what}, {framing_what}" + (
            ", then more" if tail else ""
        )
        return HttpRequest(data + tail, what)

    return st.one_of(
        build(),
        # Not HTTP at all.
        st.binary(min_size=1, max_size=64).map(lambda data: HttpRequest(data, "random bytes")),
        st.sampled_from(
            [
                b"\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64),
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                b"\x00" * 100,
            ]
        ).map(lambda data: HttpRequest(data, "not HTTP")),
    )
