"""The Milvus filter builder: expressions built from typed values, never taken from a client (no service needed)."""

from __future__ import annotations

import pytest

from lookalike_server import errors
from lookalike_server.store.milvus_filter import build_filter, string_literal


def test_build_filter_empty() -> None:
    assert build_filter("", None) == ""
    assert build_filter("", {}, ()) == ""


def test_build_filter_plain_prefix_uses_like() -> None:
    assert build_filter("photos/cats", None) == 'key like "photos/cats%"'


def test_build_filter_special_prefix_uses_range() -> None:
    # `_` and `%` are wildcards for some Milvus versions' LIKE and literal for others.
    assert build_filter("a_b", None) == '(key >= "a_b" and key < "a_c")'
    assert build_filter("50%", None) == '(key >= "50%" and key < "50&")'
    assert build_filter('q"\\', None) == '(key >= "q\\"\\\\" and key < "q\\"]")'


def test_build_filter_attributes_and_exclusion() -> None:
    expr = build_filter("", {"b": 'say "hi"', "a": "x\\y"}, [7, 3, 3])
    assert expr == 'attrs["a"] == "x\\\\y" and attrs["b"] == "say \\"hi\\"" and id not in [3, 7]'


@pytest.mark.parametrize("name", ["1abc", "a-b", 'a"]) or (x', "", "a" * 65, "é"])
def test_build_filter_rejects_bad_attribute_names(name: str) -> None:
    with pytest.raises(errors.InvalidArgument):
        build_filter("", {name: "v"})


def test_build_filter_rejects_non_integer_ids_and_control_chars() -> None:
    with pytest.raises(errors.InvalidArgument):
        build_filter("", None, ["1 or true"])  # type: ignore[list-item]
    with pytest.raises(errors.InvalidArgument):
        build_filter("", None, [True])
    with pytest.raises(errors.InvalidArgument):
        build_filter("a\x00", None)
    assert string_literal("tab\tnew\nline\r") == '"tab\\tnew\\nline\\r"'
