"""Retrieval quality of a server's models (and their fusion) on a folder of labelled images.

``lookalike eval DIR`` and ``benchmarks/quality.py`` both run this. DIR holds one sub-folder
per label (``DIR/<label>/...``, images at any depth below it). Every image is indexed in a
scratch namespace, then queries by its stored id with ``exclude_self`` and ranks the other
N-1 (``top_k = N - 1``); a hit is relevant when it has the query's label. Reported per model
and per fusion method: P@1, P@5 and mAP next to what a random ranking scores, per-label P@1
and the label pairs most often confused at rank 1.

The scratch namespace never touches the user's items:

* keys are ``eval-<uuid>/<label>/<path>`` and every search filters on that key prefix, so
  neither the rankings nor the scores see anything else in the index;
* each image is sent with a unique trailer appended after its end (decoders stop at the
  image's end, so the pixels and embeddings are the same): the server's content dedupe
  would otherwise answer an image the user already indexed with *their* item, which the
  evaluation could neither find under its prefix nor delete;
* :class:`ScratchIndex` deletes what it inserted on exit, error and Ctrl-C included, and
  then sweeps the prefix with a search in case an insert's answer was lost on the way.

The metrics live in :mod:`lookalike.retrieval_metrics` (pure functions, re-exported here).
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from lookalike.client import InvalidArgumentError, LookalikeClient, NewItem, NotFoundError, SearchQuery
from lookalike.retrieval_metrics import (
    RetrievalScores,
    average_precision,
    confused_pairs,
    precision_at_k,
    random_average_precision,
    random_precision,
    score_rankings,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "EvalReport",
    "RetrievalScores",
    "ScratchIndex",
    "average_precision",
    "confused_pairs",
    "evaluate_folder",
    "find_labelled_images",
    "leave_one_out",
    "precision_at_k",
    "random_average_precision",
    "random_precision",
    "score_rankings",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
#: The server's default limits.max_top_k: a ranking is at most this long.
DEFAULT_MAX_TOP_K = 1000

# ------------------------------------------------------------------- scratch --


def find_labelled_images(root: Path) -> dict[str, str]:
    """Every image under ``root/<label>/`` (any depth): relative path → label.

    Raises:
        ValueError: No image in any label folder.
    """
    found = {
        p.relative_to(root).as_posix(): p.relative_to(root).parts[0]
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and len(p.relative_to(root).parts) >= 2
    }
    if not found:
        raise ValueError(f"no images under {root}/<label>/ (one sub-folder per label)")
    return found


class ScratchIndex:
    """Images indexed under a unique key prefix for the length of a ``with`` block, then deleted.

    Args:
        client: A connected client.
        root: The labelled folder.
        files: Relative path → label (from :func:`find_labelled_images`).
        models: Models to index under (None = every loaded model).
        window: Inserts in flight on the stream.
        max_top_k: The server's top_k limit (the sweep searches that deep).
        log: Progress messages.

    Attributes:
        prefix: ``eval-<uuid>/``; every key starts with it.
        ids: Relative path → item id, for every image indexed.
        skipped: Relative path → the server's reason, for files it refused (not an image, too large).
        deleted: Items removed on exit.
        left: Items found under the prefix after the cleanup (0 unless the server failed).
    """

    def __init__(
        self,
        client: LookalikeClient,
        root: Path,
        files: Mapping[str, str],
        *,
        models: Sequence[str] | None = None,
        window: int = 8,
        max_top_k: int = DEFAULT_MAX_TOP_K,
        log: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.client = client
        self.root = root
        self.files = dict(files)
        self.models = list(models) if models else None
        self.window = window
        self.max_top_k = max_top_k
        self.log = log
        self.token = uuid.uuid4().hex
        self.prefix = f"eval-{self.token[:12]}/"
        self.ids: dict[str, int] = {}
        self.skipped: dict[str, str] = {}
        self.deleted = 0
        self.left = 0

    def _bytes(self, rel: str) -> bytes:
        # The trailer makes the content unique (see the module docstring); decoders ignore it.
        return (self.root / rel).read_bytes() + f"\n%lookalike-eval {self.token}\n".encode()

    def __enter__(self) -> ScratchIndex:
        try:
            self._insert()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._cleanup()

    def _insert(self) -> None:
        rels = list(self.files)
        items = [NewItem(key=self.prefix + rel, image=self._bytes(rel)) for rel in rels]
        failed: list[int] = []
        for res in self.client.insert_stream(items, self.models, window=self.window):
            if res.result is not None:
                self.ids[rels[res.index]] = res.result.id
            else:
                failed.append(res.index)
        # A transient failure on the stream (e.g. a Milvus Lite flush race) is retried once as
        # a unary Insert: idempotent by content, so never a duplicate. A file the server
        # refuses as no image (or one past a size limit) is left out and reported.
        for index in failed:
            try:
                self.ids[rels[index]] = self.client.insert(items[index], self.models).id
            except InvalidArgumentError as err:
                self.skipped[rels[index]] = err.message
                self.log(f"skipped {rels[index]}: {err.message}")
        self.log(f"indexed {len(self.ids)} images under {self.prefix}")

    def _cleanup(self) -> None:
        """Deletes every known item, then sweeps the prefix for any whose answer was lost."""
        for item_id in sorted(set(self.ids.values())):
            self._delete(item_id)
        try:
            for item_id in self._sweep():
                self._delete(item_id)
            self.left = len(self._sweep())
        except Exception as exc:  # the server went away: say what is left where
            self.left = -1
            self.log(f"could not check {self.prefix} for leftovers ({exc}); delete keys under it by hand")
        if self.left:
            self.log(f"warning: {self.left} item(s) still under {self.prefix}")

    def _delete(self, item_id: int) -> None:
        try:
            self.client.delete(item_id)
            self.deleted += 1
        except NotFoundError:
            pass

    def _sweep(self) -> set[int]:
        """Ids found under the prefix by a search with one of the folder's images, per model."""
        # An image the server took is a query it can embed; before any answer, any file not refused.
        usable = [rel for rel in self.files if rel in self.ids] or [r for r in self.files if r not in self.skipped]
        if not usable:
            return set()
        first = usable[0]
        res = self.client.search(self._bytes(first), models=self.models, top_k=self.max_top_k, key_prefix=self.prefix)
        return {h.id for mh in res for h in mh.hits}


# ------------------------------------------------------------------ running --


def fused_name(method: str) -> str:
    """The row name of a fusion method in reports: ``fused:distance``."""
    return f"fused:{method}"


def leave_one_out(
    client: LookalikeClient,
    scratch: ScratchIndex,
    *,
    fusion_methods: Sequence[str] = ("distance", "rrf"),
    window: int = 8,
    log: Callable[[str], None] = lambda _msg: None,
) -> dict[str, dict[int, list[int]]]:
    """Each indexed item queries by its id and ranks the others, per model and per fusion method.

    Args:
        client: A connected client.
        scratch: The indexed folder.
        fusion_methods: Fusion methods to rank by as well (one search pass each; the first
            pass also gives the per-model rankings). Empty: models only.
        window: Searches in flight.
        log: Progress messages.

    Returns:
        Ranking name (model, or ``fused:<method>``) → query id → the other ids, best first.
    """
    item_ids = sorted(set(scratch.ids.values()))
    top_k = max(1, min(len(item_ids) - 1, scratch.max_top_k))
    passes: list[str | None] = list(fusion_methods) or [None]
    out: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for method in passes:
        queries = [
            SearchQuery(
                id=i,
                top_k=top_k,
                exclude_self=True,
                key_prefix=scratch.prefix,
                models=scratch.models,
                fusion=method,
            )
            for i in item_ids
        ]
        retry: list[int] = []
        answers: dict[int, Any] = {}
        for res in client.search_stream(queries, window=window):
            if res.result is not None:
                answers[res.index] = res.result
            else:
                retry.append(res.index)
        for index in retry:  # a transient failure must not drop a query from the score
            q = queries[index]
            answers[index] = client.search(
                id=q.id, top_k=top_k, exclude_self=True, key_prefix=scratch.prefix, models=q.models, fusion=method
            )
        for index, result in answers.items():
            query_id = item_ids[index]
            if method == passes[0]:
                for mh in result:
                    out[mh.model][query_id] = [h.id for h in mh.hits]
            if method is not None:
                out[fused_name(method)][query_id] = [h.id for h in result.fused]
        log(f"leave-one-out ({method or 'models only'}): {len(item_ids)} queries")
    return dict(out)


@dataclass
class EvalReport:
    """What ``lookalike eval`` measured.

    Attributes:
        root: The folder evaluated.
        items: Images indexed (one item each).
        labels: Label → number of items.
        scores: Ranking name (model or ``fused:<method>``) → its scores.
        confused: Ranking name → most confused label pairs (see :func:`confused_pairs`).
        short_rankings: Ranking name → queries whose ranking was shorter than N-1.
        prefix: The scratch key prefix used.
        deleted: Items removed afterwards.
        left: Items still under the prefix afterwards (0 = clean; -1 = could not check).
        skipped: Files the server refused, with its reason.
    """

    root: str
    items: int
    labels: dict[str, int]
    scores: dict[str, RetrievalScores]
    confused: dict[str, list[tuple[str, str, int]]]
    short_rankings: dict[str, int]
    prefix: str
    deleted: int = 0
    left: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def score_all(
    rankings: Mapping[str, Mapping[int, Sequence[int]]], id_label: Mapping[int, str]
) -> tuple[dict[str, RetrievalScores], dict[str, list[tuple[str, str, int]]], dict[str, int]]:
    """Scores, confused pairs and short-ranking counts for every ranking name."""
    n = len(id_label)
    scores = {name: score_rankings(r, id_label, ks=(1, 5)) for name, r in rankings.items()}
    confused = {name: confused_pairs(r, id_label) for name, r in rankings.items()}
    short = {name: sum(1 for x in r.values() if len(x) < n - 1) for name, r in rankings.items()}
    return scores, confused, short


def id_labels(scratch: ScratchIndex) -> dict[int, str]:
    """Item id → label (byte-identical files share an id: the first file's label wins)."""
    out: dict[int, str] = {}
    for rel, item_id in scratch.ids.items():
        out.setdefault(item_id, scratch.files[rel])
    return out


def evaluate_folder(
    client: LookalikeClient,
    root: Path,
    *,
    models: Sequence[str] | None = None,
    fusion_methods: Sequence[str] = ("distance", "rrf"),
    window: int = 8,
    max_top_k: int = DEFAULT_MAX_TOP_K,
    log: Callable[[str], None] = lambda _msg: None,
) -> EvalReport:
    """Indexes ``root`` in a scratch namespace, scores leave-one-out retrieval, cleans up.

    Args:
        client: A connected client.
        root: ``root/<label>/...`` images.
        models: Models to evaluate (None = every loaded model).
        fusion_methods: Fusion methods to score too (needs two or more models).
        window: Requests in flight per stream.
        max_top_k: The server's top_k limit.
        log: Progress messages.

    Returns:
        The report; the scratch items are deleted whether or not it completes.
    """
    files = find_labelled_images(root)
    n_models = len(models) if models else len(client.list_models())
    methods = list(fusion_methods) if n_models >= 2 else []
    with ScratchIndex(client, root, files, models=models, window=window, max_top_k=max_top_k, log=log) as scratch:
        labels_by_id = id_labels(scratch)
        if len(labels_by_id) < 2:
            raise ValueError(f"need at least two distinct images under {root}, found {len(labels_by_id)}")
        rankings = leave_one_out(client, scratch, fusion_methods=methods, window=window, log=log)
    scores, confused, short = score_all(rankings, labels_by_id)
    return EvalReport(
        root=str(root),
        items=len(labels_by_id),
        labels=dict(sorted(Counter(labels_by_id.values()).items())),
        scores=scores,
        confused=confused,
        short_rankings=short,
        prefix=scratch.prefix,
        deleted=scratch.deleted,
        left=scratch.left,
        skipped=dict(scratch.skipped),
    )
