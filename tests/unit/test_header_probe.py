"""benchmarks/header_probe.py: the per-image cost of the front door's header probe, three ways."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import header_probe  # noqa: E402


def test_times_the_walk_pillow_and_the_probe_on_the_committed_photos(tmp_path: Path, capsys) -> None:
    out = tmp_path / "probe.json"
    assert header_probe.main(["--seconds", "0.01", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    jpegs = sorted((ROOT / "tests" / "data" / "photos").glob("*.jpg"))
    assert got["images"] == len(jpegs) >= 7
    assert got["walk_answered"] == got["images"]  # plain camera and web JPEGs: the walk reads them all
    assert got["walk_us"] > 0 and got["pillow_open_us"] > 0 and got["probe_us"] > 0
    assert "read by the walk" in capsys.readouterr().out
