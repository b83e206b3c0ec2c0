"""Editing a registry file (``models.toml``) in place: the exporter's writer.

The schema itself (:class:`~lookalike_server.registry.ModelEntry`, the keys
and their order) lives in :mod:`lookalike_server.registry`, shared with the
server's reader. Updating a registry is done on the text, one ``[[models]]``
block at a time, so the comments and hand edits of the other entries survive
an export; the result is parsed back before it is written.
"""

from __future__ import annotations

import itertools
import os
import re
import tempfile
import tomllib
from pathlib import Path

from lookalike_server.errors import ConfigError
from lookalike_server.registry import ModelEntry


def _split_blocks(text: str) -> tuple[str, list[str]]:
    """Splits a registry's text into its header and its ``[[models]]`` blocks.

    A block runs from its ``[[models]]`` line to the next one, so sub-tables
    such as ``[models.batching]`` stay with their entry.
    """
    starts = [m.start() for m in re.finditer(r"(?m)^[ \t]*\[\[models\]\][ \t]*(#.*)?$", text)]
    if not starts:
        return text, []
    bounds = [*starts, len(text)]
    return text[: starts[0]], [text[a:b] for a, b in itertools.pairwise(bounds)]


def upsert_entry(registry: Path, entry: ModelEntry) -> str:
    """Adds ``entry`` to a registry file, or replaces the entry of that name.

    Other entries keep their exact text (comments included). The new file is
    parsed before it replaces the old one, atomically.

    Args:
        registry: The TOML file; created when missing.
        entry: The entry to write.

    Returns:
        ``"added"`` or ``"replaced"``.

    Raises:
        ConfigError: The existing file is not valid TOML, or has duplicate names.
    """
    text = registry.read_text() if registry.exists() else ""
    if text:
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{registry}: not valid TOML, refusing to edit it ({exc})") from None
    header, blocks = _split_blocks(text)
    new_block = entry.to_toml()
    action = "added"
    out: list[str] = []
    for block in blocks:
        names = [m.get("name") for m in tomllib.loads(block).get("models", [])]
        if entry.name in names:
            if action == "replaced":
                raise ConfigError(f"{registry}: more than one entry named {entry.name!r}")
            out.append(new_block + ("\n" if block.endswith("\n\n") else ""))
            action = "replaced"
        else:
            out.append(block)
    if action == "added":
        if out and not out[-1].endswith("\n\n"):
            out[-1] = out[-1].rstrip("\n") + "\n\n"
        elif not out and header and not header.endswith("\n\n"):
            header = header.rstrip("\n") + "\n\n"
        out.append(new_block)
    new_text = header + "".join(out)
    parsed = tomllib.loads(new_text)  # must never write something the server cannot read
    names = [m.get("name") for m in parsed.get("models", [])]
    if len(names) != len(set(names)):
        raise ConfigError(f"{registry}: duplicate model names {sorted(n for n in names if names.count(n) > 1)}")
    registry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=registry.parent, prefix=".models.", suffix=".toml")
    with os.fdopen(fd, "w") as f:
        f.write(new_text)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; keep the registry readable by the server's user
    os.replace(tmp, registry)
    return action
