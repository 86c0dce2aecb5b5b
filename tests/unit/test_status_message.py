"""Status messages are clipped, so a refusal quoting a huge input still reaches the client.

Found by the fuzz: `Route(region="\0" * 16384)` answered INVALID_ARGUMENT "unknown region
'…'" with the whole region quoted; past the client's metadata limit it saw RESOURCE_EXHAUSTED
"Stream removed (received metadata size exceeds hard limit)" instead of the status.
"""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from edgepop.errors import (
    STATUS_MESSAGE_BYTES_MAX,
    InvalidArgumentError,
    NotFoundError,
    clip_message,
    status_of,
)


def test_a_message_that_quotes_a_huge_input_is_clipped() -> None:
    region = "\x00" * 16_384
    code, message = status_of(InvalidArgumentError(f"unknown region {region!r}"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith("unknown region '\\x00")
    assert len(message.encode()) <= STATUS_MESSAGE_BYTES_MAX
    assert message.endswith(f"({len(repr(region).encode()) + 15} bytes, clipped)")


def test_a_short_message_is_unchanged() -> None:
    assert status_of(NotFoundError("no worker 'x'")) == (grpc.StatusCode.NOT_FOUND, "no worker 'x'")


@given(st.text(max_size=3000), st.integers(64, 2048))
def test_clipped_messages_fit_the_limit_and_keep_their_start(text: str, limit: int) -> None:
    clipped = clip_message(text, limit)
    if len(text.encode()) <= limit:
        assert clipped == text
    else:
        assert len(clipped.encode()) <= limit
        assert text.startswith(clipped.split(" … (", 1)[0])
