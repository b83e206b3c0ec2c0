"""The ``lookalike`` CLI against an in-process fake servicer: output, JSON, exit codes."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import grpc
import pytest
from PIL import Image

from lookalike import cli, console, thumbnails
from lookalike.cli import commands, exits
from lookalike.cli.parser import build_parser
from tests.unit.test_client_fakes import DIM, FakeServer


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as s:
        yield s


def _png(color: str, size: tuple[int, int] = (16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def run(server: FakeServer, *argv: str) -> int:
    return cli.main(["--target", server.target, "--timeout", "10", *argv])


def test_models_table_and_json(server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(server, "models") == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "beta" in out and f"dim={DIM}" in out
    assert "collection=lookalike_alpha" in out
    assert "ms/image 1:4.00 2:4.00 4:4.00" in out and "why: no batch size beat 1 by 10%" in out
    assert "threads: 2 cores, 1 decoding, 1 worker(s) x 1 intra-op" in out
    assert run(server, "models", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in data] == ["alpha", "beta"] and data[0]["dim"] == DIM
    assert data[0]["threads"]["cores"] == 2 and data[0]["bucket_costs"][1]["ms_per_run"] == 8.0


def test_target_from_env(server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LOOKALIKE_TARGET", server.target)
    assert cli.main(["models"]) == 0
    assert "alpha" in capsys.readouterr().out


def test_embed_every_model_by_default(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = tmp_path / "a.png"
    img.write_bytes(_png("red"))
    assert run(server, "embed", str(img)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "alpha" in lines[0] and "beta" in lines[1]
    assert "norm=1.0000" in lines[0] and f"dim={DIM}" in lines[0]
    assert run(server, "embed", str(img), "--model", "beta", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data) == 1 and data[0]["model"] == "beta" and data[0]["embedding"] == [0.5] * DIM


def test_search_table_json_and_filters(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    img = tmp_path / "q.png"
    img.write_bytes(_png("blue"))
    assert run(server, "search", str(img), "--top-k", "3") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("rank") and "alpha" in out[0] and "beta" in out[0]
    # Side by side: each rank line holds both models' hits.
    assert "alpha/hit0.png" in out[2] and "beta/hit0.png" in out[2] and len(out) == 2 + 3

    argv = ["search", str(img), "--model", "beta", "--json", "--key-prefix", "x/", "--attr", "c=d"]
    assert run(server, *argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in data["results"]] == ["beta"]
    assert data["results"][0]["hits"][0] == {
        "id": 1,
        "distance": 0.0,
        "key": "beta/hit0.png",
        "attributes": {"rank": "0"},
    }
    req = server.servicer.seen.requests["Search"][-1]
    assert req.filter.key_prefix == "x/" and dict(req.filter.attributes) == {"c": "d"}

    assert run(server, "search", "--id", "5", "--exclude-self", "--json") == 0
    capsys.readouterr()
    req = server.servicer.seen.requests["Search"][-1]
    assert req.id == 5 and req.exclude_self


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("class") or "")
        if tag == "img":
            self.imgs.append(a.get("src") or "")


def test_search_html_reads_keys_under_thumbs_root(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "hit0.png").write_bytes(_png("green", (400, 300)))
    (tmp_path / "q.png").write_bytes(_png("blue"))
    assert run(server, "search", "q.png", "--top-k", "2", "--html", "out.html", "--thumbs-root", ".") == 0
    err = capsys.readouterr().err
    assert "wrote out.html" in err and "3 hit keys are not files under ." in err
    parser = _Collector()
    parser.feed((tmp_path / "out.html").read_text())
    assert parser.sections == ["model", "model"]
    assert len(parser.imgs) == 2 and all(src.startswith("data:image/") for src in parser.imgs)


def test_search_html_without_thumbs_root_reads_no_local_file(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alpha").mkdir()
    (tmp_path / "alpha" / "hit0.png").write_bytes(_png("green"))
    (tmp_path / "q.png").write_bytes(_png("blue"))
    assert run(server, "search", "q.png", "--html", "out.html") == 0
    assert "no --thumbs-root" in capsys.readouterr().err
    parser = _Collector()
    parser.feed((tmp_path / "out.html").read_text())
    assert len(parser.imgs) == 1  # the query image the user named, no hit read from disk


def test_search_html_never_reads_outside_the_root(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # Keys any client could have stored: a traversal, an absolute path, a symlink out of the root.
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png("red"))
    root = tmp_path / "photos"
    root.mkdir()
    (root / "ok.png").write_bytes(_png("green"))
    (root / "link.png").symlink_to(secret)
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    depth = len(root.resolve().parts) - 1
    traversal = "../" * (depth + 3) + str(secret.resolve()).lstrip("/")
    server.servicer.hit_keys = [traversal, "../secret.png", str(secret), "link.png", "dirlink/secret.png", "ok.png"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "q.png").write_bytes(_png("blue"))
    assert run(server, "search", "q.png", "--model", "alpha", "--html", "out.html", "--thumbs-root", str(root)) == 0
    assert "5 hit keys are not files under" in capsys.readouterr().err
    parser = _Collector()
    parser.feed((tmp_path / "out.html").read_text())
    assert len(parser.imgs) == 2  # the query and ok.png, nothing else


def test_load_thumbnails_checks_every_key(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"private")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"A")
    (root / "evil").symlink_to(outside)
    keys = [
        "../../../../etc/hostname",
        "/etc/hostname",
        str(outside),
        "../outside.txt",
        "evil",
        "sub/../sub/a.png",
        str(root / "sub" / "a.png"),  # an absolute key inside the root is fine
        "sub",  # a directory
        "nul\0byte",
    ]
    got = thumbnails.load_thumbnails(keys, root)
    assert {k for k, v in got.items() if v is not None} == {"sub/../sub/a.png", str(root / "sub" / "a.png")}
    assert thumbnails.load_thumbnails(keys, None) == dict.fromkeys(keys)
    with pytest.raises(ValueError, match="thumbs-root"):
        thumbnails.load_thumbnails(keys, tmp_path / "missing")


def test_index_summary_and_resume(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    (photos / "dogs").mkdir()
    (photos / "cats" / "a.png").write_bytes(_png("red"))
    (photos / "cats" / "b.png").write_bytes(_png("green"))
    (photos / "dogs" / "c.png").write_bytes(_png("blue"))
    (photos / "dogs" / "notes.txt").write_text("not an image")
    argv = ["index", str(photos), "-r", "--dir-attr", "label", "--attr", "set=t", "--batch", "2", "-q"]
    assert run(server, *argv) == 0
    assert "3 indexed, 0 already indexed, 0 failed" in capsys.readouterr().out
    items = sorted(server.servicer.items.values(), key=lambda i: i.key)
    assert [i.key for i in items] == [
        str(photos / "cats" / "a.png"),
        str(photos / "cats" / "b.png"),
        str(photos / "dogs" / "c.png"),
    ]
    assert dict(items[2].attributes) == {"set": "t", "label": "dogs"}
    # Second run: everything is recognised by content and counted as already indexed.
    (photos / "cats" / "d.png").write_bytes(_png("white"))
    assert run(server, *argv) == 0
    assert "1 indexed, 3 already indexed, 0 failed" in capsys.readouterr().out


def test_index_failures_exit_3(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "good.png").write_bytes(_png("red"))
    (tmp_path / "broken.jpg").write_bytes(b"bad")  # the fake rejects these bytes per item
    assert run(server, "index", str(tmp_path), "-q", "--key-prefix", "set1/") == 3
    cap = capsys.readouterr()
    assert "1 indexed, 0 already indexed, 1 failed" in cap.out
    assert "INVALID_ARGUMENT: cannot decode image" in cap.err and "set1/broken.jpg" in cap.err
    assert {i.key for i in server.servicer.items.values()} == {"set1/good.png"}


def test_index_progress_without_a_tty_is_a_few_plain_lines(
    server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # capsys's stderr is not a terminal, as in CI logs: no tqdm redraws, one line per 10%.
    for i in range(20):
        (tmp_path / f"{i:02d}.png").write_bytes(_png("red", (8 + i, 8)))
    assert run(server, "index", str(tmp_path), "--batch", "4") == 0
    cap = capsys.readouterr()
    assert "20 indexed, 0 already indexed, 0 failed" in cap.out
    lines = [line for line in cap.err.splitlines() if line.startswith("indexing:")]
    assert "\r" not in cap.err
    assert [line.split()[1] for line in lines] == [f"{n}/20" for n in range(2, 21, 2)]
    assert lines[-1].startswith("indexing: 20/20 (100%)") and lines[-1].endswith("new=20 known=0 failed=0")


def test_line_progress_prints_every_step_or_interval() -> None:
    now = [0.0]
    out = io.StringIO()
    progress = console.LineProgress(1000, "indexing", out, step=0.1, interval_s=10.0, clock=lambda: now[0])
    for _ in range(99):  # under 10%, within 10 s: silent
        now[0] += 0.01
        progress.update(1)
    assert out.getvalue() == ""
    progress.update(1)  # 100/1000 = the first step
    assert out.getvalue().splitlines() == ["indexing: 100/1000 (10%) 101.0 img/s, 1s elapsed, ETA 9s"]
    now[0] += 10.0  # a slow stretch: the interval alone brings the next line
    progress.set_postfix(new=101)
    progress.update(1)
    assert out.getvalue().splitlines()[-1].startswith("indexing: 101/1000 (10%)")
    assert out.getvalue().splitlines()[-1].endswith("new=101")
    progress.close()  # stopped early: the count reached is printed once more, then nothing
    progress.close()
    assert len(out.getvalue().splitlines()) == 2


def test_index_progress_on_a_tty_is_tqdm(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    (tmp_path / "a.png").write_bytes(_png("red"))
    assert run(server, "index", str(tmp_path)) == 0
    # tqdm redraws in place ("\r") and draws a bar ("100%|"); no LineProgress lines.
    assert "\r" in term.getvalue() and "100%|" in term.getvalue()
    assert "elapsed" not in term.getvalue()


def test_get_delete_and_not_found(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.png").write_bytes(_png("red"))
    assert run(server, "index", str(tmp_path), "-q") == 0
    capsys.readouterr()
    assert run(server, "get", "1") == 0
    out = capsys.readouterr().out
    assert f"key:      {tmp_path / 'a.png'}" in out
    assert "created:  2025-11-24T16:00:00+00:00" in out  # ISO 8601, not a raw epoch
    assert run(server, "get", "--key", str(tmp_path / "a.png"), "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["id"] == 1 and data["created"] == "2025-11-24T16:00:00+00:00"
    assert run(server, "get", str(tmp_path / "a.png")) == 0  # a non-integer argument is a key
    assert "id:       1" in capsys.readouterr().out
    assert run(server, "delete", "1") == 0
    assert "deleted 1 from alpha, beta" in capsys.readouterr().out
    assert run(server, "get", "1") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: NOT_FOUND: no such item") and "Traceback" not in err


def test_rpc_error_is_one_line(server: FakeServer, capsys: pytest.CaptureFixture) -> None:
    server.servicer.fail["ListModels"] = [grpc.StatusCode.INVALID_ARGUMENT]
    assert run(server, "models") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: INVALID_ARGUMENT: fake invalid_argument")


def test_unreachable_server(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--target", "127.0.0.1:1", "--timeout", "1", "health"]) == 1
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE:")


def test_health_and_missing_file(server: FakeServer, capsys: pytest.CaptureFixture) -> None:
    assert run(server, "health") == 0
    assert capsys.readouterr().out.strip() == "SERVING"
    server.health.set("", 2)  # NOT_SERVING
    assert run(server, "health") == 1
    assert run(server, "search", "/nonexistent.png") == 1
    assert "no such file: /nonexistent.png" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["search", "--top-k", "many"])
    assert info.value.code == 2


def test_bench_registered_or_explained(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert "bench" in choices and "serve" in choices
    try:
        import lookalike.bench  # noqa: F401
    except ImportError:
        assert cli.main(["bench"]) == 1
        assert "lookalike.bench" in capsys.readouterr().err


def test_serve_forwards_all_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    class FakeMain:
        @staticmethod
        def main(argv: list[str]) -> int:
            seen.append(argv)
            return 0

    real_import = commands.importlib.import_module
    monkeypatch.setattr(
        commands.importlib,
        "import_module",
        lambda name: FakeMain if name == "lookalike_server.__main__" else real_import(name),
    )
    assert cli.main(["serve", "--port", "0", "--help"]) == 0
    assert seen == [["--port", "0", "--help"]]


def test_stdout_closed_by_reader_exits_quietly(server: FakeServer, tmp_path: Path) -> None:
    # `lookalike stats | head`: the reader is gone before we write. A real pipe, a real process.
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lookalike.cli", "--target", server.target, "stats"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.stderr.decode() == "" and proc.returncode == exits.EXIT_PIPE


def test_security_flags_reach_the_client(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert run(server, "--token", "flag-token", "models") == 0
    assert server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer flag-token"
    monkeypatch.setenv("LOOKALIKE_TOKEN", "env-token")
    assert run(server, "models") == 0
    assert server.servicer.seen.metadata["ListModels"][-1]["authorization"] == "Bearer env-token"
    capsys.readouterr()
    # A token in clear text to another machine is refused before connecting, in one line.
    assert cli.main(["--target", "search.example.com:50051", "models"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to send a token in clear text" in err[0]
    # A CA file that does not exist is one line too.
    assert run(server, "--ca", "/nonexistent/ca.pem", "models") == 1
    assert "cannot read the CA file" in capsys.readouterr().err


def test_bench_outside_a_checkout_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)  # no tests/data/photos, no .cache/photos here
    assert cli.main(["bench", "--target", "127.0.0.1:1", "--duration", "0.1"]) == 2
    err = capsys.readouterr().err
    assert "no photos to send: pass --images DIR" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bench_writes_results_under_out_bench_by_default(
    server: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(_png("red"))
    monkeypatch.chdir(tmp_path)
    argv = ["bench", "--target", server.target, "--images", "photos", "--name", "t"]
    assert cli.main([*argv, "--concurrency", "1", "--warmup", "0", "--duration", "0.3"]) == 0
    results = tmp_path / "out" / "bench" / "t" / "results.json"
    data = json.loads(results.read_text())
    assert data["series"][0]["points"][0]["ok"] > 0 and data["machine"]["cores"] >= 1
    assert not (tmp_path / "benchmarks").exists()
    assert "bench_report.py" in capsys.readouterr().out
