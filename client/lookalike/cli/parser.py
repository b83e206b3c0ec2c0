"""The ``lookalike`` argument parser: every subcommand's flags, each bound to its implementation."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from lookalike.cli.commands import (
    cmd_delete,
    cmd_embed,
    cmd_get,
    cmd_health,
    cmd_models,
    cmd_search,
    cmd_serve,
    cmd_stats,
)
from lookalike.cli.dupes import add_dupes_arguments
from lookalike.cli.evaluation import add_eval_arguments, cmd_eval
from lookalike.cli.exits import CliError
from lookalike.cli.index import cmd_index
from lookalike.cli.options import add_connection_arguments

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """Builds the ``lookalike`` argument parser (exposed for tests and docs).

    Returns:
        The parser; each subcommand sets ``func``, the function that runs it.
    """
    parser = argparse.ArgumentParser(
        prog="lookalike", description="Client for the lookalike image-similarity gRPC server."
    )
    add_connection_arguments(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("models", help="list the models the server has loaded")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("embed", help="embed images and print their vectors")
    p.add_argument("images", nargs="+", metavar="IMG")
    p.add_argument("--model", action="append", help="model (repeatable; default: every model)")
    p.add_argument("--json", action="store_true", help="print JSON with the full vectors")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("index", help="index a directory of images (resumable)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--model", action="append", help="model to index under (repeatable; default: all)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into subdirectories")
    p.add_argument("--key-prefix", default="", help="key = PREFIX + path relative to DIR (default: path)")
    p.add_argument("--attr", action="append", metavar="K=V", help="attribute for every item (repeatable)")
    p.add_argument("--dir-attr", metavar="NAME", help="set attribute NAME to each file's parent directory")
    p.add_argument("--batch", type=int, default=32, help="items in flight on the stream (default %(default)s)")
    p.add_argument(
        "--retries",
        type=int,
        default=4,
        help="rounds of retry, with backoff, for files that failed ABORTED/UNAVAILABLE (default %(default)s)",
    )
    p.add_argument(
        "--no-verify", action="store_true", help="skip the final pass that looks up every file reported indexed"
    )
    p.add_argument(
        "--quiet", "-q", action="store_true", help="no progress (a bar on a terminal, else a line every 10%% or 10 s)"
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find the nearest stored images, per model side by side")
    p.add_argument("image", nargs="?", metavar="IMG")
    p.add_argument("--id", type=int, help="query with a stored item's vectors instead of an image")
    p.add_argument("--model", action="append", help="model to search (repeatable; default: all)")
    p.add_argument("--top-k", "-k", type=int, default=10, help="hits per model (default %(default)s)")
    p.add_argument("--key-prefix", help="only items whose key starts with this")
    p.add_argument("--attr", action="append", metavar="K=V", help="only items with this attribute")
    p.add_argument("--exclude-self", action="store_true", help="with --id, leave the item out")
    p.add_argument(
        "--fuse",
        nargs="?",
        const="default",
        choices=("default", "distance", "rrf"),
        help="also show one list fused across the models (two or more): 'distance' (summed distances), "
        "'rrf' (reciprocal rank fusion) or, with no value, the server's default",
    )
    p.add_argument("--weight", action="append", metavar="MODEL=W", help="with --fuse, a model's weight (default 1)")
    p.add_argument("--rrf-k", type=int, default=0, help="with --fuse rrf, RRF's k (default: the server's, 60)")
    p.add_argument(
        "--candidates", type=int, default=0, help="with --fuse, hits drawn per model (default: max(top-k, 50))"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained page with thumbnails")
    p.add_argument(
        "--thumbs-root",
        metavar="DIR",
        help="with --html, read thumbnails only from files under DIR, hit keys taken as paths "
        "relative to it (never outside it, symlinks included); without it no local file is read",
    )
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "eval",
        help="score retrieval (P@1, P@5, mAP) per model and fused on labelled folders, in a scratch namespace",
    )
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("dupes", help="find near-duplicate groups in the index (exact copies marked apart)")
    add_dupes_arguments(p)

    p = sub.add_parser("get", help="show a stored item, by id or by key")
    p.add_argument("ref", nargs="?", metavar="ID|KEY", help="an integer is an id, anything else a key")
    p.add_argument("--key", help="look the item up by this key (even one that looks like a number)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_get)

    p = sub.add_parser("delete", help="delete a stored item from every model")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("health", help="grpc.health.v1 check; exit 0 only when SERVING")
    p.add_argument("--service", default="", help="service name (default: the whole server)")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("stats", help="print the server's batching and request counters as JSON")
    p.add_argument("--reset", action="store_true", help="zero the counters after reading")
    p.set_defaults(func=cmd_stats)

    # add_help=False: `serve --help` must reach the server's own parser (see lookalike.cli.main).
    p = sub.add_parser("serve", help="run the server (needs the 'server' extra)", add_help=False)
    p.add_argument("server_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve)

    _add_bench(sub)
    return parser


def _add_bench(sub: Any) -> None:
    """Registers ``bench`` from ``lookalike.bench`` if it imports; a stub that explains if not."""
    try:
        bench = importlib.import_module("lookalike.bench")
    except ImportError as exc:
        reason = str(exc)
        p = sub.add_parser("bench", help="load generator (not available in this install)")
        p.add_argument("rest", nargs=argparse.REMAINDER)

        def unavailable(args: argparse.Namespace) -> int:
            raise CliError(f"'lookalike bench' is not available: lookalike.bench failed to import ({reason})")

        p.set_defaults(func=unavailable)
        return
    p = sub.add_parser("bench", help="load-test a server (batching, throughput, latency)")
    bench.add_arguments(p)
    p.set_defaults(func=bench.run)
