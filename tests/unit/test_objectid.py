"""Durable Object ids: deterministic per namespace, random, parsed; foreign or malformed refused."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepop import objectid
from edgepop.errors import InvalidArgumentError

NAMESPACES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


def test_id_from_name_is_deterministic_and_64_hex_characters() -> None:
    first = objectid.id_from_name("Counter", "global")
    assert first == objectid.id_from_name("Counter", "global")
    assert len(first) == objectid.ID_BYTES
    assert len(first.hex()) == objectid.ID_HEX_CHARS == 64


def test_same_name_in_two_namespaces_gives_two_ids_each_tagged_with_its_namespace() -> None:
    counter = objectid.id_from_name("Counter", "room")
    lock = objectid.id_from_name("Lock", "room")
    assert counter != lock
    assert counter[-objectid.TAG_BYTES :] == objectid.namespace_tag("Counter")
    assert lock[-objectid.TAG_BYTES :] == objectid.namespace_tag("Lock")


def test_different_names_give_different_ids() -> None:
    ids = {objectid.id_from_name("Counter", f"name-{index}") for index in range(1000)}
    assert len(ids) == 1000


def test_unique_ids_differ_and_carry_the_namespace_tag() -> None:
    ids = [objectid.new_unique_id("Counter") for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(raw[-objectid.TAG_BYTES :] == objectid.namespace_tag("Counter") for raw in ids)
    # A unique id parses back in its own namespace.
    assert objectid.id_from_string("Counter", ids[0].hex()) == ids[0]


def test_id_from_string_refuses_an_id_made_for_another_namespace() -> None:
    foreign = objectid.id_from_name("Lock", "x").hex()
    with pytest.raises(InvalidArgumentError, match="does not belong") as caught:
        objectid.id_from_string("Counter", foreign)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "0" * 63,
        "0" * 65,
        "g" * 64,
        objectid.id_from_name("Counter", "x").hex().upper(),
        " " + objectid.id_from_name("Counter", "x").hex()[1:],
        objectid.id_from_name("Counter", "x").hex() + "\n",
    ],
    ids=["empty", "short", "63", "65", "not-hex", "uppercase", "leading-space", "newline"],
)
def test_malformed_id_strings_are_invalid_arguments(text: str) -> None:
    with pytest.raises(InvalidArgumentError):
        objectid.id_from_string("Counter", text)


@pytest.mark.parametrize("namespace", ["", "1abc", "no-dash", "sp ace", "x" * 65, "Counter\n"])
def test_namespaces_that_are_not_class_like_names_are_refused(namespace: str) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        objectid.id_from_name(namespace, "name")


def test_object_names_must_be_1_to_1024_bytes() -> None:
    objectid.id_from_name("Counter", "é" * 512)  # 1024 bytes
    with pytest.raises(InvalidArgumentError, match="OBJECT_NAME_BYTES_MAX"):
        objectid.id_from_name("Counter", "é" * 512 + "x")
    with pytest.raises(InvalidArgumentError):
        objectid.id_from_name("Counter", "")


def test_resolve_takes_exactly_one_of_name_and_id() -> None:
    raw = objectid.id_from_name("Counter", "n")
    assert objectid.resolve("Counter", "n", "") == raw
    assert objectid.resolve("Counter", "", raw.hex()) == raw
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        objectid.resolve("Counter", "n", raw.hex())
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        objectid.resolve("Counter", "", "")


@given(namespace=NAMESPACES, name=st.text(min_size=1, max_size=64))
def test_a_named_id_round_trips_through_its_string_and_only_in_its_namespace(
    namespace: str, name: str
) -> None:
    raw = objectid.id_from_name(namespace, name)
    assert objectid.id_from_string(namespace, raw.hex()) == raw
    other = namespace + "_other"
    with pytest.raises(InvalidArgumentError):
        objectid.id_from_string(other, raw.hex())
