"""What a client sees of an error (server/lookalike_server/rpc_calls.py): the message, clipped."""

from __future__ import annotations

from lookalike_server.errors import ModelNotFound
from lookalike_server.rpc_calls import MAX_MESSAGE_CHARS, clip_message, error_message


def test_a_short_message_is_sent_as_it_is() -> None:
    assert clip_message("no item with id 7") == "no item with id 7"


def test_a_message_quoting_a_huge_value_keeps_both_ends_and_says_how_long_it_was() -> None:
    # A 100k-character model name used to go out whole: over the client's
    # metadata limit, the status became RESOURCE_EXHAUSTED "Stream removed".
    name = "x" * 100_000
    original = f"model {name!r} is not loaded; loaded models: ['mobilenet_v2']"
    message = error_message(ModelNotFound(original))
    assert len(message) <= MAX_MESSAGE_CHARS
    assert message.startswith("model 'xxx")
    assert message.endswith("' is not loaded; loaded models: ['mobilenet_v2']")
    assert f"({len(original)} characters)" in message


def test_a_message_of_exactly_the_limit_is_not_clipped() -> None:
    message = "y" * MAX_MESSAGE_CHARS
    assert clip_message(message) == message
    assert len(clip_message(message + "z")) <= MAX_MESSAGE_CHARS
