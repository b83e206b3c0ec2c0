"""``lookalike index``: retries of retriable failures, the verification pass, truthful summary."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from lookalike import cli
from lookalike.cli import index as cli_index
from tests.unit.test_client_fakes import FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_index.time, "sleep", lambda s: None)


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def _dir(tmp_path: Path, n: int) -> Path:
    colors = ["red", "green", "blue", "yellow", "white", "black"]
    for i in range(n):
        (tmp_path / f"{i}.png").write_bytes(_png(colors[i]))
    return tmp_path


def run(server: FakeServer, *argv: str) -> int:
    return cli.main(["--target", server.target, "--timeout", "10", *argv])


def test_aborted_and_unavailable_items_are_retried_until_stored(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dir(tmp_path, 4)
    server.servicer.item_fail["k/0.png"] = ["ABORTED", "UNAVAILABLE"]
    server.servicer.item_fail["k/1.png"] = ["ABORTED"]
    assert run(server, "index", str(root), "--key-prefix", "k/") == 0
    cap = capsys.readouterr()
    assert "4 indexed, 0 already indexed, 0 failed" in cap.out
    assert "retrying 2 file(s)" in cap.err and "retrying 1 file(s)" in cap.err
    assert {i.key for i in server.servicer.items.values()} == {f"k/{i}.png" for i in range(4)}


def test_retries_exhausted_report_each_failure_once_and_exit_3(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dir(tmp_path, 2)
    server.servicer.item_fail["k/0.png"] = ["ABORTED"] * 10
    assert run(server, "index", str(root), "--key-prefix", "k/", "--retries", "2", "-q") == 3
    cap = capsys.readouterr()
    assert "1 indexed, 0 already indexed, 1 failed" in cap.out
    assert cap.err.count("k/0.png") == 1 and "ABORTED" in cap.err
    assert len(server.servicer.seen.requests["InsertStream.item"]) == 2 + 2  # 1 + 2 retries, 1 success


def test_verification_re_inserts_an_acknowledged_file_that_is_missing(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _dir(tmp_path, 2)
    real = server.servicer._insert_one
    lost: list[str] = []

    def lossy(item, models):  # type: ignore[no-untyped-def]
        result = real(item, models)
        if item.key == "k/1.png" and not lost:
            # Acknowledged, then lost (what a ghost looked like): the verify pass must notice.
            lost.append(item.key)
            del server.servicer.items[result.id]
            del server.servicer.by_hash[result.content_sha256]
        return result

    server.servicer._insert_one = lossy  # type: ignore[method-assign]
    assert run(server, "index", str(root), "--key-prefix", "k/", "-q") == 0
    cap = capsys.readouterr()
    assert "2 indexed, 0 already indexed, 0 failed" in cap.out
    assert lost == ["k/1.png"]
    assert {i.key for i in server.servicer.items.values()} == {"k/0.png", "k/1.png"}
    assert len(server.servicer.seen.requests["Get"]) >= 3  # 2 verified, then the re-insert verified


def test_no_verify_skips_the_lookups(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dir(tmp_path, 2)
    assert run(server, "index", str(root), "--no-verify", "-q") == 0
    assert "2 indexed" in capsys.readouterr().out
    assert not server.servicer.seen.requests["Get"]
