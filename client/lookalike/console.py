"""What the CLI prints: JSON, the side-by-side hit table, and progress for long runs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any, TextIO

from lookalike.types import FusedHit, ModelHits, SearchResult

__all__ = ["LineProgress", "format_side_by_side", "print_json", "progress_bar", "search_json", "silence_stdout"]


def print_json(obj: Any, out: TextIO) -> None:
    json.dump(obj, out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def _truncate(text: str, width: int) -> str:
    # Keep the end of long keys: for paths the file name is the informative part.
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def format_side_by_side(
    results: Sequence[ModelHits],
    key_width: int = 36,
    *,
    fused: Sequence[FusedHit] = (),
    fusion_method: str | None = None,
) -> str:
    """Formats per-model hit lists as one text table, one column group per model.

    Args:
        results: One :class:`ModelHits` per model.
        key_width: Widest key shown per column; longer keys keep their tail.
        fused: The fused list, shown as a last "fused" column when ``fusion_method`` is set.
        fusion_method: The method that built it (``"distance"`` or ``"rrf"``); None = no column.

    Returns:
        The table, rank down the side, ``distance key`` per model across (the fused column
        shows the fused score: a distance sum, or RRF's summed reciprocal ranks).
    """
    if not results:
        return "(no models searched)"
    columns: list[tuple[str, list[tuple[float, str]]]] = [
        (mh.model, [(h.distance, h.key) for h in mh.hits]) for mh in results
    ]
    if fusion_method is not None:
        columns.append((f"fused ({fusion_method})", [(h.score, h.key) for h in fused]))
    depth = max((len(hits) for _, hits in columns), default=0)
    cell_width = 8 + 1 + key_width
    header = "rank  " + "  ".join(f"{name:<{cell_width}.{cell_width}}" for name, _ in columns)
    rule = "----  " + "  ".join("-" * cell_width for _ in columns)
    lines = [header.rstrip(), rule]
    for i in range(depth):
        cells = []
        for _, hits in columns:
            if i < len(hits):
                score, key = hits[i]
                cells.append(f"{score:8.4f} {_truncate(key, key_width):<{key_width}}")
            else:
                cells.append(" " * cell_width)
        lines.append((f"{i + 1:>4}  " + "  ".join(cells)).rstrip())
    if depth == 0:
        lines.append("(no hits)")
    return "\n".join(lines)


def search_json(result: SearchResult) -> dict[str, Any]:
    out: dict[str, Any] = {
        "results": [asdict(mh) for mh in result.results],
        "timing": asdict(result.timing) if result.timing else None,
    }
    if result.fusion_method is not None:
        out["fusion_method"] = result.fusion_method
        out["fused"] = [asdict(h) for h in result.fused]
    return out


class LineProgress:
    """Progress for a stderr that is not a terminal (CI logs, pipes, files): plain lines, no redraws.

    tqdm redraws its bar with carriage returns; where stderr is not a terminal every redraw
    becomes a new line in the log, hundreds per run. This prints one line when another
    ``step`` of the total is done (every 10% by default) or ``interval_s`` has passed since the
    last line, whichever comes first, and one at the end. It has the small part of tqdm's
    interface that ``index`` uses (``update``, ``set_postfix``, ``close``).

    Args:
        total: Items expected.
        desc: Label at the start of each line.
        file: Where lines go.
        step: Fraction of ``total`` between lines.
        interval_s: Longest silence between lines while items complete, in seconds.
        clock: Monotonic clock (injectable for tests).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        file: TextIO,
        *,
        step: float = 0.1,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.file = file
        self.step = step
        self.interval_s = interval_s
        self.clock = clock
        self.n = 0
        self.postfix: dict[str, Any] = {}
        self._start = clock()
        self._last_line_at = self._start
        self._last_step = 0  # how many whole steps the last printed line had reached
        self._printed_n = 0

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more items done; prints a line when a step or the interval is reached."""
        self.n += n
        steps = math.floor(self.n / (self.total * self.step)) if self.total else 0
        now = self.clock()
        if self.n >= self.total or steps > self._last_step or now - self._last_line_at >= self.interval_s:
            self._print(now)

    def set_postfix(self, **kwargs: Any) -> None:
        """Counters appended to each line (as ``name=value``)."""
        self.postfix = kwargs

    def close(self) -> None:
        """Prints the final count unless the last line already showed it (e.g. when stopped early)."""
        if self.n != self._printed_n:
            self._print(self.clock())

    def _print(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        eta = f", ETA {(self.total - self.n) / rate:.0f}s" if rate > 0 and self.n < self.total else ""
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        line = f"{self.desc}: {self.n}/{self.total}{pct} {rate:.1f} img/s, {elapsed:.0f}s elapsed{eta}"
        print(f"{line}  {extra}" if extra else line, file=self.file, flush=True)
        self._last_line_at = now
        self._printed_n = self.n
        if self.total:
            self._last_step = math.floor(self.n / (self.total * self.step))


def progress_bar(total: int, desc: str, quiet: bool) -> Any:
    """A tqdm bar when stderr is a terminal, :class:`LineProgress` lines otherwise; silent if quiet."""
    from tqdm import tqdm

    if quiet:
        return tqdm(total=total, disable=True)
    if _is_tty(sys.stderr):
        return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, dynamic_ncols=True)
    return LineProgress(total, desc, sys.stderr)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def silence_stdout() -> None:
    """Points stdout at /dev/null, so the interpreter's final flush to a closed pipe is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass
