"""The arithmetic of ``benchmarks/quality.py`` on tiny rankings whose scores are worked out by hand.

No server here: the benchmark itself takes over a minute. These tests pin P@k, AP, the
random-ranking baselines and the copy-detection recall so that a committed quality table can be
trusted to mean what its headers say.
"""

from __future__ import annotations

import importlib.util
import io
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _load_quality() -> ModuleType:
    # benchmarks/ is a folder of scripts, not a package: load the file itself.
    spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


quality = _load_quality()

# Six items: A has three members, B two, C one (so c1 has nothing relevant and is skipped).
LABELS = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C"}
RANKINGS = {
    "a1": ["a2", "b1", "a3", "b2", "c1"],  # rel T F T F F: P@1 1, P@5 2/5, AP (1/1 + 2/3)/2 = 5/6
    "a2": ["b1", "a1", "b2", "c1", "a3"],  # rel F T F F T: P@1 0, P@5 2/5, AP (1/2 + 2/5)/2 = 0.45
    "a3": ["a1", "a2", "b1", "b2", "c1"],  # rel T T F F F: P@1 1, P@5 2/5, AP 1
    "b1": ["a1", "b2", "a2", "a3", "c1"],  # rel F T F F F: P@1 0, P@5 1/5, AP 1/2
    "b2": ["c1", "a1", "a2", "a3"],  # b1 never returned: P@1 0, P@5 0, AP 0
    "c1": ["a1", "a2", "a3", "b1", "b2"],  # no other C: skipped
}


def test_precision_at_k_counts_missing_ranks_as_misses() -> None:
    assert quality.precision_at_k([True, False, True], 1) == 1.0
    assert quality.precision_at_k([True, False, True], 2) == 0.5
    assert quality.precision_at_k([True, False, True], 5) == pytest.approx(2 / 5)
    with pytest.raises(ValueError):
        quality.precision_at_k([True], 0)


def test_average_precision_divides_by_all_relevant_items() -> None:
    assert quality.average_precision([True, False, True, False], 2) == pytest.approx((1 + 2 / 3) / 2)
    # Only one of two relevant items retrieved, at rank 1: the missing one counts as 0.
    assert quality.average_precision([True, False], 2) == pytest.approx(0.5)
    assert quality.average_precision([False, False], 1) == 0.0
    with pytest.raises(ValueError):
        quality.average_precision([True], 0)


@pytest.mark.parametrize(("n_relevant", "n_candidates"), [(1, 1), (1, 2), (1, 5), (2, 5), (3, 6), (6, 6)])
def test_random_average_precision_matches_enumerating_every_ranking(n_relevant: int, n_candidates: int) -> None:
    # The closed form against brute force: the mean AP over all distinct placements of the
    # relevant items (every ranking is equally likely, so every placement is too).
    aps = [
        quality.average_precision([i in positions for i in range(n_candidates)], n_relevant)
        for positions in itertools.combinations(range(n_candidates), n_relevant)
    ]
    assert quality.random_average_precision(n_relevant, n_candidates) == pytest.approx(sum(aps) / len(aps))


def test_random_baselines_by_hand() -> None:
    assert quality.random_precision(2, 5) == pytest.approx(0.4)
    assert quality.random_average_precision(1, 2) == pytest.approx(0.75)  # AP is 1 or 1/2
    assert quality.random_average_precision(1, 5) == pytest.approx(137 / 300)  # H_5 / 5
    assert quality.random_average_precision(2, 5) == pytest.approx(237 / 400)
    with pytest.raises(ValueError):
        quality.random_average_precision(0, 5)


def test_score_rankings_by_hand() -> None:
    s = quality.score_rankings(RANKINGS, LABELS, ks=(1, 5))
    assert (s.queries, s.skipped) == (5, 1)
    assert s.precision[1] == pytest.approx((1 + 0 + 1 + 0 + 0) / 5)
    assert s.precision[5] == pytest.approx((0.4 + 0.4 + 0.4 + 0.2 + 0) / 5)
    assert s.mean_ap == pytest.approx((5 / 6 + 0.45 + 1 + 0.5 + 0) / 5)
    # Chance over the five scored queries, each ranking N-1 = 5 candidates.
    assert s.chance_precision == pytest.approx((3 * 2 / 5 + 2 * 1 / 5) / 5)
    assert s.chance_map == pytest.approx((3 * 237 / 400 + 2 * 137 / 300) / 5)
    assert s.precision_at_1_by_label == pytest.approx({"A": 2 / 3, "B": 0.0})


def test_score_rankings_refuses_a_ranking_that_holds_its_query() -> None:
    with pytest.raises(ValueError, match="ranks itself"):
        quality.score_rankings({"a1": ["a1", "a2"]}, LABELS)


def test_copy_detection_recall_and_rank() -> None:
    assert quality.rank_of(7, [3, 7, 9]) == 2
    assert quality.rank_of(8, [3, 7, 9]) is None
    ranks = [1, 2, None, 5, 6]
    assert quality.recall_at_k(ranks, 1) == pytest.approx(1 / 5)
    assert quality.recall_at_k(ranks, 5) == pytest.approx(3 / 5)


def test_mirror_pairs() -> None:
    keys = ["a/x.png", "a/x_mirror.png", "b/y_mirror.png", "b/z.png"]
    assert quality.mirror_pairs(keys) == [["a/x.png", "a/x_mirror.png"]]


def test_variants_are_decodable_images_of_the_expected_sizes(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (100, 60), (200, 30, 30)).save(path)
    variants = quality.make_variants(path)
    assert set(variants) == set(quality.TRANSFORM_NAMES)
    sizes = {name: Image.open(io.BytesIO(data)).size for name, data in variants.items()}
    assert sizes == {
        "crop70": (70, 42),
        "scale50": (50, 30),
        "jpeg40": (100, 60),
        "rotate5": (100, 60),
        "hflip": (100, 60),
    }
    assert Image.open(io.BytesIO(variants["jpeg40"])).format == "JPEG"


def test_twin_misses_counts_only_misses_of_photos_with_a_mirrored_twin() -> None:
    report = {
        "dataset": {"mirror_pairs": [["t/x.png", "t/x_mirror.png"]]},
        "copy_detection": {
            "queries": [
                {"key": "t/x_mirror.png", "transform": "crop70", "m": 2, "fused:distance": 2},
                {"key": "t/y.png", "transform": "hflip", "m": None, "fused:distance": 1},
                {"key": "t/x.png", "transform": "hflip", "m": 1, "fused:distance": 1},
            ]
        },
    }
    assert quality.twin_misses_sentence(report) == (
        "Misses that are of such a photo, per ranking: m 1 of 2, fused:distance 1 of 1."
    )
