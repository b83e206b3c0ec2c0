"""How a ``lookalike`` command ends: its exit codes and the error it reports in one line."""

from __future__ import annotations

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "CliError",
]

# 2 is argparse's own code for bad usage; 130 and 141 follow the shell's 128 + signal
# convention (SIGINT, SIGPIPE) so scripts see what they would see from any Unix tool.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141


class CliError(Exception):
    """A problem to report as one line and exit 1 (bad file, bad --attr...)."""
