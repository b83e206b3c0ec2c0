"""``lookalike eval`` against ``live_server``: scores checked by hand, and nothing left behind.

The tiny labelled folder holds three labels of two images each: a photo and a crop of it.
Each image's nearest other image is its own twin under every model, which makes every
figure computable by hand: P@1 = 1, P@5 = 1/5 (one relevant item among five candidates),
AP = 1, chance P@1 = 1/5 and chance AP = H_5 / 5 = 137/300.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from PIL import Image

from lookalike import evaluate
from lookalike.cli import main
from lookalike.client import LookalikeClient

MODELS = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture
def labelled(tmp_path: Path, photos: list[Path]) -> Path:
    root = tmp_path / "labelled"
    for label, photo in zip(("crane", "giraffe", "saturn"), (photos[1], photos[3], photos[7]), strict=True):
        (root / label).mkdir(parents=True)
        img = Image.open(photo).convert("RGB")
        w, h = img.size
        img.save(root / label / "full.jpg", quality=92)
        img.crop((w // 12, h // 12, w - w // 12, h - h // 12)).save(root / label / "crop.png")
    (root / "notes.txt").write_text("not an image, not in a label folder")
    return root


@pytest.fixture
def with_a_broken_file(labelled: Path) -> Path:
    (labelled / "crane" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return labelled


def _counts(live_server) -> dict[str, int]:
    service = live_server.server.service
    return {m: service.milvus.count(c) for m, c in service.collections.items()}


def _left_under(live_server, prefix: str, image: Path) -> int:
    with LookalikeClient(live_server.target) as client:
        res = client.search(image.read_bytes(), top_k=100, key_prefix=prefix)
    return sum(len(mh.hits) for mh in res)


def test_eval_scores_match_the_hand_computation_and_leave_nothing(live_server, with_a_broken_file, tmp_path, capsys):
    labelled = with_a_broken_file
    # An image the user already indexed, byte for byte: eval must neither use nor delete it.
    users = f"user-{uuid.uuid4().hex[:6]}/"
    with LookalikeClient(live_server.target) as client:
        mine = client.insert((f"{users}full.jpg", (labelled / "crane" / "full.jpg").read_bytes()))
    before = _counts(live_server)

    out = tmp_path / "report"
    argv = ["--target", live_server.target, "eval", str(labelled), "--out", str(out), "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)

    assert data["items"] == 6 and data["labels"] == {"crane": 2, "giraffe": 2, "saturn": 2}
    # The file the server cannot decode is left out and reported, not fatal.
    assert list(data["skipped"]) == ["crane/broken.jpg"]
    assert set(data["scores"]) == {*MODELS, "fused:distance", "fused:rrf"}
    for name, s in data["scores"].items():
        assert s["queries"] == 6, name
        assert s["p_at_1"] == pytest.approx(1.0), name
        assert s["p_at_5"] == pytest.approx(1 / 5), name
        assert s["map"] == pytest.approx(1.0), name
        assert s["chance_p_at_1"] == pytest.approx(1 / 5)
        assert s["chance_map"] == pytest.approx(137 / 300)
        assert s["p_at_1_by_label"] == {"crane": 1.0, "giraffe": 1.0, "saturn": 1.0}
        assert s["confused_pairs"] == []
        assert s["rankings_shorter_than_n_minus_1"] == 0

    # Cleanup: every scratch item deleted, the user's item untouched.
    assert data["deleted"] == 6 and data["left"] == 0
    assert _counts(live_server) == before
    assert _left_under(live_server, data["scratch_prefix"], labelled / "crane" / "full.jpg") == 0
    with LookalikeClient(live_server.target) as client:
        assert client.get(mine.id).key == f"{users}full.jpg"

    md = (out / "eval.md").read_text()
    assert "| fused:distance | 1.000 | 0.200 | 1.000 | 0.200 | 0.457 | 6 |" in md
    assert "None: every first hit had its query's label." in md
    assert "- `crane/broken.jpg`: " in md
    page = (out / "eval.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "fused:rrf" in page and "<script" not in page
    assert json.loads((out / "eval.json").read_text())["items"] == 6


def test_eval_cleans_up_after_an_interruption(live_server, labelled, monkeypatch):
    before = _counts(live_server)
    messages: list[str] = []

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "leave_one_out", interrupted)
    with LookalikeClient(live_server.target) as client, pytest.raises(KeyboardInterrupt):
        evaluate.evaluate_folder(client, labelled, log=messages.append)
    (prefix,) = [m.group(1) for msg in messages if (m := re.search(r"under (eval-\w+/)", msg))]
    assert _counts(live_server) == before
    assert _left_under(live_server, prefix, labelled / "saturn" / "crop.png") == 0


def test_eval_usage_errors(live_server, labelled, tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "x.jpg").write_bytes(b"not in a label folder")
    assert main(["--target", live_server.target, "eval", str(flat)]) == 1
    assert "one sub-folder per label" in capsys.readouterr().err
    argv = ["--target", live_server.target, "eval", str(labelled), "--model", MODELS[0], "--fusion", "rrf"]
    assert main(argv) == 1
    assert "--fusion combines two or more models" in capsys.readouterr().err


def test_eval_of_one_model_without_fusion(live_server, labelled, capsys):
    argv = ["--target", live_server.target, "eval", str(labelled), "--model", MODELS[1], "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert list(data["scores"]) == [MODELS[1]] and data["scores"][MODELS[1]]["p_at_1"] == 1.0
    assert data["left"] == 0
