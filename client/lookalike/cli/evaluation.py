"""``lookalike eval DIR``: retrieval quality of the server's models, and of their fusion, on labelled folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lookalike.cli.exits import EXIT_OK, CliError
from lookalike.cli.options import connect
from lookalike.eval_report import report_data, report_html, report_markdown
from lookalike.evaluate import DEFAULT_MAX_TOP_K, evaluate_folder

__all__ = ["add_eval_arguments", "cmd_eval"]


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The ``eval`` subcommand's flags."""
    p.add_argument("dir", metavar="DIR", help="one sub-folder per label: DIR/<label>/<images>")
    p.add_argument("--model", action="append", help="model to evaluate (repeatable; default: all)")
    p.add_argument(
        "--fusion",
        action="append",
        choices=("distance", "rrf"),
        help="fusion method to score too (repeatable; default: both; needs two or more models)",
    )
    p.add_argument("--no-fusion", action="store_true", help="score the single models only")
    p.add_argument("--out", metavar="OUTDIR", help="write eval.md, eval.html and eval.json there")
    p.add_argument("--window", type=int, default=8, help="requests in flight per stream (default %(default)s)")
    p.add_argument(
        "--max-top-k",
        type=int,
        default=DEFAULT_MAX_TOP_K,
        help="the server's limits.max_top_k: rankings are cut there (default %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the Markdown report")


def cmd_eval(args: argparse.Namespace) -> int:
    """Indexes DIR in a scratch namespace, scores leave-one-out retrieval, deletes what it added."""
    root = Path(args.dir)
    if not root.is_dir():
        raise CliError(f"no such directory: {root}")
    methods: list[str] = [] if args.no_fusion else (args.fusion or ["distance", "rrf"])
    if args.fusion and args.model and len(set(args.model)) < 2:
        raise CliError("--fusion combines two or more models: name another --model, or drop --fusion")

    def log(msg: str) -> None:
        print(f"eval: {msg}", file=sys.stderr, flush=True)

    with connect(args) as client:
        try:
            report = evaluate_folder(
                client,
                root,
                models=args.model,
                fusion_methods=methods,
                window=args.window,
                max_top_k=args.max_top_k,
                log=log,
            )
        except ValueError as exc:  # no labelled images, too few items
            raise CliError(str(exc)) from exc
    title = f"Retrieval evaluation: {root.name or root}"
    if args.json:
        print(json.dumps(report_data(report), indent=2))
    else:
        print(report_markdown(report, title))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.md").write_text(report_markdown(report, title), encoding="utf-8")
        (out / "eval.html").write_text(report_html(report, title), encoding="utf-8")
        (out / "eval.json").write_text(json.dumps(report_data(report), indent=2) + "\n", encoding="utf-8")
        log(f"wrote {out / 'eval.md'}, eval.html and eval.json")
    return EXIT_OK
