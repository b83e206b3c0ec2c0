"""The ``lookalike`` command line: talk to a lookalike server from a shell.

Every subcommand takes the global ``--target`` (env ``LOOKALIKE_TARGET``, default
``127.0.0.1:50051``), ``--timeout`` (env ``LOOKALIKE_TIMEOUT``, seconds per call) and the
connection security flags ``--tls``, ``--ca``, ``--cert``/``--key``, ``--token`` and
``--insecure-token`` (env ``LOOKALIKE_TLS``, ``LOOKALIKE_CA``, ``LOOKALIKE_CERT``,
``LOOKALIKE_KEY``, ``LOOKALIKE_TOKEN``; see :mod:`lookalike.security`). Prefer the
environment variable (or a file the shell reads) for the token: a flag shows in ``ps``.

Exit codes: 0 success; 1 an RPC or input error (one line on stderr: status code and message,
no traceback); 2 bad usage (argparse); 3 ``index`` finished with some files failed;
130 interrupted; 141 the reader of stdout went away (``lookalike stats | head``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from lookalike.client import (
    DEFAULT_TARGET,
    InsertResult,
    LookalikeClient,
    LookalikeError,
    NewItem,
    vector_norm,
)
from lookalike.console import _is_tty as _is_tty
from lookalike.console import format_side_by_side, print_json, search_json, silence_stdout
from lookalike.console import progress_bar as _progress
from lookalike.security import add_security_arguments, security_from_args
from lookalike.thumbnails import load_thumbnails

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141


class CliError(Exception):
    """A problem to report as one line and exit 1 (bad file, bad --attr...)."""


# ------------------------------------------------------------------- helpers --


def _parse_attrs(pairs: Sequence[str] | None) -> dict[str, str]:
    attrs: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CliError(f"--attr expects NAME=VALUE, got {pair!r}")
        attrs[name] = value
    return attrs


def _client(args: argparse.Namespace) -> LookalikeClient:
    security = security_from_args(args)
    try:
        return LookalikeClient(args.target, timeout=args.timeout, security=security)
    except ValueError as exc:  # bad or unsafe security settings: one line, not a traceback
        raise CliError(str(exc)) from exc


def _iter_images(root: Path, recursive: bool) -> Iterator[Path]:
    pattern = root.rglob("*") if recursive else root.glob("*")
    for p in sorted(pattern):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            yield p


# ------------------------------------------------------------------ commands --


def cmd_models(args: argparse.Namespace) -> int:
    with _client(args) as client:
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
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    for path in args.images:
        if not Path(path).is_file():
            raise CliError(f"no such file: {path}")
    out: list[dict[str, Any]] = []
    with _client(args) as client:
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


def cmd_index(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"not a directory: {root}")
    attrs = _parse_attrs(args.attr)
    paths = list(_iter_images(root, args.recursive))
    if not paths:
        print(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {root}", file=sys.stderr)
        return EXIT_OK

    def item_for(path: Path) -> NewItem:
        # The key is the path as the user named it (so `search --html` can read it back);
        # with --key-prefix it is the prefix plus the path relative to DIR.
        key = f"{args.key_prefix}{path.relative_to(root).as_posix()}" if args.key_prefix else str(path)
        item_attrs = dict(attrs)
        if args.dir_attr:
            item_attrs[args.dir_attr] = path.parent.name
        return NewItem(key=key, image=path, attributes=item_attrs)

    items = [item_for(p) for p in paths]
    models = args.model or None
    done: dict[int, InsertResult] = {}  # file index -> the server's answer
    errors: dict[int, BaseException] = {}  # file index -> its latest error
    pending = list(range(len(paths)))
    bar = _progress(len(paths), "indexing", args.quiet)

    tally: Counter[str] = Counter()

    def settle(i: int) -> None:
        # A file counts once, when its outcome is final (stored, or failed for good).
        if i in done:
            tally["new" if done[i].created else "known"] += 1
        else:
            tally["failed"] += 1
        bar.set_postfix(new=tally["new"], known=tally["known"], failed=tally["failed"])
        bar.update(1)

    try:
        with _client(args) as client:
            for attempt in range(args.retries + 1):
                if attempt:
                    _index_backoff(attempt, pending, errors, args.quiet)
                todo, pending = pending, []
                answered: set[int] = set()
                try:
                    stream = client.insert_stream((items[i] for i in todo), models=models, window=args.batch)
                    for res in stream:
                        i = todo[res.index]
                        answered.add(i)
                        if res.result is not None:
                            done[i] = res.result
                            errors.pop(i, None)
                        elif _retriable(res.error) and attempt < args.retries:
                            errors[i] = cast(BaseException, res.error)
                            pending.append(i)
                            continue
                        else:
                            errors[i] = cast(BaseException, res.error)
                        settle(i)
                except LookalikeError as exc:
                    if not _retriable(exc) or attempt == args.retries:
                        raise
                    # The stream died (server restarting, store outage): the
                    # unanswered files go to the next round.
                    for i in todo:
                        if i not in answered:
                            errors[i] = exc
                            pending.append(i)
                if not pending and not args.no_verify:
                    # Verification: every file about to be reported as indexed
                    # must be found; a miss is re-inserted (idempotent) next round.
                    for i in _index_unverified(client, items, done, models):
                        errors[i] = LookalikeVerifyError(items[i].key)
                        del done[i]
                        if attempt < args.retries:
                            pending.append(i)
                        else:
                            settle(i)
                if not pending:
                    break
    except LookalikeError:
        bar.close()
        # The stream died for good: say how far it got; a rerun resumes from there
        # because content already indexed is recognised by the server and skipped.
        created = sum(r.created for r in done.values())
        print(
            f"stopped after {created} indexed, {len(done) - created} already indexed, "
            f"{len(errors)} failed; run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    failed = {i: e for i, e in errors.items() if i not in done}
    created = sum(r.created for r in done.values())
    print(
        f"{created} indexed, {len(done) - created} already indexed, "
        f"{len(failed)} failed (of {len(paths)} files in {root})"
    )
    if failed:
        # Each failure printed once: file and reason, then a tally of the rest.
        listed = sorted(failed)[:20]
        for i in listed:
            print(f"  failed: {items[i].key}: {_reason(failed[i])}", file=sys.stderr)
        rest = Counter(_reason(failed[i]) for i in sorted(failed)[20:])
        for reason, n in rest.most_common():
            print(f"  … and {n} more × {reason}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


class LookalikeVerifyError(Exception):
    """A file the server acknowledged was not found by the verification pass."""

    def __init__(self, key: str) -> None:
        super().__init__(f"acknowledged but not found by Get(key={key!r}) in the verification pass")


#: Codes that mean "the same request may succeed later" (the server's retriable errors).
_RETRY_CODES = frozenset({"ABORTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})


def _retriable(err: BaseException | None) -> bool:
    return isinstance(err, LookalikeError) and err.code.name in _RETRY_CODES


def _index_backoff(attempt: int, pending: Sequence[int], errors: dict[int, BaseException], quiet: bool) -> None:
    """Sleeps before a retry round (exponential, jittered, at most 8 s) and says why."""
    delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
    if not quiet:
        reasons = Counter(_reason(errors[i]).split(":")[0] for i in pending if i in errors)
        why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        print(f"retrying {len(pending)} file(s) in {delay:.1f} s ({why})", file=sys.stderr)
    time.sleep(delay)


def _index_unverified(
    client: LookalikeClient, items: Sequence[NewItem], done: dict[int, InsertResult], models: Sequence[str] | None
) -> list[int]:
    """Files whose acknowledged item is not stored as acknowledged.

    A created item is looked up by its key; an "already indexed" one by its
    id (with content dedupe, the stored key may be another file's with the
    same bytes) and its content hash compared.
    """
    missing = []
    for i, res in sorted(done.items()):
        try:
            item = client.get(key=items[i].key) if res.created else client.get(res.id)
        except LookalikeError:
            missing.append(i)
            continue
        ok = item.id == res.id and item.content_sha256 == res.content_sha256
        if ok and models:
            ok = set(models) <= set(item.models)
        if not ok:
            missing.append(i)
    return missing


def _reason(err: BaseException | None) -> str:
    if isinstance(err, LookalikeError):
        return f"{err.code.name}: {err.message}"
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err.strerror or err}"
    return str(err)


def cmd_search(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.id is None):
        raise CliError("give a query image or --id ID (one of them)")
    query_bytes: bytes | None = None
    if args.image is not None:
        if not Path(args.image).is_file():
            raise CliError(f"no such file: {args.image}")
        query_bytes = Path(args.image).read_bytes()
    with _client(args) as client:
        result = client.search(
            query_bytes,
            id=args.id,
            models=args.model or None,
            top_k=args.top_k,
            key_prefix=args.key_prefix,
            attributes=_parse_attrs(args.attr),
            exclude_self=args.exclude_self,
        )
    if args.json:
        print_json(search_json(result), sys.stdout)
    else:
        print(format_side_by_side(result.results))
    if args.html:
        from lookalike.html import render_search_html

        keys = [hit.key for mh in result.results for hit in mh.hits]
        try:
            thumbs = load_thumbnails(keys, Path(args.thumbs_root) if args.thumbs_root else None)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        label = args.image if args.image is not None else f"item {args.id}"
        page = render_search_html(query_bytes, result.results, thumbs, title=f"lookalike: {label}", query_label=label)
        Path(args.html).write_text(page, encoding="utf-8")
        missing = sum(1 for v in thumbs.values() if v is None)
        if not args.thumbs_root:
            note = " (no --thumbs-root: hits shown without preview)" if missing else ""
        else:
            note = f" ({missing} hit keys are not files under {args.thumbs_root}: no preview)" if missing else ""
        print(f"wrote {args.html}{note}", file=sys.stderr)
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    # `get 42` is an id, `get photos/cat.jpg` a key; `--key` forces a key that looks like a number.
    if (args.ref is None) == (args.key is None):
        raise CliError("give an ID or a KEY (or --key KEY), one of them")
    with _client(args) as client:
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
    with _client(args) as client:
        res = client.delete(args.id)
    print(f"deleted {res.id} from {', '.join(res.models) or 'no model'}")
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_ERROR


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        stats = client.stats(reset=args.reset)
    print_json(asdict(stats), sys.stdout)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        server_main = importlib.import_module("lookalike_server.__main__").main
    except ImportError as exc:
        raise CliError(
            f"the server is not installed ({exc}); install it with: pip install 'lookalike[server]'"
        ) from exc
    return int(server_main(args.server_args) or 0)


# -------------------------------------------------------------------- parser --


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


def build_parser() -> argparse.ArgumentParser:
    """Builds the ``lookalike`` argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="lookalike", description="Client for the lookalike image-similarity gRPC server."
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("LOOKALIKE_TARGET", DEFAULT_TARGET),
        help="server host:port (env LOOKALIKE_TARGET; default %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=float(os.environ.get("LOOKALIKE_TIMEOUT", "60")),
        help="deadline per call in seconds (env LOOKALIKE_TIMEOUT; default %(default)s)",
    )
    add_security_arguments(parser)
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
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--html", metavar="OUT.html", help="also write a self-contained page with thumbnails")
    p.add_argument(
        "--thumbs-root",
        metavar="DIR",
        help="with --html, read thumbnails only from files under DIR, hit keys taken as paths "
        "relative to it (never outside it, symlinks included); without it no local file is read",
    )
    p.set_defaults(func=cmd_search)

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

    p = sub.add_parser("serve", help="run the server (needs the 'server' extra)", add_help=False)
    p.add_argument("server_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_serve)

    _add_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code (see the module doc).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `serve` hands everything after it, untouched and in order, to the server's own parser
    # (including --help), which argparse.REMAINDER alone does not do for "-" arguments.
    if "serve" in argv:
        cut = argv.index("serve") + 1
        args = parser.parse_args(argv[:cut])
        if args.command == "serve":
            args.server_args = argv[cut:]
        else:
            args = parser.parse_args(argv)
    else:
        args = parser.parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at exit
        return code
    except LookalikeError as err:
        print(f"error: {err.code.name}: {err.message} (target {args.target})", file=sys.stderr)
        return EXIT_ERROR
    except (CliError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        # The reader went away (`lookalike stats | head`): stop quietly, like any Unix tool.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        silence_stdout()
        return EXIT_PIPE
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
