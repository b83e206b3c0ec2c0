"""The model registry's schema: what one ``[[models]]`` table of ``models.toml`` holds.

One home for the schema, shared by its reader and its writer: the server's
loader (:mod:`lookalike_server.registry_reader`) validates entries against
:data:`ENTRY_KEYS`, and the exporter (the separate ``lookalike_export``
package) writes :class:`ModelEntry` objects with :meth:`ModelEntry.to_toml`.
A key added here is known to both; a key written by one and not read by the
other cannot happen.

This module needs only the standard library, the preprocessing presets and
the error family: the exporter imports it without the serving stack (no
gRPC, no stores), and the server imports it without torch.
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lookalike_server.errors import ConfigError
from lookalike_server.preprocess import PRESETS, PreprocessSpec

#: Model names: used in requests, collection names and cache keys.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
NAME_RULE = "must match [a-z0-9][a-z0-9_]* (max 63 chars)"
# Preprocessing defaults have one home, the server's PreprocessSpec.
_PRE = PreprocessSpec()


@dataclass
class ModelEntry:
    """One ``[[models]]`` table, as the exporter writes it.

    Field order is the order keys are written in, so files diff nicely. The
    reader accepts exactly these keys (:data:`ENTRY_KEYS`); the defaults here
    are the exporter's (an exported graph always names its tensors ``input``
    and ``embedding``); the reader's meaning of an absent key is documented in
    ``models/models.toml``. Preprocessing fields are always written out in
    full (not only the preset) so a reader sees exactly what the server does.
    """

    name: str
    path: str
    dim: int
    version: str = "1"
    sha256: str = ""
    description: str = ""
    input: str = "input"
    output: str = "embedding"
    optional: bool = False
    preset: str = "imagenet"
    height: int = _PRE.height
    width: int = _PRE.width
    resize_shorter: int = _PRE.resize_shorter
    interpolation: str = _PRE.interpolation
    color_order: str = _PRE.color_order
    layout: str = _PRE.layout
    scale: float = _PRE.scale
    mean: tuple[float, float, float] = _PRE.mean
    std: tuple[float, float, float] = _PRE.std
    pooling: str = "none"
    output_layout: str = ""
    dupes_threshold: float = 0.0
    batching: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str, **values: Any) -> ModelEntry:
        """Builds an entry whose preprocessing starts from ``preset``.

        Args:
            preset: A key of :data:`lookalike_server.preprocess.PRESETS`.
            **values: Other fields; explicit ones win over the preset.

        Raises:
            ConfigError: Unknown preset or invalid name.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        entry = cls(**{**PRESETS[preset], **values, "preset": preset})
        if not NAME_RE.match(entry.name):
            raise ConfigError(f"model name {entry.name!r} {NAME_RULE}")
        return entry

    def to_toml(self) -> str:
        """Renders this entry as a ``[[models]]`` block (ending in a newline)."""
        lines = ["[[models]]"] + [f"{k} = {toml_value(getattr(self, k))}" for k in SCALAR_KEYS]
        if self.batching:
            lines += ["[models.batching]"] + [f"{k} = {toml_value(v)}" for k, v in self.batching.items()]
        return "\n".join(lines) + "\n"


#: Sub-tables of an entry (``[models.batching]``); everything else is a value.
TABLE_KEYS: tuple[str, ...] = ("batching",)
#: Value keys in written order, so files diff nicely.
SCALAR_KEYS: tuple[str, ...] = (
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
    "dupes_threshold",
)
#: Every key an entry may have: the reader refuses anything else.
ENTRY_KEYS: frozenset[str] = frozenset(SCALAR_KEYS) | frozenset(TABLE_KEYS)
# The written order and the dataclass must name the same keys.
assert {f.name for f in fields(ModelEntry)} == ENTRY_KEYS, "registry schema: key order and ModelEntry disagree"


def toml_value(v: Any) -> str:
    """Serialises the few value types the schema uses.

    Raises:
        ConfigError: A value TOML (or the schema) cannot hold.
    """
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
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to the registry")


def read_entries(registry: Path) -> list[dict[str, Any]]:
    """Returns the raw ``[[models]]`` tables of a registry file.

    Raises:
        FileNotFoundError: No such file.
        OSError: It cannot be read.
        tomllib.TOMLDecodeError: It is not TOML.
    """
    return list(tomllib.loads(registry.read_text()).get("models", []))


def file_sha256(path: Path) -> str:
    """Returns the hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
