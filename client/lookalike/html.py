"""A self-contained HTML page for a side-by-side search: the query, then one column per model.

This is the page the original notebook drew with ``display``: for each model its ranked hits
as thumbnails with distance and key, so two models can be compared on the same query at a
glance. A fused search adds a last "fused" column whose hits show each model's distance and
rank, so the page says why the fused order is what it is. Everything is inlined (CSS and
images as base64 ``data:`` URIs) so the one file can be mailed, archived or opened offline.
Thumbnails are downscaled with Pillow when it is installed; without it the original bytes are
inlined.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from lookalike.dupes import format_distances
from lookalike.images import data_uri, thumbnail
from lookalike.types import FusedHit, ModelHits

if TYPE_CHECKING:
    from lookalike.dupes import DuplicateGroup, DuplicatesSummary

_CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
.meta { color: #666; font-size: .85rem; margin-bottom: 1rem; }
.query { display: flex; gap: 1rem; align-items: center; margin-bottom: 1.2rem; }
.query img { max-width: 256px; max-height: 256px; border: 3px solid #2b6cb0; border-radius: 6px; }
.models { display: grid; gap: 1rem; grid-template-columns: repeat(var(--ncols), minmax(200px, 1fr)); }
.model { background: #f6f7f9; border-radius: 8px; padding: .6rem; }
.model h2 { font-size: 1rem; margin: .2rem 0 .6rem; text-align: center; }
.hit { display: flex; gap: .6rem; align-items: center; background: #fff; border-radius: 6px;
       padding: .35rem; margin-bottom: .45rem; }
.hit img, .hit .noimg { width: 96px; height: 96px; object-fit: contain; flex: none;
       background: #fff; border: 1px solid #e3e5e8; border-radius: 4px; }
.hit .noimg { display: flex; align-items: center; justify-content: center; color: #999;
       font-size: .75rem; }
.rank { font-weight: bold; color: #2b6cb0; }
.dist { font-family: ui-monospace, monospace; }
.key { font-size: .8rem; color: #444; word-break: break-all; }
.attrs { font-size: .75rem; color: #777; }
.empty { color: #999; text-align: center; }
.model.fused { background: #eef4fb; }
.why { font-size: .75rem; color: #555; font-family: ui-monospace, monospace; }
.group { background: #f6f7f9; border-radius: 8px; padding: .6rem; margin-bottom: 1rem; }
.group h2 { font-size: 1rem; margin: .2rem 0 .6rem; }
.members { display: flex; flex-wrap: wrap; gap: .6rem; }
.member { background: #fff; border-radius: 6px; padding: .35rem; width: 200px; font-size: .8rem; }
.member img, .member .noimg { width: 192px; height: 192px; object-fit: contain; display: flex;
       align-items: center; justify-content: center; color: #999; border: 1px solid #e3e5e8; border-radius: 4px; }
.member.rep { outline: 3px solid #2b6cb0; }
.kind-exact { color: #b7791f; font-weight: bold; }
.kind-similar { color: #2f855a; font-weight: bold; }
"""


def _img_tag(data: bytes | None, alt: str, max_side: int, css_class: str = "") -> str:
    if not data:
        return f'<div class="noimg" title="{html.escape(alt)}">no preview</div>'
    thumb, mime = thumbnail(data, max_side)
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} src="{data_uri(thumb, mime)}" alt="{html.escape(alt)}">'


def _fused_column(fused: Sequence[FusedHit], method: str, thumbnails: Mapping[str, bytes | None]) -> str:
    """The "fused" column: each hit with its fused score and every model's distance and rank."""
    what = "weighted sum of squared L2 distances" if method == "distance" else "summed reciprocal ranks"
    rows: list[str] = []
    for rank, hit in enumerate(fused, start=1):
        why = "<br>".join(
            f"{html.escape(s.model)} {'#' + str(s.rank) if s.rank else '#-'} d={s.distance:.4f}" for s in hit.models
        )
        rows.append(
            '<div class="hit">' + _img_tag(thumbnails.get(hit.key), hit.key, 192) + "<div>"
            f'<div><span class="rank">#{rank}</span> '
            f'<span class="dist" title="{what}">s={hit.score:.4f}</span></div>'
            f'<div class="key">{html.escape(hit.key)}</div>'
            f'<div class="why" title="per model: rank among its candidates (#- = not among them), distance">'
            f"{why}</div></div></div>"
        )
    body = "".join(rows) if rows else '<p class="empty">no hits</p>'
    return f'<section class="model fused"><h2>fused ({html.escape(method)})</h2>{body}</section>'


def render_search_html(
    query_image_bytes: bytes | None,
    results: Sequence[ModelHits],
    thumbnails: Mapping[str, bytes | None],
    title: str = "lookalike search",
    *,
    query_label: str = "",
    fused: Sequence[FusedHit] = (),
    fusion_method: str | None = None,
) -> str:
    """Renders a search's per-model hit lists side by side as one self-contained page.

    Args:
        query_image_bytes: The encoded query image, or ``None`` (e.g. an id query).
        results: One :class:`~lookalike.types.ModelHits` per model; one column each, in order.
        thumbnails: Hit key -> encoded image bytes (``None`` or absent: a placeholder is shown).
        title: Page title and heading.
        query_label: Shown next to the query (e.g. its path).
        fused: The fused hit list, shown as a last "fused" column when ``fusion_method`` is set.
        fusion_method: The method that built it (``"distance"`` or ``"rrf"``); None = no column.

    Returns:
        The HTML document as a string.
    """
    cols: list[str] = []
    for mh in results:
        rows: list[str] = []
        for rank, hit in enumerate(mh.hits, start=1):
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(hit.attributes.items()))
            rows.append(
                '<div class="hit">' + _img_tag(thumbnails.get(hit.key), hit.key, 192) + "<div>"
                f'<div><span class="rank">#{rank}</span> '
                f'<span class="dist" title="squared L2 distance">d={hit.distance:.4f}</span></div>'
                f'<div class="key">{html.escape(hit.key)}</div>'
                f'<div class="attrs">id {hit.id}{" · " + html.escape(attrs) if attrs else ""}</div>'
                "</div></div>"
            )
        body = "".join(rows) if rows else '<p class="empty">no hits</p>'
        cols.append(f'<section class="model"><h2>{html.escape(mh.model)}</h2>{body}</section>')
    if fusion_method is not None:
        cols.append(_fused_column(fused, fusion_method, thumbnails))

    query = (
        _img_tag(query_image_bytes, "query", 512, "query-img")
        if query_image_bytes
        else '<div class="noimg">no query image</div>'
    )
    label = f"<div><strong>Query</strong><br>{html.escape(query_label)}</div>"
    models = ", ".join(html.escape(m.model) for m in results)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>"
        f'<div class="meta">models: {models} · distances are squared L2 between normalised '
        f"embeddings (0 = identical) · generated {generated}</div>"
        f'<div class="query">{query}{label}</div>'
        f'<div class="models" style="--ncols: {max(1, len(cols))}">{"".join(cols)}</div>'
        "</body></html>\n"
    )


def render_dupes_html(
    groups: Sequence[DuplicateGroup],
    summary: DuplicatesSummary,
    thumbnails: Mapping[str, bytes | None],
    title: str = "lookalike: near-duplicates",
) -> str:
    """Renders near-duplicate groups as one self-contained page: a row of thumbnails per group.

    Args:
        groups: Whole groups, representative first in each.
        summary: The walk's summary (model, threshold, counts).
        thumbnails: Key -> encoded image bytes (``None`` or absent: a placeholder is shown).
        title: Page title and heading.

    Returns:
        The HTML document as a string.
    """
    sections: list[str] = []
    for number, g in enumerate(groups, start=1):
        cards = []
        for i, m in enumerate(g.members):
            if i == 0:
                kind, cls = "representative", ""
            else:
                kind, cls = ("exact", "kind-exact") if m.exact else ("similar", "kind-similar")
            cards.append(
                f'<div class="member{" rep" if i == 0 else ""}">'
                + _img_tag(thumbnails.get(m.key), m.key, 384)
                + f'<div><span class="{cls}">{kind}</span> '
                f'<span class="dist" title="squared L2 distance to the representative">'
                f"{html.escape(format_distances(m, summary.models))}</span></div>"
                f'<div class="key">{html.escape(m.key)}</div><div class="attrs">id {m.id}</div></div>'
            )
        sections.append(
            f'<section class="group"><h2>Group {number}: {len(g.members)} items, {g.exact_count} exact</h2>'
            f'<div class="members">{"".join(cards)}</div></section>'
        )
    which = "model default" if summary.default_threshold else "given"
    if len(summary.models) > 1:
        rule = "near under " + " or ".join(f"{m} within {t:g}" for m, t in summary.thresholds.items())
    else:
        rule = f"model {summary.model} · threshold {summary.threshold:g}"
    body = "".join(sections) if sections else '<p class="empty">no near-duplicates</p>'
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>"
        f'<div class="meta">{html.escape(rule)} ({which}) · '
        f"{summary.items_scanned} items scanned · {summary.groups} groups · distances are squared L2 to each "
        f"group's representative (its earliest item) · generated {generated}</div>"
        f"{body}</body></html>\n"
    )
