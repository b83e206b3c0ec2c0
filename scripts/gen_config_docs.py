"""Writes the settings table of ``docs/configuration.md`` from the config dataclasses.

    python scripts/gen_config_docs.py          # rewrite the block between the markers
    python scripts/gen_config_docs.py --check  # exit 1 if the committed file is stale

The table itself comes from :func:`lookalike_server.config_loading.config_reference`;
``tests/unit/test_config.py`` fails when the committed file drifts from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lookalike_server.config_loading import config_reference

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
START = "<!-- config-reference:start -->"
END = "<!-- config-reference:end -->"


def render(text: str) -> str:
    """``text`` with the block between the markers replaced by the current table."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{config_reference()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    """Rewrites (or with ``--check`` only compares) ``docs/configuration.md``."""
    text = DOC.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            sys.stderr.write(f"{DOC} is stale: run python scripts/gen_config_docs.py\n")
            return 1
        return 0
    if new != text:
        DOC.write_text(new)
    sys.stdout.write(f"{DOC.relative_to(ROOT)} {'updated' if new != text else 'already current'}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
