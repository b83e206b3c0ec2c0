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
from lookalike_server.preprocess_spec import DECODE_KEYS, DECODE_PRESETS, PRESETS, PreprocessSpec

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
    decode: str = _PRE.decode
    jpeg_draft: bool = _PRE.jpeg_draft
    exif_orientation: bool = _PRE.exif_orientation
    input_dtype: str = _PRE.input_dtype
    pooling: str = "none"
    output_layout: str = ""
    dupes_threshold: float = 0.0
    batching: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_preset(cls, preset: str, **values: Any) -> ModelEntry:
        """Builds an entry whose preprocessing starts from ``preset``.

        Args:
            preset: A key of :data:`lookalike_server.preprocess.PRESETS`.
            **values: Other fields; explicit ones win over the preset. A
                ``decode`` value (``"fast"``/``"exact"``) sets ``jpeg_draft``
                and ``exif_orientation``.

        Raises:
            ConfigError: Unknown preset or decode, invalid name.
        """
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        flags = resolve_decode(values)
        entry = cls(**{**PRESETS[preset], **values, **flags, "preset": preset})
        entry.decode = entry.preprocess_spec().decode
        if not NAME_RE.match(entry.name):
            raise ConfigError(f"model name {entry.name!r} {NAME_RULE}")
        return entry

    def preprocess_spec(self) -> PreprocessSpec:
        """The server's :class:`PreprocessSpec` for this entry (what the server will do).

        Raises:
            ConfigError: A preprocessing value the server would refuse.
        """
        values = {f: getattr(self, f) for f in _PRE_FIELDS}
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        try:
            return PreprocessSpec(**values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.name}: preprocessing: {exc}") from None

    def to_toml(self) -> str:
        """Renders this entry as a ``[[models]]`` block (ending in a newline)."""
        # ``decode`` is written as what the flags amount to, so the file can never
        # contradict itself; flags matching no preset stand alone (no decode line).
        values = {k: getattr(self, k) for k in SCALAR_KEYS} | {"decode": self.preprocess_spec().decode}
        if values["decode"] not in DECODE_PRESETS:
            del values["decode"]
        lines = ["[[models]]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
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
    "decode",
    "jpeg_draft",
    "exif_orientation",
    "input_dtype",
    "pooling",
    "output_layout",
    "dupes_threshold",
)
#: Every key an entry may have: the reader refuses anything else.
ENTRY_KEYS: frozenset[str] = frozenset(SCALAR_KEYS) | frozenset(TABLE_KEYS)
# The written order and the dataclass must name the same keys.
assert {f.name for f in fields(ModelEntry)} == ENTRY_KEYS, "registry schema: key order and ModelEntry disagree"


_PRE_FIELDS = tuple(f.name for f in fields(PreprocessSpec))


def resolve_decode(entry: dict[str, Any]) -> dict[str, bool]:
    """The decode flags an entry sets, with its ``decode`` preset resolved.

    ``decode = "fast"`` or ``"exact"`` names both flags at once
    (:data:`~lookalike_server.preprocess_spec.DECODE_PRESETS`). A flag written
    beside it must agree: ``decode = "exact"`` is a promise that the model sees
    its framework's pixels, and a ``jpeg_draft = true`` beside it would
    silently break it. Without ``decode`` the flags stand alone, each
    defaulting to today's behaviour (``true``).

    Args:
        entry: A ``[[models]]`` table (or the exporter's values).

    Returns:
        The flags the entry sets, explicitly or through ``decode``
        (absent ones are left to :class:`PreprocessSpec`'s defaults).

    Raises:
        ConfigError: Unknown ``decode``, a flag that is not a boolean, or a
            flag that contradicts ``decode``; the message says what to change.
    """
    flags: dict[str, bool] = {}
    for key in DECODE_KEYS:
        if key in entry:
            if not isinstance(entry[key], bool):
                raise ConfigError(f"{key} = {entry[key]!r} must be true or false (a TOML boolean, unquoted)")
            flags[key] = entry[key]
    decode = entry.get("decode")
    if decode is None or decode == "":
        return flags
    if decode not in DECODE_PRESETS:
        raise ConfigError(
            f"decode = {decode!r} is not one of {sorted(DECODE_PRESETS)} "
            '("fast": reduced-size JPEG decoding and EXIF orientation; "exact": what the framework decodes), '
            "or leave it out and set jpeg_draft / exif_orientation one by one"
        )
    preset = DECODE_PRESETS[decode]
    for key, value in flags.items():
        if value != preset[key]:
            raise ConfigError(
                f'decode = "{decode}" means {key} = {str(preset[key]).lower()}, but the entry says '
                f"{str(value).lower()}: remove {key}, or remove decode to set the flags one by one"
            )
    return dict(preset)


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
