"""The ``lookalike eval`` report as Markdown, a self-contained HTML page and JSON-ready data."""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from lookalike.evaluate import EvalReport

__all__ = ["report_data", "report_html", "report_markdown", "scores_table"]


def _rows(report: EvalReport) -> list[str]:
    # Models first, then the fused rankings, each group in the order measured.
    names = list(report.scores)
    return [n for n in names if not n.startswith("fused:")] + [n for n in names if n.startswith("fused:")]


def _score_cells(report: EvalReport, name: str) -> list[str]:
    s = report.scores[name]
    return [
        f"{s.precision[1]:.3f}",
        f"{s.precision[5]:.3f}",
        f"{s.mean_ap:.3f}",
        f"{s.chance_precision:.3f}",
        f"{s.chance_map:.3f}",
        str(s.queries),
    ]


_SCORE_HEADER = ["ranking", "P@1", "P@5", "mAP", "chance P@1 (= P@5)", "chance mAP", "queries"]


def _confusion_rows(report: EvalReport, top: int = 10) -> list[tuple[str, list[int]]]:
    """Label pairs confused by any ranking, most confused overall first: (pair, count per ranking)."""
    names = _rows(report)
    per: dict[tuple[str, str], dict[str, int]] = {}
    for name in names:
        for a, b, n in report.confused[name]:
            per.setdefault((a, b), {})[name] = n
    ordered = sorted(per.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))[:top]
    return [(f"{a} ↔ {b}", [counts.get(n, 0) for n in names]) for (a, b), counts in ordered]


def _label_rows(report: EvalReport) -> list[tuple[str, int, list[str]]]:
    names = _rows(report)

    def cell(name: str, label: str) -> str:
        # "-": a label with one item has no relevant item, so its query is not scored.
        value = report.scores[name].precision_at_1_by_label.get(label)
        return "-" if value is None else f"{value:.3f}"

    return [(label, count, [cell(n, label) for n in names]) for label, count in report.labels.items()]


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---"] + ["---:"] * (len(header) - 1)
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def scores_table(report: EvalReport) -> str:
    """The P@1 / P@5 / mAP table alone, as Markdown."""
    return "\n".join(_md_table(_SCORE_HEADER, [[name, *_score_cells(report, name)] for name in _rows(report)]))


def _method_note(report: EvalReport) -> str:
    return (
        f"{report.items} images in {len(report.labels)} labels under `{report.root}`. Each image queries by its "
        f"stored id with `exclude_self` and ranks the other {report.items - 1}; a hit is relevant when it has the "
        "query's label. mAP averages precision at every relevant image over the whole ranking; chance is the "
        "expectation for a uniformly random ranking. `fused:distance` sums each model's squared L2 distance, "
        "`fused:rrf` is reciprocal rank fusion (k = 60); see docs/fusion.md."
    )


def report_markdown(report: EvalReport, title: str = "Retrieval evaluation") -> str:
    """The whole report as Markdown: scores, confused label pairs, per-label P@1, cleanup."""
    names = _rows(report)
    lines = [f"# {title}", "", _method_note(report), "", "## Scores", "", scores_table(report), ""]
    short = {n: c for n, c in report.short_rankings.items() if c}
    if short:
        lines += [f"Rankings shorter than N-1 (the server's top_k limit; missing ranks count as misses): {short}", ""]
    confusion = _confusion_rows(report)
    lines += ["## Most confused label pairs", "", "Queries whose first hit had the other label, either way:", ""]
    if confusion:
        lines += _md_table(["labels", *names], [[pair, *map(str, counts)] for pair, counts in confusion])
    else:
        lines.append("None: every first hit had its query's label.")
    lines += ["", "## P@1 per label", ""]
    lines += _md_table(["label", "items", *names], [[lbl, str(n), *cells] for lbl, n, cells in _label_rows(report)])
    left = "could not be checked" if report.left < 0 else str(report.left)
    lines += [
        "",
        f"Scratch namespace `{report.prefix}`: {report.deleted} item(s) deleted afterwards, {left} left.",
        "",
    ]
    if report.skipped:
        lines += [f"Skipped {len(report.skipped)} file(s) the server refused:", ""]
        lines += [f"- `{rel}`: {why}" for rel, why in report.skipped.items()]
        lines.append("")
    return "\n".join(lines)


_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 1.5rem; color: #222; max-width: 70rem; }
h1 { font-size: 1.3rem; } h2 { font-size: 1.05rem; margin-top: 1.6rem; }
table { border-collapse: collapse; margin: .5rem 0; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #e3e5e8; }
td.n { text-align: right; font-family: ui-monospace, monospace; }
th { background: #f6f7f9; text-align: left; }
p { color: #444; font-size: .9rem; }
"""


_NUM = ' class="n"'


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    # The first column names the row; the others are numbers, right-aligned.
    body = "".join(
        "<tr>" + "".join(f"<td{_NUM if i else ''}>{html.escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def report_html(report: EvalReport, title: str = "Retrieval evaluation") -> str:
    """The whole report as one self-contained HTML page."""
    names = _rows(report)
    confusion = _confusion_rows(report)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(_method_note(report))}</p>",
        "<h2>Scores</h2>",
        _html_table(_SCORE_HEADER, [[name, *_score_cells(report, name)] for name in names]),
        "<h2>Most confused label pairs</h2><p>Queries whose first hit had the other label, either way.</p>",
        _html_table(["labels", *names], [[pair, *map(str, counts)] for pair, counts in confusion])
        if confusion
        else "<p>None: every first hit had its query's label.</p>",
        "<h2>P@1 per label</h2>",
        _html_table(["label", "items", *names], [[lbl, str(n), *cells] for lbl, n, cells in _label_rows(report)]),
        f"<p>Scratch namespace {html.escape(report.prefix)}: {report.deleted} item(s) deleted afterwards, "
        f"{'could not be checked' if report.left < 0 else report.left} left.</p>",
    ]
    if report.skipped:
        items = "".join(f"<li>{html.escape(rel)}: {html.escape(why)}</li>" for rel, why in report.skipped.items())
        parts.append(f"<p>Skipped {len(report.skipped)} file(s) the server refused:</p><ul>{items}</ul>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>" + "".join(parts) + "</body></html>\n"
    )


def report_data(report: EvalReport) -> dict[str, Any]:
    """The report as plain JSON-ready data."""
    scores: Mapping[str, Any] = {
        name: {
            "queries": s.queries,
            "skipped_no_relevant": s.skipped,
            "rankings_shorter_than_n_minus_1": report.short_rankings.get(name, 0),
            "p_at_1": s.precision[1],
            "p_at_5": s.precision[5],
            "map": s.mean_ap,
            "chance_p_at_1": s.chance_precision,
            "chance_map": s.chance_map,
            "p_at_1_by_label": s.precision_at_1_by_label,
            "confused_pairs": [list(p) for p in report.confused.get(name, [])],
        }
        for name, s in report.scores.items()
    }
    return {
        "root": report.root,
        "items": report.items,
        "labels": report.labels,
        "scores": dict(scores),
        "scratch_prefix": report.prefix,
        "deleted": report.deleted,
        "left": report.left,
        "skipped": report.skipped,
    }
