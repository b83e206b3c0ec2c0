"""``lookalike dupes``: near-duplicate groups of the index, as a table, JSON or an HTML page.

By default the server compares under every loaded model at once (two items are near when
any model puts them within its calibrated threshold); ``--model`` names one or more.

Groups are printed as the server streams them (a walk over a large index takes a
while; the first groups show early). Every group lists its representative (the
earliest indexed item) and each copy as ``exact`` (same bytes or same pixels) or
``similar`` (within the threshold), with its distance to the representative.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lookalike.cli.exits import EXIT_OK, CliError
from lookalike.cli.options import connect, parse_attrs
from lookalike.console import print_json
from lookalike.dupes import DuplicateGroup, DuplicatesSummary, format_distances
from lookalike.thumbnails import load_thumbnails

__all__ = ["add_dupes_arguments", "cmd_dupes", "format_group", "format_summary"]


def add_dupes_arguments(p: argparse.ArgumentParser) -> None:
    """The ``dupes`` flags."""
    p.add_argument(
        "--model",
        action="append",
        help="model to compare under; repeat it to compare under several: two items are near when any of "
        "them puts them within its calibrated threshold (default: every model the server has loaded)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        help="squared L2 distance to a group's representative, with one --model "
        "(default: the model's calibrated value)",
    )
    p.add_argument("--prefix", help="only items whose key starts with this")
    p.add_argument("--attr", action="append", metavar="K=V", help="only items with this attribute (repeatable)")
    p.add_argument("--exact-only", action="store_true", help="only groups holding an exact copy")
    p.add_argument("--page-size", type=int, default=0, help="members per message on the wire (default: server's)")
    p.add_argument("--json", action="store_true", help="print JSON (one object: groups and summary)")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained page with the groups as thumbnails")
    p.add_argument(
        "--thumbs-root",
        metavar="DIR",
        help="with --html, read thumbnails only from files under DIR, keys taken as paths relative to it "
        "(never outside it, symlinks included); without it no local file is read",
    )
    p.set_defaults(func=cmd_dupes)


def format_group(number: int, group: DuplicateGroup, models: Sequence[str] = ()) -> str:
    """One group as text: the representative, then each copy with its kind and distance(s), in ``models`` order."""
    rep = group.representative
    lines = [
        f"group {number}: {len(group.members)} items, {group.exact_count} exact  "
        f"(representative id {rep.id})  {rep.key}"
    ]
    for m in group.copies:
        kind = "exact" if m.exact else "similar"
        lines.append(f"    {kind:<8} {format_distances(m, models)}  id {m.id:<8} {m.key}")
    return "\n".join(lines)


def format_summary(s: DuplicatesSummary) -> str:
    """The closing line."""
    which = "model default" if s.default_threshold else "given"
    capped = f", {s.capped_items} items had more neighbours than kept" if s.capped_items else ""
    if len(s.models) > 1:
        names = " or ".join(f"{m} within {t:g}" for m, t in s.thresholds.items())
        rule = f"{'/'.join(s.models)}: near when {names} ({which}s)"
    else:
        rule = f"{s.model}: threshold {s.threshold:g} ({which})"
    return (
        f"{rule}; {s.items_scanned} items scanned, {s.groups} groups ({s.grouped_items} items), "
        f"{s.search_mode} search, {s.elapsed_ms / 1e3:.1f} s{capped}"
    )


def cmd_dupes(args: argparse.Namespace) -> int:
    """Runs FindDuplicates and prints the groups as they come, then the summary."""
    groups: list[DuplicateGroup] = []
    summary: DuplicatesSummary | None = None
    with connect(args) as client:
        models = list(dict.fromkeys(args.model or []))
        if not models:
            # Every loaded model: a copy one model places beyond its threshold is often well
            # within the other's (docs/duplicates.md, "Several models").
            models = [m.name for m in client.list_models()]
            if not models:
                raise CliError("the server has no model loaded")
        if args.threshold is not None and len(models) > 1:
            raise CliError(
                f"--threshold applies to one model; name it with --model (this server has {', '.join(models)})"
            )
        for part in client.find_duplicates(
            models,
            threshold=args.threshold,
            key_prefix=args.prefix,
            attributes=parse_attrs(args.attr),
            page_size=args.page_size,
            exact_only=args.exact_only,
        ):
            if isinstance(part, DuplicatesSummary):
                summary = part
                continue
            groups.append(part)
            if not args.json:
                print(format_group(len(groups), part, models), flush=True)
    if summary is None:
        raise CliError("the server ended the stream without a summary")
    if args.json:
        out: dict[str, Any] = {"groups": [asdict(g) for g in groups], "summary": asdict(summary)}
        print_json(out, sys.stdout)
    else:
        print(format_summary(summary))
    if args.html:
        _write_page(args, groups, summary)
    return EXIT_OK


def _write_page(args: argparse.Namespace, groups: list[DuplicateGroup], summary: DuplicatesSummary) -> None:
    # Imported here: only --html needs the page renderer.
    from lookalike.html import render_dupes_html

    keys = [m.key for g in groups for m in g.members]
    try:
        thumbs = load_thumbnails(keys, Path(args.thumbs_root) if args.thumbs_root else None)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    Path(args.html).write_text(render_dupes_html(groups, summary, thumbs), encoding="utf-8")
    missing = sum(1 for v in thumbs.values() if v is None)
    note = f" ({missing} keys without a preview)" if missing else ""
    print(f"wrote {args.html}{note}", file=sys.stderr)
