"""Reading the model registry: ``models.toml`` → validated :class:`ModelSpec` objects.

The registry is a TOML file with one ``[[models]]`` table per model (see
``models/models.toml`` and the README). Its schema — which keys a table may
hold — is :mod:`lookalike_server.registry`, shared with the exporter that
writes it; this module is the server's reader: it resolves presets and
relative paths, applies the server's batching defaults, and turns every
problem into a :class:`~lookalike_server.errors.ConfigError` naming the model.
It needs no ONNX Runtime, so the registry can be checked without loading a
model (:mod:`lookalike_server.models` loads them).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lookalike_server.config import BatchingConfig
from lookalike_server.errors import ConfigError
from lookalike_server.preprocess_spec import DECODE_KEYS, PRESETS, PreprocessSpec
from lookalike_server.registry import ENTRY_KEYS, NAME_RE, NAME_RULE, resolve_decode
from lookalike_server.validation import MAX_DIM, MAX_DUPES_THRESHOLD

_PREPROCESS_KEYS = {f.name for f in dataclasses.fields(PreprocessSpec)}
# Every preprocessing setting must be a registry key, or an entry could not set it.
assert _PREPROCESS_KEYS <= ENTRY_KEYS, "registry schema lacks a PreprocessSpec field"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry, validated.

    Attributes:
        name: Name used in requests.
        version: Version of the weights/export (collection and cache keys).
        path: Absolute path of the ONNX file.
        sha256: Expected hex digest of the file, or "" to skip the check.
        description: Free text.
        dim: Embedding dimension after pooling.
        input: Input tensor name, "" = the first input.
        output: Output tensor name, "" = the first output.
        optional: A load failure is logged and the model skipped.
        preprocess: How images become the input tensor.
        pooling: "none", "avg" or "max" over a 4-D output's spatial axes.
        output_layout: Layout of a 4-D output ("NCHW"/"NHWC").
        dupes_threshold: Default FindDuplicates threshold (squared L2) for
            this model's embeddings; 0 = :data:`DEFAULT_DUPES_THRESHOLD`.
        batching: Micro-batching settings for this model.
    """

    name: str
    version: str
    path: Path
    sha256: str
    description: str
    dim: int
    input: str
    output: str
    optional: bool
    preprocess: PreprocessSpec
    pooling: str
    output_layout: str
    batching: BatchingConfig
    dupes_threshold: float = 0.0

    @property
    def key(self) -> str:
        """``name@version``: identifies the exact embedding space (cache keys)."""
        return f"{self.name}@{self.version}"


def _entry_error(registry: Path, index: int, name: str, message: str) -> ConfigError:
    """A registry error naming the file and the entry (by name, or by position when it has none)."""
    label = f"model {name!r}" if name else f"model #{index + 1}"
    return ConfigError(f"{registry}: {label}: {message}")


def parse_entry(entry: dict[str, Any], registry: Path, index: int, defaults: BatchingConfig) -> ModelSpec:
    """Validates one ``[[models]]`` table.

    Args:
        entry: The TOML table.
        registry: The registry file (relative paths resolve against its folder).
        index: Position in the file, for messages.
        defaults: Server-wide batching settings the entry may override.

    Returns:
        The spec.

    Raises:
        ConfigError: Naming the model and the problem.
    """
    name = str(entry.get("name", ""))
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise _entry_error(registry, index, name, f"unknown key(s) {sorted(unknown)}")
    if not NAME_RE.match(name):
        raise _entry_error(registry, index, name, f"name {NAME_RULE}")
    for required in ("path", "dim"):
        if required not in entry:
            raise _entry_error(registry, index, name, f"missing required key {required!r}")

    preset = str(entry.get("preset", ""))
    if preset and preset not in PRESETS:
        raise _entry_error(registry, index, name, f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
    pre: dict[str, Any] = dict(PRESETS.get(preset, {}))
    pre.update({k: entry[k] for k in _PREPROCESS_KEYS - set(DECODE_KEYS) if k in entry})
    pre["preset"] = preset
    try:
        pre.update(resolve_decode(entry))
    except ConfigError as exc:
        raise _entry_error(registry, index, name, str(exc)) from None
    for k in ("mean", "std"):
        if k in pre:
            pre[k] = tuple(float(v) for v in pre[k])
    try:
        spec = PreprocessSpec(**pre)
    except (TypeError, ValueError) as exc:
        raise _entry_error(registry, index, name, f"preprocessing: {exc}") from None

    pooling = str(entry.get("pooling", "none"))
    if pooling not in ("none", "avg", "max"):
        raise _entry_error(registry, index, name, f"pooling {pooling!r} must be none, avg or max")
    output_layout = str(entry.get("output_layout", "")) or spec.layout
    if output_layout not in ("NCHW", "NHWC"):
        raise _entry_error(registry, index, name, f"output_layout {output_layout!r} must be NCHW or NHWC")
    dim = entry["dim"]
    if not isinstance(dim, int) or not 1 <= dim <= MAX_DIM:
        raise _entry_error(registry, index, name, f"dim {dim!r} must be an integer in 1..{MAX_DIM} (Milvus' limit)")
    dupes_threshold = entry.get("dupes_threshold", 0.0)
    if isinstance(dupes_threshold, bool) or not isinstance(dupes_threshold, int | float):
        raise _entry_error(registry, index, name, f"dupes_threshold {dupes_threshold!r} must be a number")
    if not 0.0 <= float(dupes_threshold) <= MAX_DUPES_THRESHOLD:
        raise _entry_error(
            registry,
            index,
            name,
            f"dupes_threshold {dupes_threshold!r} must be in 0..{MAX_DUPES_THRESHOLD} (squared L2; 0 = the default)",
        )
    overrides = entry.get("batching", {})
    try:
        batching = dataclasses.replace(defaults, **overrides)
    except (TypeError, ConfigError) as exc:
        raise _entry_error(registry, index, name, f"batching: {exc}") from None

    path = Path(str(entry["path"]))
    if not path.is_absolute():
        path = (registry.parent / path).resolve()
    return ModelSpec(
        name=name,
        version=str(entry.get("version", "1")),
        path=path,
        sha256=str(entry.get("sha256", "")).lower(),
        description=str(entry.get("description", "")),
        dim=dim,
        input=str(entry.get("input", "")),
        output=str(entry.get("output", "")),
        optional=bool(entry.get("optional", False)),
        preprocess=spec,
        pooling=pooling,
        output_layout=output_layout,
        batching=batching,
        dupes_threshold=float(dupes_threshold),
    )


def load_registry(path: str | Path, defaults: BatchingConfig, only: Sequence[str] = ()) -> list[ModelSpec]:
    """Reads and validates the registry.

    Args:
        path: The TOML file.
        defaults: Batching defaults for entries without overrides.
        only: If given, keep just these model names (each must exist).

    Returns:
        The specs, in file order.

    Raises:
        ConfigError: Unreadable file, bad entry, duplicate or unknown name.
    """
    registry = Path(path).resolve()
    try:
        data = tomllib.loads(registry.read_text())
    except FileNotFoundError:
        raise ConfigError(f"model registry {registry} does not exist (set --models-registry)") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read model registry {registry}: {exc}") from None
    entries = data.get("models", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"model registry {registry} has no [[models]] entries")
    specs = [parse_entry(e, registry, i, defaults) for i, e in enumerate(entries)]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"model registry {registry}: duplicate model name(s) {dupes}")
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ConfigError(f"models.only names {missing}, not in {registry} (has {names})")
        specs = [s for s in specs if s.name in only]
    return specs
