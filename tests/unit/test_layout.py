"""Package boundaries: the server never loads the exporter or torch; the exporter has no import circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

EXPORT = ROOT / "export" / "lookalike_export"


def test_server_imports_neither_the_exporter_nor_torch() -> None:
    code = (
        "import sys, lookalike_server.app, lookalike_server.models, lookalike_server.registry_reader\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lookalike_export', 'tensorflow')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """The lookalike_export modules a file imports, at any depth (TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lookalike_export."):
            found.add(node.module.removeprefix("lookalike_export."))
    return found


def test_exporter_modules_form_no_import_circle() -> None:
    graph = {p.stem: _imports(p) for p in EXPORT.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    circular = sorted(m for m in graph if reaches(m, m, set()))
    assert circular == [], f"import circle through {circular}"
