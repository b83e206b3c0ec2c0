"""Milvus filter expressions built from typed filter fields, portable across versions.

Learnt from running both backends (pymilvus 3.0.2, Milvus Lite 3.2.2, Milvus
standalone 2.3.5):

* ``LIKE`` differs between versions: Milvus 2.3 takes the pattern before ``%``
  as a literal prefix (no escapes, ``_`` is literal), newer Milvus and Lite
  treat ``_`` as a wildcard and ``\\`` as an escape. :func:`build_filter`
  therefore only uses ``LIKE`` for prefixes free of ``%``, ``_`` and ``\\``
  and otherwise a string range (``key >= p and key < p'``), which means the
  same on every version.
* String literals accept ``\\"``, ``\\\\``, ``\\n``, ``\\r`` and ``\\t`` on
  every version, but ``\\uXXXX`` only on the server, so other control
  characters cannot be expressed portably and are refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lookalike_server import errors
from lookalike_server.store.milvus_schema import ATTRS_FIELD, ID_FIELD, KEY_FIELD
from lookalike_server.validation import ATTRIBUTE_NAME

# Escapes understood identically by Milvus 2.3 and Milvus Lite inside "...".
_LITERAL_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_LIKE_SPECIAL = frozenset("%_\\")


def string_literal(value: str, what: str = "value") -> str:
    """Quotes ``value`` as a Milvus expression string literal.

    Args:
        value: Any text.
        what: What the value is, for the error message.

    Returns:
        The literal, double quotes included.

    Raises:
        errors.InvalidArgument: ``value`` holds a control character other than
            tab, newline or carriage return (no portable escape exists).
    """
    out = []
    for ch in value:
        escaped = _LITERAL_ESCAPES.get(ch)
        if escaped is not None:
            out.append(escaped)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise errors.InvalidArgument(f"{what} contains control character U+{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Milvus compares VARCHAR values by UTF-8 bytes, which orders like code points,
    which is how Python compares ``str``; so ``p <= s < bound`` exactly when ``s``
    starts with ``p``.

    Returns:
        The bound, or None when no bound exists (``prefix`` is all U+10FFFF).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not characters: skip them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def _key_prefix_clause(key_prefix: str) -> str:
    """The clause keeping keys that start with ``key_prefix`` (non-empty)."""
    if not _LIKE_SPECIAL.intersection(key_prefix):
        # No LIKE metacharacter: every Milvus version reads this as a literal prefix.
        return f"{KEY_FIELD} like {string_literal(key_prefix + '%', 'key_prefix')}"
    lower = string_literal(key_prefix, "key_prefix")
    upper = _prefix_upper_bound(key_prefix)
    if upper is None:
        return f"{KEY_FIELD} >= {lower}"
    return f"({KEY_FIELD} >= {lower} and {KEY_FIELD} < {string_literal(upper, 'key_prefix')})"


def build_filter(
    key_prefix: str,
    attributes: Mapping[str, str] | None,
    exclude_ids: Sequence[int] = (),
) -> str:
    """Builds a Milvus boolean expression from typed filter fields.

    Nothing a client sends is pasted into the expression unescaped: attribute
    names must be identifiers, values and the key prefix become escaped string
    literals, ids are formatted as integers.

    Args:
        key_prefix: Keep items whose key starts with this ("" = any key).
        attributes: Keep items whose attribute ``name`` equals ``value`` for
            every pair (all must match).
        exclude_ids: Drop these item ids (e.g. the query item itself).

    Returns:
        The expression, or "" when there is nothing to filter on.

    Raises:
        errors.InvalidArgument: An attribute name is not an identifier
            (``^[A-Za-z_][A-Za-z0-9_]{0,63}$``), a value is not a string, a
            text holds a control character other than tab/newline/CR, or an id
            is not an integer.
    """
    clauses: list[str] = []
    if key_prefix:
        clauses.append(_key_prefix_clause(key_prefix))
    for name, value in sorted((attributes or {}).items()):
        if not isinstance(name, str) or not ATTRIBUTE_NAME.match(name):
            raise errors.InvalidArgument(
                f"attribute name {name!r} is invalid: use letters, digits and _, not starting with a digit, "
                "at most 64 characters"
            )
        if not isinstance(value, str):
            raise errors.InvalidArgument(f"attribute {name!r} must be a string, got {type(value).__name__}")
        # The name matched the identifier pattern, so it needs no escaping.
        clauses.append(f'{ATTRS_FIELD}["{name}"] == {string_literal(value, f"attribute {name!r}")}')
    if len(exclude_ids):
        ids = set()
        for item_id in exclude_ids:
            if isinstance(item_id, bool) or not isinstance(item_id, (int, np.integer)):
                raise errors.InvalidArgument(f"exclude_ids must be integers, got {item_id!r}")
            ids.add(int(item_id))
        clauses.append(f"{ID_FIELD} not in [{', '.join(str(i) for i in sorted(ids))}]")
    return " and ".join(clauses)
