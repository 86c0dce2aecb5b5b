"""KV limits: each named limit is enforced on both sides of its boundary."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepop import limits
from edgepop.errors import (
    InvalidArgumentError,
    KeyTooLargeError,
    MetadataInvalidError,
    ValueTooLargeError,
)

NOW = 1_700_000_000.25

# -- keys ------------------------------------------------------------------------------------


def test_key_of_one_byte_is_accepted() -> None:
    assert limits.check_key("a") == b"a"


def test_key_of_512_ascii_bytes_is_accepted() -> None:
    assert limits.check_key("k" * 512) == b"k" * 512


def test_key_of_513_ascii_bytes_is_too_large_and_names_the_limit() -> None:
    with pytest.raises(KeyTooLargeError) as caught:
        limits.check_key("k" * 513)
    assert "513" in caught.value.message
    assert "KEY_BYTES_MAX" in caught.value.message
    assert "512" in caught.value.message


def test_key_limit_counts_utf8_bytes_not_characters() -> None:
    # 170 three-byte characters + 2 ASCII = 512 bytes (but only 172 characters).
    at_limit = "日" * 170 + "ab"
    assert len(at_limit.encode()) == 512
    assert limits.check_key(at_limit) == at_limit.encode()
    # One more three-byte character: 173 characters, 515 bytes.
    over = "日" * 171 + "ab"
    assert len(over) < 512
    with pytest.raises(KeyTooLargeError, match="515 bytes"):
        limits.check_key(over)


def test_key_whose_last_multibyte_character_crosses_512_bytes_is_rejected() -> None:
    # 510 ASCII + one 4-byte emoji = 514 bytes; 511 ASCII + one 2-byte char = 513 bytes.
    with pytest.raises(KeyTooLargeError):
        limits.check_key("a" * 510 + "😀")
    with pytest.raises(KeyTooLargeError):
        limits.check_key("a" * 511 + "é")
    # 508 ASCII + one 4-byte emoji = exactly 512 bytes.
    assert len(limits.check_key("a" * 508 + "😀")) == 512


def test_empty_key_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="empty"):
        limits.check_key("")


@pytest.mark.parametrize("key", [".", ".."])
def test_dot_and_dot_dot_keys_are_rejected(key: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r'"\." or "\.\."'):
        limits.check_key(key)


@pytest.mark.parametrize("key", ["...", "./", ".a", "a.", "a..b"])
def test_keys_that_merely_contain_dots_are_accepted(key: str) -> None:
    assert limits.check_key(key) == key.encode()


def test_key_with_a_lone_surrogate_is_not_utf8_and_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="UTF-8"):
        limits.check_key("a\ud800b")


@given(st.text(min_size=1).filter(lambda k: k not in (".", "..")))
def test_any_valid_text_key_passes_iff_it_fits_512_bytes(key: str) -> None:
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        with pytest.raises(InvalidArgumentError):
            limits.check_key(key)
        return
    if len(encoded) <= 512:
        assert limits.check_key(key) == encoded
    else:
        with pytest.raises(KeyTooLargeError):
            limits.check_key(key)


# -- values ----------------------------------------------------------------------------------


def test_value_of_exactly_25_mib_is_accepted() -> None:
    limits.check_value(bytes(25 * 1024 * 1024))


def test_value_one_byte_over_25_mib_is_too_large_and_names_the_limit() -> None:
    with pytest.raises(ValueTooLargeError) as caught:
        limits.check_value(bytes(25 * 1024 * 1024 + 1))
    assert "VALUE_BYTES_MAX" in caught.value.message
    assert str(25 * 1024 * 1024 + 1) in caught.value.message


def test_empty_value_is_accepted() -> None:
    limits.check_value(b"")


# -- metadata --------------------------------------------------------------------------------


def test_empty_metadata_means_none_and_is_accepted() -> None:
    limits.check_metadata("")


def test_metadata_of_exactly_1024_bytes_is_accepted() -> None:
    metadata = json.dumps({"k": "x" * 1015})
    assert len(metadata.encode()) == 1024
    limits.check_metadata(metadata)


def test_metadata_of_1025_bytes_is_rejected_and_names_the_limit() -> None:
    metadata = json.dumps({"k": "x" * 1016})
    assert len(metadata.encode()) == 1025
    with pytest.raises(MetadataInvalidError) as caught:
        limits.check_metadata(metadata)
    assert "METADATA_BYTES_MAX" in caught.value.message
    assert "1025" in caught.value.message


def test_metadata_limit_counts_utf8_bytes() -> None:
    # 2-byte characters: 400 characters, 800+ bytes fits; 600 characters (1200+ bytes) not.
    limits.check_metadata(json.dumps("é" * 400, ensure_ascii=False))
    with pytest.raises(MetadataInvalidError, match="METADATA_BYTES_MAX"):
        limits.check_metadata(json.dumps("é" * 600, ensure_ascii=False))


@pytest.mark.parametrize("metadata", ["{", "not json", "{'single': 'quotes'}", "[1,]"])
def test_metadata_must_be_valid_json(metadata: str) -> None:
    with pytest.raises(MetadataInvalidError, match="valid JSON"):
        limits.check_metadata(metadata)


@pytest.mark.parametrize("metadata", ["NaN", '{"x": Infinity}', "[-Infinity]"])
def test_metadata_with_non_json_number_constants_is_rejected(metadata: str) -> None:
    with pytest.raises(MetadataInvalidError, match="valid JSON"):
        limits.check_metadata(metadata)


@pytest.mark.parametrize("metadata", ['{"a": 1}', "[]", "42", '"text"', "null"])
def test_any_json_value_is_valid_metadata(metadata: str) -> None:
    limits.check_metadata(metadata)


# -- expiration ------------------------------------------------------------------------------


def test_no_expiration_resolves_to_zero() -> None:
    assert limits.resolve_expiration(0, 0, NOW) == 0


def test_ttl_of_one_second_resolves_from_now() -> None:
    assert limits.resolve_expiration(0, 1, NOW) == int(NOW) + 1


def test_ttl_wins_over_absolute_expiration() -> None:
    assert limits.resolve_expiration(int(NOW) + 500, 60, NOW) == int(NOW) + 60


@pytest.mark.parametrize(("expiration", "ttl"), [(0, -1), (-1, 0), (-5, -5)])
def test_negative_expiration_or_ttl_is_rejected(expiration: int, ttl: int) -> None:
    with pytest.raises(InvalidArgumentError, match="negative"):
        limits.resolve_expiration(expiration, ttl, NOW)


def test_absolute_expiration_in_the_future_is_kept() -> None:
    assert limits.resolve_expiration(int(NOW) + 1, 0, NOW) == int(NOW) + 1


@pytest.mark.parametrize("expiration", [int(NOW), int(NOW) - 1, 1])
def test_absolute_expiration_not_in_the_future_is_rejected(expiration: int) -> None:
    with pytest.raises(InvalidArgumentError, match="not in the future"):
        limits.resolve_expiration(expiration, 0, NOW)


def test_ttl_whose_expiration_overflows_int64_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="expiration"):
        limits.resolve_expiration(0, 2**63 - 1, NOW)


# -- namespaces ------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", ["a", "app", "My_App-2.0", "n" * 64])
def test_valid_namespaces_are_accepted(namespace: str) -> None:
    limits.check_namespace(namespace)


@pytest.mark.parametrize("namespace", ["", "n" * 65, "a b", "a/b", "café", "ns:1", "\n", "a\x00b"])
def test_invalid_namespaces_are_rejected_naming_the_rule(namespace: str) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        limits.check_namespace(namespace)
    assert "namespace" in caught.value.message
    assert "64" in caught.value.message


def test_namespace_with_a_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        limits.check_namespace("app\n")


# -- batch sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 100])
def test_get_many_of_1_to_100_keys_is_accepted(count: int) -> None:
    limits.check_get_many(count)


@pytest.mark.parametrize("count", [0, 101])
def test_get_many_outside_1_to_100_keys_is_rejected(count: int) -> None:
    with pytest.raises(InvalidArgumentError, match="GET_MANY_KEYS_MAX") as caught:
        limits.check_get_many(count)
    assert f"got {count}" in caught.value.message


@pytest.mark.parametrize("count", [1, 10_000])
def test_put_many_of_1_to_10000_entries_is_accepted(count: int) -> None:
    limits.check_put_many(count)


@pytest.mark.parametrize("count", [0, 10_001])
def test_put_many_outside_1_to_10000_entries_is_rejected(count: int) -> None:
    with pytest.raises(InvalidArgumentError, match="PUT_MANY_ENTRIES_MAX") as caught:
        limits.check_put_many(count)
    assert f"got {count}" in caught.value.message


def test_list_limit_zero_means_1000() -> None:
    assert limits.list_limit(0) == 1000


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_list_limit_within_range_is_kept(limit: int) -> None:
    assert limits.list_limit(limit) == limit


def test_list_limit_over_1000_is_rejected() -> None:
    with pytest.raises(InvalidArgumentError, match="LIST_LIMIT_MAX") as caught:
        limits.list_limit(1001)
    assert "1001" in caught.value.message


def test_request_id_of_64_bytes_is_accepted_and_65_rejected() -> None:
    limits.check_request_id("r" * 64)
    limits.check_request_id("")
    with pytest.raises(InvalidArgumentError, match="REQUEST_ID_BYTES_MAX"):
        limits.check_request_id("r" * 65)
