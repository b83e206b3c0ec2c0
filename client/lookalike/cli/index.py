"""``lookalike index``: a directory streamed into the server, retried, verified, summarised.

The insert stream is retried in rounds: files that failed with a retriable code (or were
left unanswered by a stream that died) go into the next round after a jittered backoff.
Once every file has an answer, a verification pass looks each acknowledged file up again,
so the summary only counts as indexed what the server can actually return.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

from lookalike.cli.exits import EXIT_OK, EXIT_PARTIAL, CliError
from lookalike.cli.options import connect, parse_attrs
from lookalike.client import InsertResult, LookalikeClient, LookalikeError, NewItem
from lookalike.console import progress_bar
from lookalike.images import IMAGE_SUFFIXES

__all__ = ["LookalikeVerifyError", "cmd_index"]

#: Codes that mean "the same request may succeed later" (the server's retriable errors).
_RETRY_CODES = frozenset({"ABORTED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})


class LookalikeVerifyError(Exception):
    """A file the server acknowledged was not found by the verification pass."""

    def __init__(self, key: str) -> None:
        super().__init__(f"acknowledged but not found by Get(key={key!r}) in the verification pass")


def _iter_images(root: Path, recursive: bool) -> Iterator[Path]:
    pattern = root.rglob("*") if recursive else root.glob("*")
    for p in sorted(pattern):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
            yield p


def cmd_index(args: argparse.Namespace) -> int:
    """Indexes the images in ``args.dir`` (see the module doc for the rounds).

    Args:
        args: Parsed ``index`` arguments plus the global connection flags.

    Returns:
        ``EXIT_OK``, or ``EXIT_PARTIAL`` when some files failed for good.

    Raises:
        CliError: ``DIR`` is not a directory, or a bad ``--attr``.
        LookalikeError: The stream failed with a non-retriable error, or retries ran out.
    """
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"not a directory: {root}")
    attrs = parse_attrs(args.attr)
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
    bar = progress_bar(len(paths), "indexing", args.quiet)

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
        with connect(args) as client:
            for attempt in range(args.retries + 1):
                if attempt:
                    _backoff(attempt, pending, errors, args.quiet)
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
                    for i in _unverified(client, items, done, models):
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


def _retriable(err: BaseException | None) -> bool:
    return isinstance(err, LookalikeError) and err.code.name in _RETRY_CODES


def _backoff(attempt: int, pending: Sequence[int], errors: dict[int, BaseException], quiet: bool) -> None:
    """Sleeps before a retry round (exponential, jittered, at most 8 s) and says why."""
    delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * (0.75 + 0.5 * random.random())
    if not quiet:
        reasons = Counter(_reason(errors[i]).split(":")[0] for i in pending if i in errors)
        why = ", ".join(f"{n} {r}" for r, n in reasons.most_common())
        print(f"retrying {len(pending)} file(s) in {delay:.1f} s ({why})", file=sys.stderr)
    time.sleep(delay)


def _unverified(
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
    """One line for a failure: the gRPC code and message, or the OS error."""
    if isinstance(err, LookalikeError):
        return f"{err.code.name}: {err.message}"
    if isinstance(err, OSError):
        return f"{type(err).__name__}: {err.strerror or err}"
    return str(err)
