"""Flags every subcommand shares, and what they become: a connected client, attribute filters."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from lookalike.cli.exits import CliError
from lookalike.client import DEFAULT_TARGET, LookalikeClient
from lookalike.security import add_security_arguments, security_from_args

__all__ = ["add_connection_arguments", "connect", "parse_attrs", "target_text"]


class _TargetAction(argparse.Action):
    """``--target`` may be repeated: the given values replace the default and accumulate."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, "_targets_given", [])
        given.append(str(values))
        namespace._targets_given = given
        setattr(namespace, self.dest, list(given))


def target_text(target: str | Sequence[str]) -> str:
    """The target(s) as one line for messages."""
    return target if isinstance(target, str) else ",".join(target)


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the global ``--target``, ``--timeout`` and connection security flags.

    Args:
        parser: The top-level parser (the flags go before the subcommand).
    """
    parser.add_argument(
        "--target",
        action=_TargetAction,
        default=os.environ.get("LOOKALIKE_TARGET", DEFAULT_TARGET),
        help="server host:port; repeat it or give host1:port,host2:port for several replicas "
        "(round_robin over the healthy ones), or a gRPC target such as dns:///svc:50051 "
        "(env LOOKALIKE_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("LOOKALIKE_TIMEOUT", "60")),
        help="deadline per call in seconds (env LOOKALIKE_TIMEOUT; default %(default)s)",
    )
    add_security_arguments(parser)


def connect(args: argparse.Namespace) -> LookalikeClient:
    """Opens a client on the target(s), deadline and security the flags name.

    Args:
        args: Parsed arguments holding the flags of :func:`add_connection_arguments`.

    Returns:
        A client, to be used as a context manager.

    Raises:
        CliError: A target is malformed or does not resolve, or the security settings are
            invalid or unsafe for the target.
    """
    security = security_from_args(args)
    try:
        return LookalikeClient(args.target, timeout=args.timeout, security=security)
    except ValueError as exc:  # bad target or unsafe security settings: one line, not a traceback
        raise CliError(str(exc)) from exc


def parse_attrs(pairs: Sequence[str] | None) -> dict[str, str]:
    """Turns repeated ``--attr NAME=VALUE`` flags into a dict.

    Args:
        pairs: The flag values, or None when none were given.

    Returns:
        The attributes; a later pair for the same name wins.

    Raises:
        CliError: A pair without ``=`` or without a name.
    """
    attrs: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--attr expects NAME=VALUE, got {pair!r}")
        attrs[name] = value
    return attrs
