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
import json
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from lookalike.client import (
    DEFAULT_TARGET,
    ChannelSecurity,
    InsertStreamResult,
    LookalikeClient,
    LookalikeError,
    ModelHits,
    NewItem,
    SearchResult,
    vector_norm,
)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 3, 130, 141
MAX_THUMBNAIL_FILE_BYTES = 64 * 1024 * 1024


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
    security = ChannelSecurity.from_env(
        tls=args.tls or None,
        ca=args.ca,
        cert=args.cert,
        key=args.key_file,
        token=args.token,
        insecure_token=args.insecure_token or None,
    )
    try:
        return LookalikeClient(args.target, timeout=args.timeout, security=security)
    except ValueError as exc:  # bad or unsafe security settings: one line, not a traceback
        raise CliError(str(exc)) from exc


def _print_json(obj: Any, out: TextIO) -> None:
    json.dump(obj, out, indent=2, sort_keys=False, default=str)
    out.write("\n")


def _truncate(text: str, width: int) -> str:
    # Keep the end of long keys: for paths the file name is the informative part.
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def format_side_by_side(results: Sequence[ModelHits], key_width: int = 36) -> str:
    """Formats per-model hit lists as one text table, one column group per model.

    Args:
        results: One :class:`ModelHits` per model.
        key_width: Widest key shown per column; longer keys keep their tail.

    Returns:
        The table, rank down the side, ``distance key`` per model across.
    """
    if not results:
        return "(no models searched)"
    depth = max((len(mh.hits) for mh in results), default=0)
    cell_width = 8 + 1 + key_width
    header = "rank  " + "  ".join(f"{mh.model:<{cell_width}.{cell_width}}" for mh in results)
    rule = "----  " + "  ".join("-" * cell_width for _ in results)
    lines = [header.rstrip(), rule]
    for i in range(depth):
        cells = []
        for mh in results:
            if i < len(mh.hits):
                hit = mh.hits[i]
                cells.append(f"{hit.distance:8.4f} {_truncate(hit.key, key_width):<{key_width}}")
            else:
                cells.append(" " * cell_width)
        lines.append((f"{i + 1:>4}  " + "  ".join(cells)).rstrip())
    if depth == 0:
        lines.append("(no hits)")
    return "\n".join(lines)


def _search_json(result: SearchResult) -> dict[str, Any]:
    return {
        "results": [asdict(mh) for mh in result.results],
        "timing": asdict(result.timing) if result.timing else None,
    }


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


def _progress(total: int, desc: str, quiet: bool) -> Any:
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
        _print_json([asdict(m) for m in models], sys.stdout)
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
        _print_json(out, sys.stdout)
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

    counts: Counter[str] = Counter()
    failures: list[InsertStreamResult] = []
    bar = _progress(len(paths), "indexing", args.quiet)
    try:
        with _client(args) as client:
            stream = client.insert_stream((item_for(p) for p in paths), models=args.model or None, window=args.batch)
            for res in stream:
                if res.result is None:
                    counts["failed"] += 1
                    failures.append(res)
                elif res.result.created:
                    counts["indexed"] += 1
                else:
                    counts["already"] += 1
                # Postfix first, so a line printed by this update shows the counts including it.
                bar.set_postfix(new=counts["indexed"], known=counts["already"], failed=counts["failed"])
                bar.update(1)
    except LookalikeError:
        bar.close()
        # The stream died (server gone...): say how far it got; a rerun resumes from there
        # because content already indexed is recognised by the server and skipped.
        print(
            f"stopped after {counts['indexed']} indexed, {counts['already']} already indexed, "
            f"{counts['failed']} failed; run the same command again to resume",
            file=sys.stderr,
        )
        raise
    finally:
        bar.close()
    print(
        f"{counts['indexed']} indexed, {counts['already']} already indexed, "
        f"{counts['failed']} failed (of {len(paths)} files in {root})"
    )
    if failures:
        reasons = Counter(_reason(f.error) for f in failures)
        for reason, n in reasons.most_common():
            print(f"  {n} × {reason}", file=sys.stderr)
        for f in failures[:20]:
            print(f"  failed: {f.key}: {_reason(f.error)}", file=sys.stderr)
        if len(failures) > 20:
            print(f"  … and {len(failures) - 20} more", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


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
        _print_json(_search_json(result), sys.stdout)
    else:
        print(format_side_by_side(result.results))
    if args.html:
        from lookalike.html import render_search_html

        keys = [hit.key for mh in result.results for hit in mh.hits]
        thumbs = load_thumbnails(keys, Path(args.thumbs_root) if args.thumbs_root else None)
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
        _print_json({**asdict(item), "created": created}, sys.stdout)
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
    _print_json(asdict(stats), sys.stdout)
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


def _add_security_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection security (defaults from the environment)")
    g.add_argument("--tls", action="store_true", help="use TLS (env LOOKALIKE_TLS=1; implied by --ca/--cert)")
    g.add_argument("--ca", metavar="PEM", help="CA certificate(s) to check the server with (env LOOKALIKE_CA)")
    g.add_argument("--cert", metavar="PEM", help="client certificate for mTLS (env LOOKALIKE_CERT)")
    g.add_argument("--key", dest="key_file", metavar="PEM", help="client certificate's key (env LOOKALIKE_KEY)")
    g.add_argument(
        "--token", help="bearer token (env LOOKALIKE_TOKEN, preferred: a flag is visible to other local users)"
    )
    g.add_argument(
        "--insecure-token",
        action="store_true",
        help="allow sending the token without TLS to a server that is not on this machine",
    )


def load_thumbnails(keys: Sequence[str], root: Path | None) -> dict[str, bytes | None]:
    """Reads the thumbnail of each hit key, only from regular files under ``root``.

    A key is a string any client of the server may have stored, so it is never trusted as
    a path: it is joined to ``root``, resolved (``..`` and every symlink followed), and read
    only when the result still lies under the resolved root and is a regular file of sane
    size. ``root=None`` reads nothing.

    Args:
        keys: Hit keys (duplicates are read once).
        root: The directory thumbnails may come from, or ``None``.

    Returns:
        Key -> file bytes, or ``None`` where there is no safe local file.
    """
    thumbs: dict[str, bytes | None] = dict.fromkeys(keys)
    if root is None:
        return thumbs
    try:
        base = root.resolve(strict=True)
    except OSError as exc:
        raise CliError(f"--thumbs-root {root}: {exc.strerror or exc}") from exc
    if not base.is_dir():
        raise CliError(f"--thumbs-root {root}: not a directory")
    for key in thumbs:
        try:
            path = (base / key).resolve(strict=True)  # an absolute key replaces base: checked below
            if not path.is_relative_to(base) or not path.is_file():
                continue
            if path.stat().st_size > MAX_THUMBNAIL_FILE_BYTES:
                continue
            thumbs[key] = path.read_bytes()
        except (OSError, ValueError, RuntimeError):  # missing, unreadable, NUL in key, symlink loop
            continue
    return thumbs


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
    _add_security_arguments(parser)
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
        _silence_stdout()
        return EXIT_PIPE
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
