"""The peer baseline: the same ONNX model behind Triton's dynamic batcher (PyTriton).

Runs in its own virtualenv, because PyTriton 0.7 needs numpy<2 (the server's
venv has numpy 2)::

    python3 -m venv .venv-triton
    .venv-triton/bin/pip install "nvidia-pytriton==0.7.0" "numpy<2" onnxruntime pillow "tritonclient[grpc]"
    .venv-triton/bin/python benchmarks/triton_peer.py run --concurrency 1,4,16 --out peer.json

``run`` starts ``serve`` in a child process (Triton + the Python model), waits
until the model is ready, drives it from this process with a closed loop of
``tritonclient.grpc.aio`` calls (one coroutine per caller, like ``lookalike
bench``), reads Triton's own statistics for the batch-size histogram and the
queue/compute breakdown, and writes raw per-point data as JSON;
``benchmarks/compare.py`` summarises it with the same code as the server's
figures.

The served model does what a Lookalike server does per request: it takes the
encoded image bytes, decodes and preprocesses them with the server's own
:mod:`lookalike_server.preprocess` (imported from ``server/`` on the path;
decoding spread over a thread pool, as the server does), runs the ONNX session
with the server's session options and L2-normalises. Triton's dynamic batcher
gets the same limits as the server's micro-batcher (max batch 32, 2 ms delay).

Two things PyTriton needs on a pyenv-built Python (both set here):

* ``LD_LIBRARY_PATH`` must include this interpreter's own lib folder, or
  Triton's Python-backend stub loads the system ``libpython3.11`` and dies with
  ``undefined symbol: _PyThreadState ... _recursion_count``;
* Triton binds 0.0.0.0 by default; we bind 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "server"))  # the server's preprocessing, not a copy of it

MODEL_NAME = "lookalike_embed"
TOKEN_ENV = "LOOKALIKE_PEER_TOKEN"
# gRPC metadata PyTriton's Triton checks on restricted endpoints (statistics).
TOKEN_HEADER = "triton-grpc-protocol-triton-access-token"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_images(folder: str, image_size: int) -> list[bytes]:
    """Same photo set and resizing as ``lookalike bench --image-size``."""
    import io

    from PIL import Image

    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:256]
    out = []
    for p in paths:
        data = p.read_bytes()
        if image_size:
            with Image.open(io.BytesIO(data)) as img:
                rgba = img.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                rgb = Image.alpha_composite(bg, rgba).convert("RGB")
                w, h = rgb.size
                r = image_size / max(w, h)
                rgb = rgb.resize((max(1, round(w * r)), max(1, round(h * r))), Image.Resampling.BILINEAR)
                buf = io.BytesIO()
                rgb.save(buf, format="JPEG", quality=90)
                data = buf.getvalue()
        out.append(data)
    return out


# -------------------------------------------------------------------- serve --


def serve(args: argparse.Namespace) -> int:
    """Serves the registry model with PyTriton until killed."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from lookalike_server.config import BatchingConfig
    from lookalike_server.models import OnnxModel
    from lookalike_server.preprocess import preprocess
    from lookalike_server.registry_reader import load_registry

    (spec,) = load_registry(
        REPO / "models" / "models.toml", BatchingConfig(max_batch_size=args.max_batch_size), only=[args.model]
    )
    model = OnnxModel(spec, ["CPUExecutionProvider"])
    model.warmup()
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="preprocess")

    def prep(data: bytes) -> np.ndarray:
        return preprocess(data, spec.preprocess, max_bytes=20 << 20, max_pixels=50_000_000)

    @batch
    def infer(image: np.ndarray) -> dict[str, np.ndarray]:
        blobs = [bytes(row[0]) for row in image]
        tensors = list(pool.map(prep, blobs))
        return {"embedding": np.stack(model.embed_batch(tensors))}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        http_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        allow_metrics=False,
        log_verbose=0,
    )
    # PyTriton guards the statistics endpoint with a token; `run` shares one
    # with this child through the environment so the driver can read stats.
    security = TritonSecurityConfig(access_token=os.environ.get(TOKEN_ENV) or None)
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="embedding", dtype=np.float32, shape=(spec.dim,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.max_delay_ms * 1000)),
            ),
            strict=False,
        )
        print(f"ready grpc=127.0.0.1:{args.grpc_port}", flush=True)
        triton.serve()
    return 0


# -------------------------------------------------------------------- drive --


def _stats_snapshot(raw: dict[str, Any]) -> dict[str, Any]:
    """Counters from Triton's statistics extension (cumulative since start)."""
    (model,) = [m for m in raw.get("model_stats", []) if m.get("name") == MODEL_NAME]
    inf = model.get("inference_stats", {})

    def pair(key: str) -> tuple[int, int]:
        entry = inf.get(key, {})
        return int(entry.get("count", 0)), int(entry.get("ns", 0))

    hist = {int(b["batch_size"]): int(b.get("compute_infer", {}).get("count", 0)) for b in model.get("batch_stats", [])}
    return {
        "success": pair("success"),
        "queue": pair("queue"),
        "compute_input": pair("compute_input"),
        "compute_infer": pair("compute_infer"),
        "compute_output": pair("compute_output"),
        "batch_hist": hist,
        "execution_count": int(model.get("execution_count", 0)),
        "inference_count": int(model.get("inference_count", 0)),
    }


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    def mean_ms(key: str) -> float | None:
        count = after[key][0] - before[key][0]
        return (after[key][1] - before[key][1]) / count / 1e6 if count else None

    hist = {size: after["batch_hist"].get(size, 0) - before["batch_hist"].get(size, 0) for size in after["batch_hist"]}
    return {
        "batch_size_histogram": {k: v for k, v in sorted(hist.items()) if v},
        "requests": after["success"][0] - before["success"][0],
        "executions": after["execution_count"] - before["execution_count"],
        # Triton's request-level means: queue wait, and compute_infer = our
        # Python function (preprocessing + ONNX run) per request.
        "server_timing_ms": {
            "total_ms": mean_ms("success"),
            "queue_ms": mean_ms("queue"),
            "inference_ms": mean_ms("compute_infer"),
            "compute_input_ms": mean_ms("compute_input"),
            "compute_output_ms": mean_ms("compute_output"),
        },
    }


async def _drive(args: argparse.Namespace, images: list[bytes]) -> list[dict[str, Any]]:
    import numpy as np
    import tritonclient.grpc.aio as tc
    from tritonclient.utils import InferenceServerException

    client = tc.InferenceServerClient(url=args.url)
    token = os.environ.get(TOKEN_ENV, "")
    headers = {TOKEN_HEADER: token} if token else None
    deadline = time.monotonic() + args.ready_timeout
    while True:
        try:
            if await client.is_model_ready(MODEL_NAME):
                break
        except InferenceServerException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"Triton model not ready at {args.url} after {args.ready_timeout}s")
        await asyncio.sleep(0.5)

    counter = 0

    def request() -> list[Any]:
        nonlocal counter
        counter += 1
        arr = np.array([[images[counter % len(images)]]], dtype=np.object_)
        inp = tc.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(arr)
        return [inp]

    async def phase(concurrency: int, seconds: float, rec: dict[str, Any] | None) -> None:
        until = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < until:
                inputs = request()
                t0 = time.monotonic()
                try:
                    await client.infer(MODEL_NAME, inputs, client_timeout=args.timeout)
                    code, msg = "OK", ""
                except InferenceServerException as exc:
                    code, msg = str(exc.status() or "ERROR"), str(exc.message())
                t1 = time.monotonic()
                if rec is not None:
                    rec["latencies"].append(t1 - t0)
                    rec["status"][code] = rec["status"].get(code, 0) + 1
                    if code != "OK":
                        rec["error_samples"].setdefault(code, msg[:300])
                    elif t1 <= until:
                        rec["ok_in_window"] += 1

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    points = []
    for c in args.concurrency:
        await phase(c, args.warmup, None)
        before = _stats_snapshot(await client.get_inference_statistics(MODEL_NAME, headers=headers, as_json=True))
        rec: dict[str, Any] = {"latencies": [], "status": {}, "error_samples": {}, "ok_in_window": 0}
        start = time.monotonic()
        await phase(c, args.duration, rec)
        after = _stats_snapshot(await client.get_inference_statistics(MODEL_NAME, headers=headers, as_json=True))
        rec.update(concurrency=c, window_s=args.duration, started=start, server=_stats_delta(before, after))
        lat = sorted(rec["latencies"])
        print(
            f"triton c={c}: {rec['ok_in_window'] / args.duration:.1f} req/s, "
            f"p50 {lat[len(lat) // 2] * 1000 if lat else float('nan'):.1f} ms, "
            f"batches {rec['server']['batch_size_histogram']}",
            flush=True,
        )
        points.append(rec)
    await client.close()
    return points


def drive(args: argparse.Namespace) -> int:
    """Closed-loop sweep against a running Triton; writes raw JSON."""
    images = _load_images(args.images, args.image_size)
    points = asyncio.run(_drive(args, images))
    Path(args.out).write_text(json.dumps({"points": points, "images_loaded": len(images)}) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    """Starts ``serve`` in a child, drives it, stops it. Writes ``--out``."""
    grpc_port, http_port, metrics_port = _free_port(), _free_port(), _free_port()
    env = dict(os.environ)
    env[TOKEN_ENV] = os.environ[TOKEN_ENV] = secrets.token_urlsafe(24)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(x for x in (libdir, env.get("LD_LIBRARY_PATH", "")) if x)
    log_path = Path(args.out).with_suffix(".server.log")
    cmd = [
        sys.executable, __file__, "serve", "--model", args.model,
        "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--metrics-port", str(metrics_port),
        "--max-batch-size", str(args.max_batch_size), "--max-delay-ms", str(args.max_delay_ms),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            args.url = f"127.0.0.1:{grpc_port}"
            deadline = time.monotonic() + args.ready_timeout
            while "ready grpc=" not in log_path.read_text():
                if proc.poll() is not None:
                    tail = log_path.read_text()[-3000:]
                    raise RuntimeError(f"PyTriton exited with {proc.returncode} before serving:\n{tail}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"PyTriton not ready after {args.ready_timeout}s")
                time.sleep(0.5)
            return drive(args)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    """``serve``, ``drive`` or ``run`` (both)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("serve", "drive", "run"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="mobilenet_v2")
        p.add_argument("--max-batch-size", type=int, default=32)
        p.add_argument("--max-delay-ms", type=float, default=2.0)
        if name == "serve":
            p.add_argument("--grpc-port", type=int, default=8001)
            p.add_argument("--http-port", type=int, default=8000)
            p.add_argument("--metrics-port", type=int, default=8002)
        else:
            p.add_argument("--url", default="127.0.0.1:8001")
            p.add_argument("--images", default=str(REPO / ".cache" / "photos"))
            p.add_argument("--image-size", type=int, default=0)
            p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
            p.add_argument("--warmup", type=float, default=1.0)
            p.add_argument("--duration", type=float, default=4.0)
            p.add_argument("--timeout", type=float, default=30.0)
            p.add_argument("--ready-timeout", type=float, default=180.0)
            p.add_argument("--out", default="triton_peer.json")
    args = parser.parse_args(argv)
    return {"serve": serve, "drive": drive, "run": run}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
