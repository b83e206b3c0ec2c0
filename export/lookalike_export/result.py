"""What one export produced: the ONNX file, its registry entry and its parity report.

Kept apart from :mod:`.entry` (the registry writer) and :mod:`.parity` (which
needs the entry to preprocess photos) so neither imports the other's module
back: ``entry`` ← ``parity`` ← ``result``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lookalike_export.parity import ParityReport
from lookalike_server.registry import ModelEntry


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
