"""Where settings come from, and how they are shown.

A setting is set, in increasing order of precedence, by:

1. its default (the dataclasses in :mod:`lookalike_server.config`),
2. an optional TOML file (``--config FILE`` or ``LOOKALIKE_CONFIG``), with one
   table per section (``[milvus]``, ``[redis]``...; server fields at top level),
3. an environment variable ``LOOKALIKE_<SECTION>_<FIELD>`` (server fields:
   ``LOOKALIKE_<FIELD>``),
4. a command-line flag ``--<section>-<field>`` (server fields: ``--<field>``).

Lists are comma-separated in env vars and flags. Values are converted to the
field's type here and validated by the dataclasses when they are built. The
flag and env names are derived from the field names in one place
(:func:`_env_name`, :func:`_flag_name`), which the parser, the start-up log
(:func:`describe`) and the docs table (:func:`config_reference`) all use.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from lookalike_server.config import REPO_ROOT, SECTIONS, Config
from lookalike_server.errors import ConfigError

ENV_PREFIX = "LOOKALIKE_"


def _server_fields() -> list[dataclasses.Field[Any]]:
    """The top-level (server section) fields of :class:`Config`."""
    return [f for f in dataclasses.fields(Config) if f.name not in SECTIONS]


def _convert(raw: Any, tp: Any, setting: str) -> Any:
    """Converts a TOML value or a string from env/flags to the field's type."""
    try:
        origin = get_origin(tp)
        if origin is tuple:
            (item_tp, *_) = get_args(tp)
            if isinstance(raw, str):
                raw = [s.strip() for s in raw.split(",") if s.strip()]
            return tuple(_convert(x, item_tp, setting) for x in raw)
        if tp is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if tp is int:
            if isinstance(raw, bool):
                raise ValueError("a boolean is not an integer")
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is str:
            return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid setting {setting}: {exc}") from None
    raise ConfigError(f"setting {setting} has unsupported type {tp}")


def _env_name(section: str | None, name: str) -> str:
    """``LOOKALIKE_MILVUS_URI`` for (``"milvus"``, ``"uri"``); ``LOOKALIKE_PORT`` for a server field."""
    return ENV_PREFIX + (f"{section}_{name}" if section else name).upper()


def _flag_name(section: str | None, name: str) -> str:
    """``--milvus-uri`` for (``"milvus"``, ``"uri"``); ``--port`` for a server field."""
    return "--" + (f"{section}-{name}" if section else name).replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting (``--port``, ``--milvus-uri``...) to a parser."""
    parser.add_argument("--config", help=f"TOML config file (env {ENV_PREFIX}CONFIG)")
    for f in _server_fields():
        parser.add_argument(
            _flag_name(None, f.name),
            dest=f.name,
            default=None,
            help=f"{f.metadata['help']} (env {_env_name(None, f.name)}; default {f.default!r})",
        )
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"[{section}]")
        for f in dataclasses.fields(cls):
            group.add_argument(
                _flag_name(section, f.name),
                dest=f"{section}.{f.name}",
                default=None,
                help=f"{f.metadata['help']} (env {_env_name(section, f.name)}; default {f.default!r})",
            )


def load_config(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
) -> Config:
    """Builds a validated :class:`Config` from defaults, TOML, env and flags.

    Args:
        argv: Command-line arguments (default: none; pass ``sys.argv[1:]``).
        env: Environment (default: ``os.environ``).
        parser: A parser that already has :func:`add_arguments`; built if None.

    Returns:
        The configuration.

    Raises:
        ConfigError: A setting is unknown, malformed or out of range.
    """
    env = os.environ if env is None else env
    if parser is None:
        parser = argparse.ArgumentParser(prog="lookalike-server")
        add_arguments(parser)
    ns = vars(parser.parse_args(list(argv or [])))

    values: dict[str | None, dict[str, Any]] = {None: {}, **{s: {} for s in SECTIONS}}
    config_file = ns.get("config") or env.get(ENV_PREFIX + "CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        for key, value in data.items():
            if key in SECTIONS:
                if not isinstance(value, dict):
                    raise ConfigError(f"config file {config_file}: [{key}] must be a table")
                values[key].update(value)
            else:
                values[None][key] = value

    specs: list[tuple[str | None, type]] = [(None, Config), *SECTIONS.items()]
    for section, cls in specs:
        hints = get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls) if f.name not in SECTIONS}
        unknown = set(values[section]) - names
        if unknown:
            where = f"[{section}]" if section else "top level"
            raise ConfigError(f"unknown setting(s) {sorted(unknown)} at {where} of the config file")
        for name in names:
            setting = f"{section}.{name}" if section else name
            env_value = env.get(_env_name(section, name))
            if env_value is not None:
                values[section][name] = env_value
            flag_value = ns.get(f"{section}.{name}" if section else name)
            if flag_value is not None:
                values[section][name] = flag_value
            if name in values[section]:
                values[section][name] = _convert(values[section][name], hints[name], setting)

    sections = {s: cls(**values[s]) for s, cls in SECTIONS.items()}
    return Config(**values[None], **sections)


def describe(config: Config) -> dict[str, Any]:
    """The configuration as a dict for logging, with secrets masked."""

    def walk(obj: Any) -> Any:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out[f.name] = walk(value)
            elif f.metadata.get("secret") and value:
                out[f.name] = "***"
            else:
                out[f.name] = value
        return out

    return walk(config)


def config_reference() -> str:
    """Markdown table of every setting, from the dataclasses (``scripts/gen_config_docs.py`` writes it out)."""
    rows = ["| setting | flag | env | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for section, cls in [(None, Config), *SECTIONS.items()]:
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            key = f"{section}.{f.name}" if section else f.name
            default = f.default if f.default is not dataclasses.MISSING else ""
            if isinstance(default, str):
                default = default.replace(str(REPO_ROOT), "<checkout>")
            rows.append(
                f"| `{key}` | `{_flag_name(section, f.name)}` | `{_env_name(section, f.name)}` "
                f"| `{default!r}` | {f.metadata['help']} |"
            )
    return "\n".join(rows)
