"""The side-by-side search page: structure, inlined images, escaping, thumbnails."""

from __future__ import annotations

import base64
import io
import sys
from html.parser import HTMLParser

import pytest
from PIL import Image

from lookalike import FusedHit, Hit, ModelHits
from lookalike.html import render_search_html
from lookalike.types import ModelScore


def _jpeg(size: tuple[int, int], color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


class _Page(HTMLParser):
    """Collects what the tests look at and fails on unbalanced section/div tags."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: list[list[str]] = []  # per model column: the img srcs inside it
        self.headings: list[str] = []
        self.query_imgs: list[str] = []
        self._in_h2 = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag in ("section", "div"):
            self.stack.append(tag)
        if tag == "section":
            self.sections.append([])
        if tag == "h2":
            self._in_h2 = True
        if tag == "img":
            if a.get("class") == "query-img":
                self.query_imgs.append(a["src"] or "")
            elif self.sections and "section" in self.stack:
                self.sections[-1].append(a["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("section", "div"):
            assert self.stack.pop() == tag
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_h2:
            self.headings.append(data)


def _results() -> list[ModelHits]:
    return [
        ModelHits("mobilenet_v2", [Hit(1, 0.0, "a.jpg", {"label": "cat"}), Hit(2, 0.31, "b.jpg")]),
        ModelHits("efficientnet_lite0", [Hit(2, 0.12, "b.jpg"), Hit(3, 0.4, "gone.jpg")]),
    ]


def test_query_and_one_column_per_model_with_data_uris() -> None:
    thumbs: dict[str, bytes | None] = {"a.jpg": _jpeg((800, 600)), "b.jpg": _jpeg((50, 40), "blue")}
    page = render_search_html(_jpeg((640, 480)), _results(), thumbs, title="test page")
    parsed = _Page()
    parsed.feed(page)
    assert parsed.stack == []  # balanced
    assert parsed.headings == ["mobilenet_v2", "efficientnet_lite0"]
    assert len(parsed.query_imgs) == 1 and parsed.query_imgs[0].startswith("data:image/jpeg;base64,")
    assert len(parsed.sections) == 2
    assert len(parsed.sections[0]) == 2 and len(parsed.sections[1]) == 1  # gone.jpg: placeholder
    assert all(src.startswith("data:image/") for col in parsed.sections for src in col)
    text = " ".join(parsed.text)
    assert "#1" in text and "d=0.3100" in text and "label=cat" in text and "gone.jpg" in text
    assert "--ncols: 2" in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_thumbnails_are_downscaled() -> None:
    big = _jpeg((1600, 1200))
    page = render_search_html(None, [ModelHits("m", [Hit(1, 0.0, "a.jpg")])], {"a.jpg": big})
    parsed = _Page()
    parsed.feed(page)
    src = parsed.sections[0][0]
    data = base64.b64decode(src.split(",", 1)[1])
    with Image.open(io.BytesIO(data)) as im:
        assert max(im.size) <= 192
    assert len(data) < len(big)


def test_escaping_of_keys_and_titles() -> None:
    hits = [ModelHits("<m>", [Hit(1, 0.5, '<script>alert("x")</script>', {"a": "<b>"})])]
    page = render_search_html(None, hits, {}, title="<title>")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;m&gt;" in page


def test_without_pillow_inlines_original_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = _jpeg((30, 20))
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import ...` raise ImportError
    page = render_search_html(raw, [ModelHits("m", [Hit(1, 0.0, "a")])], {"a": raw})
    assert page.count(base64.b64encode(raw).decode()) == 2


def test_empty_results() -> None:
    page = render_search_html(None, [ModelHits("m", [])], {})
    assert "no hits" in page


def test_fused_column_shows_each_models_rank_and_distance() -> None:
    fused = [
        FusedHit(
            2, 0.43, "b.jpg", {}, (ModelScore("mobilenet_v2", 0.31, 2), ModelScore("efficientnet_lite0", 0.12, 1))
        ),
        FusedHit(1, 0.9, "<a>.jpg", {}, (ModelScore("mobilenet_v2", 0.0, 1), ModelScore("efficientnet_lite0", 0.9, 0))),
    ]
    thumbs: dict[str, bytes | None] = {"b.jpg": _jpeg((50, 40), "blue")}
    page = render_search_html(None, _results(), thumbs, fused=fused, fusion_method="distance")
    parsed = _Page()
    parsed.feed(page)
    assert parsed.stack == []
    assert parsed.headings == ["mobilenet_v2", "efficientnet_lite0", "fused (distance)"]
    assert len(parsed.sections) == 3 and len(parsed.sections[2]) == 1  # <a>.jpg: placeholder
    text = " ".join(parsed.text)
    assert "s=0.4300" in text and "mobilenet_v2 #2 d=0.3100" in text
    assert "efficientnet_lite0 #- d=0.9000" in text  # not among its candidates: fetched distance
    assert "&lt;a&gt;.jpg" in page and "--ncols: 3" in page
    # Without a method there is no fused column, even with hits given.
    assert "fused (" not in render_search_html(None, _results(), {}, fused=fused)
