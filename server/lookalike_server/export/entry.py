"""Registry entries (``models.toml``) written by the exporter.

The server's loader (:mod:`lookalike_server.models`) is the reader; this
module is the writer. Updating a registry is done on the text, one
``[[models]]`` block at a time, so the comments and hand edits of the other
entries survive an export; the result is parsed back before it is written.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from lookalike_server.errors import ConfigError
from lookalike_server.preprocess import PRESETS

if TYPE_CHECKING:
    from lookalike_server.export.parity import ParityReport

# One source of truth for presets: the server's own preprocessing module
# (numpy + Pillow only; it pulls in nothing of the serving stack).
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
# Key order of a written entry: the schema's order, so files diff nicely.
_KEY_ORDER = [
    "name",
    "version",
    "path",
    "sha256",
    "description",
    "dim",
    "input",
    "output",
    "optional",
    "preset",
    "height",
    "width",
    "resize_shorter",
    "interpolation",
    "color_order",
    "layout",
    "scale",
    "mean",
    "std",
    "pooling",
    "output_layout",
]


@dataclass
class ModelEntry:
    """One ``[[models]]`` table.

    Attributes mirror the registry schema documented in ``models/models.toml``.
    Preprocessing fields are always written out in full (not only the preset)
    so a reader sees exactly what the server will do.
    """

    name: str
    path: str
    dim: int
    description: str = ""
    version: str = "1"
    sha256: str = ""
    input: str = "input"
    output: str = "embedding"
    optional: bool = False
    preset: str = "imagenet"
    height: int = 224
    width: int = 224
    resize_shorter: int = 256
    interpolation: str = "bilinear"
    color_order: str = "RGB"
    layout: str = "NCHW"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    pooling: str = "none"
    output_layout: str = ""
    batching: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str, **fields: Any) -> ModelEntry:
        """Builds an entry whose preprocessing starts from ``preset``.

        Args:
            preset: A key of :data:`PRESETS`.
            **fields: Other fields; explicit ones win over the preset.

        Raises:
            ConfigError: Unknown preset or invalid name.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        merged = {**PRESETS[preset], **fields, "preset": preset}
        entry = cls(**merged)
        if not _NAME_RE.match(entry.name):
            raise ConfigError(f"model name {entry.name!r} must match [a-z0-9][a-z0-9_]* (max 63 chars)")
        return entry

    def to_toml(self) -> str:
        """Renders this entry as a ``[[models]]`` block (ending in a newline)."""
        values = {k: getattr(self, k) for k in _KEY_ORDER}
        lines = ["[[models]]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        if self.batching:
            lines += ["[models.batching]"] + [f"{k} = {_toml_value(v)}" for k, v in self.batching.items()]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ExportResult:
    """What an export produced.

    Attributes:
        onnx_path: The written ONNX file.
        entry: Its registry entry (sha256 filled in).
        parity: The parity report, or None when no photos were given.
        seconds: Wall time of export + checks.
    """

    onnx_path: Path
    entry: ModelEntry
    parity: ParityReport | None
    seconds: float


def _toml_value(v: Any) -> str:
    """Serialises the few value types the schema uses."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigError(f"cannot write non-finite number {v} to the registry")
        return repr(v)  # shortest round-tripping form
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to the registry")


def file_sha256(path: Path) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def read_entries(registry: Path) -> list[Mapping[str, Any]]:
    """Returns the raw ``[[models]]`` tables of a registry file."""
    return list(tomllib.loads(registry.read_text()).get("models", []))
