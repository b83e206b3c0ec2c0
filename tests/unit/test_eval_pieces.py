"""``lookalike eval``'s pure parts: confused label pairs, finding labelled images, the report tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.eval_report import report_html, report_markdown
from lookalike.evaluate import EvalReport, find_labelled_images, score_all
from lookalike.retrieval_metrics import confused_pairs

LABELS = {1: "cat", 2: "cat", 3: "dog", 4: "dog", 5: "fox"}


def test_confused_pairs_count_rank_one_errors_either_way() -> None:
    rankings = {
        1: [3, 2],  # cat first finds a dog
        2: [1, 3],  # right
        3: [1, 4],  # dog first finds a cat: the same pair, other way round
        4: [5, 3],  # dog finds the fox
        5: [4],  # the only fox cannot be right: not counted
    }
    assert confused_pairs(rankings, LABELS) == [("cat", "dog", 2), ("dog", "fox", 1)]
    assert confused_pairs(rankings, LABELS, top=1) == [("cat", "dog", 2)]
    assert confused_pairs({1: [2], 2: []}, LABELS) == []  # an empty ranking confuses nothing


def test_find_labelled_images(tmp_path: Path) -> None:
    for rel in ("cat/a.jpg", "cat/sub/b.PNG", "dog/c.webp", "dog/notes.txt", "loose.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert find_labelled_images(tmp_path) == {"cat/a.jpg": "cat", "cat/sub/b.PNG": "cat", "dog/c.webp": "dog"}
    with pytest.raises(ValueError, match="one sub-folder per label"):
        find_labelled_images(tmp_path / "cat" / "sub")


def test_report_tables_by_hand() -> None:
    rankings = {
        "m": {1: [2, 3, 4, 5], 2: [3, 1, 4, 5], 3: [4, 1, 2, 5], 4: [3, 1, 2, 5], 5: [1, 2, 3, 4]},
        "fused:distance": {1: [2, 3, 4, 5], 2: [1, 3, 4, 5], 3: [4, 1, 2, 5], 4: [3, 1, 2, 5], 5: [1, 2, 3, 4]},
    }
    scores, confused, short = score_all(rankings, LABELS)
    # m: queries 1..4 (fox has no other fox); P@1 = 3/4; fused: 4/4.
    assert scores["m"].precision[1] == pytest.approx(0.75) and scores["fused:distance"].precision[1] == 1.0
    assert confused["m"] == [("cat", "dog", 1)] and confused["fused:distance"] == []
    report = EvalReport("d", 5, {"cat": 2, "dog": 2, "fox": 1}, scores, confused, short, "eval-x/", 5, 0)
    md = report_markdown(report)
    # m's APs: 1, 1/2, 1, 1. P@5 is always over 5 ranks: 1/5. Chance for each query, one
    # relevant among 4 candidates: P 1/4, AP H_4 / 4 = 25/48.
    assert "| m | 0.750 | 0.200 | 0.875 | 0.250 | 0.521 | 4 |" in md
    assert "| fused:distance | 1.000 | 0.200 | 1.000 | 0.250 | 0.521 | 4 |" in md
    assert "| cat ↔ dog | 1 | 0 |" in md
    assert "| cat | 2 | 0.500 | 1.000 |" in md
    assert "| fox | 1 | - | - |" in md
    assert "5 item(s) deleted afterwards, 0 left" in md
    page = report_html(report, title="<t>")
    assert "&lt;t&gt;" in page and page.count("<table>") == 3
