"""KV API validation where requests enter, and response building."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.v1 import kv_pb2
from edgepop import kvapi
from edgepop.errors import (
    InvalidArgumentError,
    KeyTooLargeError,
    MetadataInvalidError,
    ValueTooLargeError,
)
from edgepop.kvstore import Record, decode_cursor, encode_cursor

NOW = 1_700_000_000.0


def _record(key: str, value: bytes = b"v", seq: int = 1, metadata: str = "") -> Record:
    return Record("app", key, value, metadata, 0, seq)


# -- validation ------------------------------------------------------------------------------


def test_validate_get_returns_the_encoded_key() -> None:
    request = kv_pb2.KvGetRequest(namespace="app", key="日本")
    assert kvapi.validate_get(request) == "日本".encode()


def test_validate_get_checks_the_namespace_before_the_key() -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        kvapi.validate_get(kv_pb2.KvGetRequest(namespace="", key="k" * 600))


def test_validate_get_rejects_an_oversized_key() -> None:
    with pytest.raises(KeyTooLargeError, match="KEY_BYTES_MAX"):
        kvapi.validate_get(kv_pb2.KvGetRequest(namespace="app", key="k" * 513))


def test_validate_get_many_accepts_100_keys_and_rejects_101() -> None:
    keys = [f"k{i}" for i in range(100)]
    assert kvapi.validate_get_many(kv_pb2.KvGetManyRequest(namespace="app", keys=keys)) == [
        key.encode() for key in keys
    ]
    with pytest.raises(InvalidArgumentError, match="GET_MANY_KEYS_MAX"):
        kvapi.validate_get_many(kv_pb2.KvGetManyRequest(namespace="app", keys=[*keys, "one"]))


def test_validate_get_many_rejects_an_empty_key_list() -> None:
    with pytest.raises(InvalidArgumentError, match="GET_MANY_KEYS_MAX"):
        kvapi.validate_get_many(kv_pb2.KvGetManyRequest(namespace="app"))


def test_validate_get_many_rejects_a_bad_key_among_good_ones() -> None:
    with pytest.raises(InvalidArgumentError, match=r'"\." or "\.\."'):
        kvapi.validate_get_many(kv_pb2.KvGetManyRequest(namespace="app", keys=["a", ".."]))


def test_validate_list_defaults_limit_zero_to_1000() -> None:
    prefix, start_after, limit = kvapi.validate_list(
        kv_pb2.KvListRequest(namespace="app", prefix="user/")
    )
    assert (prefix, start_after, limit) == (b"user/", None, 1000)


def test_validate_list_rejects_limit_over_1000() -> None:
    with pytest.raises(InvalidArgumentError, match="LIST_LIMIT_MAX"):
        kvapi.validate_list(kv_pb2.KvListRequest(namespace="app", limit=1001))


def test_validate_list_rejects_a_prefix_over_512_bytes() -> None:
    kvapi.validate_list(kv_pb2.KvListRequest(namespace="app", prefix="p" * 512))
    with pytest.raises(InvalidArgumentError, match="prefix is 513 bytes"):
        kvapi.validate_list(kv_pb2.KvListRequest(namespace="app", prefix="p" * 513))


def test_validate_list_decodes_the_cursor_of_a_previous_response() -> None:
    key = ("日" * 168 + "z").encode()
    request = kv_pb2.KvListRequest(namespace="app", limit=5, cursor=encode_cursor(key))
    assert kvapi.validate_list(request) == (b"", key, 5)


def test_validate_list_rejects_a_cursor_that_is_not_base64() -> None:
    with pytest.raises(InvalidArgumentError, match="cursor"):
        kvapi.validate_list(kv_pb2.KvListRequest(namespace="app", cursor="abc"))
    with pytest.raises(InvalidArgumentError, match="cursor"):
        decode_cursor("é")


@given(st.text(min_size=1, max_size=128))
def test_cursor_round_trips_any_key_up_to_512_bytes(key: str) -> None:
    encoded = key.encode()  # hypothesis text has no lone surrogates: 4 bytes a char at most
    cursor = encode_cursor(encoded)
    assert decode_cursor(cursor) == encoded
    request = kv_pb2.KvListRequest(namespace="app", cursor=cursor)
    assert kvapi.validate_list(request)[1] == encoded


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe", b"k" * 513, b""],
    ids=["not-utf8", "longer-than-a-key", "empty"],
)
def test_cursor_that_cannot_name_a_key_is_rejected(raw: bytes) -> None:
    cursor = encode_cursor(raw) or "===="
    with pytest.raises(InvalidArgumentError, match="cursor"):
        kvapi.validate_list(kv_pb2.KvListRequest(namespace="app", cursor=cursor))


def test_validate_put_returns_the_resolved_expiration() -> None:
    request = kv_pb2.KvPutRequest(namespace="app", key="k", value=b"v", expiration_ttl=60)
    assert kvapi.validate_put(request, NOW) == int(NOW) + 60
    request = kv_pb2.KvPutRequest(namespace="app", key="k", value=b"v")
    assert kvapi.validate_put(request, NOW) == 0


@pytest.mark.parametrize(
    ("request_fields", "error_class", "names"),
    [
        ({"key": "k" * 513}, KeyTooLargeError, "KEY_BYTES_MAX"),
        ({"value": bytes(25 * 1024 * 1024 + 1)}, ValueTooLargeError, "VALUE_BYTES_MAX"),
        ({"metadata_json": "{"}, MetadataInvalidError, "valid JSON"),
        ({"metadata_json": '"' + "m" * 1023 + '"'}, MetadataInvalidError, "METADATA_BYTES_MAX"),
        ({"expiration": int(NOW) - 1}, InvalidArgumentError, "not in the future"),
        ({"expiration_ttl": -3}, InvalidArgumentError, "negative"),
        ({"request_id": "r" * 65}, InvalidArgumentError, "REQUEST_ID_BYTES_MAX"),
        ({"namespace": "a b"}, InvalidArgumentError, "namespace"),
    ],
)
def test_validate_put_rejects_each_limit_with_its_error(
    request_fields: dict[str, object], error_class: type[InvalidArgumentError], names: str
) -> None:
    fields: dict[str, object] = {"namespace": "app", "key": "k", "value": b"v"}
    fields.update(request_fields)
    with pytest.raises(error_class, match=names):
        kvapi.validate_put(kv_pb2.KvPutRequest(**fields), NOW)  # type: ignore[arg-type]


def test_validate_put_accepts_a_value_of_exactly_25_mib() -> None:
    request = kv_pb2.KvPutRequest(namespace="app", key="k", value=bytes(25 * 1024 * 1024))
    assert kvapi.validate_put(request, NOW) == 0


def test_validate_put_many_returns_each_entry_expiration() -> None:
    request = kv_pb2.KvPutManyRequest(
        namespace="app",
        entries=[
            kv_pb2.KvPutEntry(key="a", value=b"1"),
            kv_pb2.KvPutEntry(key="b", value=b"2", expiration_ttl=10),
            kv_pb2.KvPutEntry(key="c", value=b"3", expiration=int(NOW) + 99),
        ],
    )
    assert kvapi.validate_put_many(request, NOW) == [0, int(NOW) + 10, int(NOW) + 99]


def test_validate_put_many_names_the_bad_entry_and_keeps_its_error_class() -> None:
    request = kv_pb2.KvPutManyRequest(
        namespace="app",
        entries=[
            kv_pb2.KvPutEntry(key="ok", value=b"1"),
            kv_pb2.KvPutEntry(key="ok2", value=b"1"),
            kv_pb2.KvPutEntry(key="k" * 513, value=b"1"),
        ],
    )
    with pytest.raises(KeyTooLargeError) as caught:
        kvapi.validate_put_many(request, NOW)
    assert caught.value.message.startswith("entries[2]: ")
    assert "KEY_BYTES_MAX" in caught.value.message


def test_validate_put_many_rejects_zero_and_10001_entries() -> None:
    with pytest.raises(InvalidArgumentError, match="PUT_MANY_ENTRIES_MAX"):
        kvapi.validate_put_many(kv_pb2.KvPutManyRequest(namespace="app"), NOW)
    entries = [kv_pb2.KvPutEntry(key=f"k{i}") for i in range(10_001)]
    with pytest.raises(InvalidArgumentError, match="PUT_MANY_ENTRIES_MAX"):
        kvapi.validate_put_many(kv_pb2.KvPutManyRequest(namespace="app", entries=entries), NOW)


def test_validate_put_many_accepts_10000_entries() -> None:
    entries = [kv_pb2.KvPutEntry(key=f"k{i}") for i in range(10_000)]
    request = kv_pb2.KvPutManyRequest(namespace="app", entries=entries)
    assert kvapi.validate_put_many(request, NOW) == [0] * 10_000


def test_validate_delete_rejects_a_dot_key_and_bad_namespace() -> None:
    kvapi.validate_delete(kv_pb2.KvDeleteRequest(namespace="app", key="k"))
    with pytest.raises(InvalidArgumentError, match=r'"\." or "\.\."'):
        kvapi.validate_delete(kv_pb2.KvDeleteRequest(namespace="app", key="."))
    with pytest.raises(InvalidArgumentError, match="namespace"):
        kvapi.validate_delete(kv_pb2.KvDeleteRequest(namespace="a/b", key="k"))


# -- responses -------------------------------------------------------------------------------


def test_get_response_of_a_missing_key_is_not_found_with_applied_seq() -> None:
    response = kvapi.get_response(None, 42)
    assert not response.found
    assert response.applied_seq == 42
    assert response.value == b""


def test_get_response_of_a_record_carries_value_metadata_and_expiration() -> None:
    record = Record("app", "k", b"value", '{"a":1}', 1_800_000_000, 7)
    response = kvapi.get_response(record, 9)
    assert response.found
    assert (response.value, response.metadata_json, response.expiration) == (
        b"value",
        '{"a":1}',
        1_800_000_000,
    )
    assert response.applied_seq == 9


def test_get_many_result_names_the_key_found_or_not() -> None:
    assert kvapi.get_many_result("gone", None) == kv_pb2.KvGetManyResult(key="gone", found=False)
    result = kvapi.get_many_result("k", _record("k", b"x"))
    assert result.found and result.key == "k" and result.value == b"x"


def test_list_response_with_more_keys_has_a_cursor_after_the_last_key() -> None:
    records = [_record("a"), _record("é" * 3)]
    response = kvapi.list_response(records, more=True)
    assert [key.name for key in response.keys] == ["a", "ééé"]
    assert not response.list_complete
    assert decode_cursor(response.cursor) == "ééé".encode()


def test_list_response_of_the_last_page_is_complete_without_cursor() -> None:
    response = kvapi.list_response([_record("a")], more=False)
    assert response.list_complete
    assert response.cursor == ""


def test_chunked_bounds_chunks_by_record_count() -> None:
    records = [_record(f"k{i:05}") for i in range(kvapi.CHUNK_RECORDS_MAX * 2 + 1)]
    chunks = list(kvapi.chunked(records))
    assert [len(chunk) for chunk in chunks] == [
        kvapi.CHUNK_RECORDS_MAX,
        kvapi.CHUNK_RECORDS_MAX,
        1,
    ]
    assert [record for chunk in chunks for record in chunk] == records


def test_chunked_bounds_chunks_by_bytes_and_sends_a_big_value_alone() -> None:
    big = _record("big", bytes(kvapi.CHUNK_BYTES_MAX + 10))
    half = _record("half", bytes(kvapi.CHUNK_BYTES_MAX // 2))
    records = [_record("a"), big, half, half, half]
    chunks = list(kvapi.chunked(records))
    assert [[record.key for record in chunk] for chunk in chunks] == [
        ["a"],
        ["big"],
        ["half"],
        ["half"],
        ["half"],
    ]


def test_chunked_of_nothing_yields_no_chunk() -> None:
    assert list(kvapi.chunked([])) == []
