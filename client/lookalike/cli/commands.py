"""The one-call subcommands: ``models``, ``embed``, ``search``, ``get``, ``delete``, ``health``,
``stats`` and ``serve``. Each takes the parsed arguments and returns an exit code; ``index``,
with its retry rounds, lives in :mod:`lookalike.cli.index`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lookalike.cli.exits import EXIT_ERROR, EXIT_OK, CliError
from lookalike.cli.options import connect, parse_attrs
from lookalike.client import vector_norm
from lookalike.console import format_side_by_side, print_json, search_json
from lookalike.thumbnails import load_thumbnails
from lookalike.types import Fusion, SearchResult

__all__ = [
    "cmd_delete",
    "cmd_embed",
    "cmd_get",
    "cmd_health",
    "cmd_models",
    "cmd_search",
    "cmd_serve",
    "cmd_stats",
]


def cmd_models(args: argparse.Namespace) -> int:
    """Lists the server's models, one line each (or JSON)."""
    with connect(args) as client:
        models = client.list_models()
    if args.json:
        print_json([asdict(m) for m in models], sys.stdout)
        return EXIT_OK
    if not models:
        print("no models loaded")
    for m in models:
        prov = ",".join(m.providers) or "-"
        buckets = ",".join(str(b) for b in m.batch_buckets) or "-"
        collection = m.collection or "-"
        print(
            f"{m.name:<20} v{m.version:<8} dim={m.dim:<5} collection={collection}  providers={prov}  buckets={buckets}"
        )
        if m.description:
            print(f"{'':<20} {m.description}")
        costs = " ".join(f"{c.batch_size}:{c.ms_per_image:.2f}" for c in m.bucket_costs) or "not measured"
        print(f"{'':<20} batching: max batch {m.max_batch_size}, max delay {m.max_delay_ms:.2f} ms; ms/image {costs}")
        if m.batching_reason:
            print(f"{'':<20}   why: {m.batching_reason}")
        if m.threads is not None:
            t = m.threads
            print(
                f"{'':<20} threads: {t.cores} cores, {t.preprocess_threads} decoding, {t.batch_workers} worker(s) x "
                f"{t.intra_op_threads} intra-op, {t.inter_op_threads} inter-op"
                + (f"; alone: {t.wide_intra_op_threads} intra-op" if t.wide_intra_op_threads else "")
            )
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    """Embeds each image under each model; prints a vector summary (or JSON with the vectors)."""
    for path in args.images:
        if not Path(path).is_file():
            raise CliError(f"no such file: {path}")
    out: list[dict[str, Any]] = []
    with connect(args) as client:
        models = args.model or [m.name for m in client.list_models()]
        for model in models:
            vectors = client.embed(args.images, model=model)
            for path, vec in zip(args.images, vectors, strict=True):
                values = [float(v) for v in vec]
                row = {"image": path, "model": model, "dim": len(values), "norm": vector_norm(values)}
                if args.json:
                    row["embedding"] = values
                else:
                    head = ", ".join(f"{v:+.4f}" for v in values[:6])
                    print(f"{path}  {model:<16} dim={len(values)}  norm={row['norm']:.4f}  [{head}, …]")
                out.append(row)
    if args.json:
        print_json(out, sys.stdout)
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    """Searches by image or stored id; prints the per-model hit table (or JSON), optionally a page."""
    if (args.image is None) == (args.id is None):
        raise CliError("give a query image or --id ID (one of them)")
    query_bytes: bytes | None = None
    if args.image is not None:
        if not Path(args.image).is_file():
            raise CliError(f"no such file: {args.image}")
        query_bytes = Path(args.image).read_bytes()
    with connect(args) as client:
        result = client.search(
            query_bytes,
            id=args.id,
            models=args.model or None,
            top_k=args.top_k,
            key_prefix=args.key_prefix,
            attributes=parse_attrs(args.attr),
            exclude_self=args.exclude_self,
            fusion=_fusion_from_args(args),
        )
    if args.json:
        print_json(search_json(result), sys.stdout)
    else:
        print(format_side_by_side(result.results, fused=result.fused, fusion_method=result.fusion_method))
    if args.html:
        _write_search_page(args, query_bytes, result)
    return EXIT_OK


def _fusion_from_args(args: argparse.Namespace) -> Fusion | None:
    """``--fuse``, ``--weight``, ``--rrf-k`` and ``--candidates`` as a :class:`Fusion` (None without --fuse)."""
    if args.fuse is None:
        if args.weight or args.rrf_k or args.candidates:
            raise CliError("--weight, --rrf-k and --candidates shape a fused list: add --fuse [distance|rrf]")
        return None
    weights: dict[str, float] = {}
    for pair in args.weight or []:
        name, sep, value = pair.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            raise CliError(f"--weight expects MODEL=NUMBER, got {pair!r}") from None
        if not sep or not name:
            raise CliError(f"--weight expects MODEL=NUMBER, got {pair!r}")
    method = None if args.fuse == "default" else args.fuse
    return Fusion(method=method, weights=weights, rrf_k=args.rrf_k, candidates=args.candidates)


def _write_search_page(args: argparse.Namespace, query_bytes: bytes | None, result: SearchResult) -> None:
    """Writes ``search --html``: the query and each hit's thumbnail, read only under --thumbs-root."""
    # Imported here: only --html needs the page renderer.
    from lookalike.html import render_search_html

    results = result.results
    keys = [hit.key for mh in results for hit in mh.hits] + [hit.key for hit in result.fused]
    try:
        thumbs = load_thumbnails(keys, Path(args.thumbs_root) if args.thumbs_root else None)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    label = args.image if args.image is not None else f"item {args.id}"
    page = render_search_html(
        query_bytes,
        results,
        thumbs,
        title=f"lookalike: {label}",
        query_label=label,
        fused=result.fused,
        fusion_method=result.fusion_method,
    )
    Path(args.html).write_text(page, encoding="utf-8")
    missing = sum(1 for v in thumbs.values() if v is None)
    if not args.thumbs_root:
        note = " (no --thumbs-root: hits shown without preview)" if missing else ""
    else:
        note = f" ({missing} hit keys are not files under {args.thumbs_root}: no preview)" if missing else ""
    print(f"wrote {args.html}{note}", file=sys.stderr)


def cmd_get(args: argparse.Namespace) -> int:
    """Shows one stored item, looked up by id or by key."""
    # `get 42` is an id, `get photos/cat.jpg` a key; `--key` forces a key that looks like a number.
    if (args.ref is None) == (args.key is None):
        raise CliError("give an ID or a KEY (or --key KEY), one of them")
    with connect(args) as client:
        if args.key is not None:
            item = client.get(key=args.key)
        elif args.ref.strip().lstrip("-").isdigit():
            item = client.get(int(args.ref))
        else:
            item = client.get(key=args.ref)
    created = item.created.isoformat(timespec="seconds") if item.created_at else "-"
    if args.json:
        print_json({**asdict(item), "created": created}, sys.stdout)
    else:
        print(f"id:       {item.id}")
        print(f"key:      {item.key}")
        print(f"sha256:   {item.content_sha256}")
        print(f"models:   {', '.join(item.models)}")
        print(f"created:  {created}")
        for k, v in sorted(item.attributes.items()):
            print(f"attr:     {k}={v}")
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    """Deletes one item from every model."""
    with connect(args) as client:
        res = client.delete(args.id)
    print(f"deleted {res.id} from {', '.join(res.models) or 'no model'}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    """Prints the health status; exits 0 only when SERVING."""
    with connect(args) as client:
        status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_stats(args: argparse.Namespace) -> int:
    """Prints the server's counters as JSON (``--reset`` zeroes them after reading)."""
    with connect(args) as client:
        stats = client.stats(reset=args.reset)
    print_json(asdict(stats), sys.stdout)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Runs the server in this process with the arguments that followed ``serve``."""
    # Looked up by name: the client install need not have the server extra.
    try:
        server_main = importlib.import_module("lookalike_server.__main__").main
    except ImportError as exc:
        raise CliError(
            f"the server is not installed ({exc}); install it with: pip install 'lookalike[server]'"
        ) from exc
    return int(server_main(args.server_args) or 0)
