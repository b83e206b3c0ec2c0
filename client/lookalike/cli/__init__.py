"""The ``lookalike`` command line: talk to a lookalike server from a shell.

Every subcommand takes the global ``--target`` (env ``LOOKALIKE_TARGET``, default
``127.0.0.1:50051``), ``--timeout`` (env ``LOOKALIKE_TIMEOUT``, seconds per call) and the
connection security flags ``--tls``, ``--ca``, ``--cert``/``--key``, ``--token`` and
``--insecure-token`` (env ``LOOKALIKE_TLS``, ``LOOKALIKE_CA``, ``LOOKALIKE_CERT``,
``LOOKALIKE_KEY``, ``LOOKALIKE_TOKEN``; see :mod:`lookalike.security`). Prefer the
environment variable (or a file the shell reads) for the token: a flag shows in ``ps``.

Exit codes: 0 success; 1 an RPC or input error (one line on stderr: status code and message,
no traceback); 2 bad usage (argparse); 3 ``index`` finished with some files failed;
130 interrupted; 141 the reader of stdout went away (``lookalike stats | head``).

Modules: :mod:`~lookalike.cli.parser` (every flag), :mod:`~lookalike.cli.options` (the
shared connection and ``--attr`` flags), :mod:`~lookalike.cli.commands` (the one-call
subcommands), :mod:`~lookalike.cli.index` (``index``: retry rounds and the verification
pass), :mod:`~lookalike.cli.exits` (exit codes). This module runs them: :func:`main`, the
``lookalike`` console script and ``python -m lookalike.cli``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lookalike.cli.exits import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PIPE, CliError
from lookalike.cli.options import target_text
from lookalike.cli.parser import build_parser
from lookalike.client import LookalikeError
from lookalike.console import silence_stdout

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see the module doc).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `serve` hands everything after it, untouched and in order, to the server's own parser
    # (including --help), which argparse.REMAINDER alone does not do for "-" arguments.
    if "serve" in argv:
        cut = argv.index("serve") + 1
        args = parser.parse_args(argv[:cut])
        if args.command == "serve":
            args.server_args = argv[cut:]
        else:
            args = parser.parse_args(argv)
    else:
        args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at exit
        return code
    except LookalikeError as err:
        print(f"error: {err.code.name}: {err.message} (target {target_text(args.target)})", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`lookalike stats | head`): stop quietly, like any Unix tool.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        silence_stdout()
        return EXIT_PIPE
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
