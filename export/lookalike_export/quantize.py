"""fp16 and int8 variants of an exported fp32 model, with a retrieval-quality gate.

* ``fp16``: ``onnxconverter_common.float16.convert_float_to_float16`` with
  ``keep_io_types=True``, so the server still feeds and reads float32. Only
  worth it on a GPU (ONNX Runtime's CPU provider runs most fp16 ops by casting
  back), so its speed is measured only where a GPU exists.
* ``int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic``: int8
  weights, activations quantised per batch at run time; needs no data.
* ``int8-static``: ``quantize_static`` in QDQ format, per-channel int8
  weights, uint8 activations calibrated (MinMax) on real photos preprocessed
  exactly as the server does.

The gate: P@1 of leave-one-out nearest-neighbour retrieval on a labelled photo
folder (one sub-folder per class), fp32 vs variant. A drop beyond
``max_p1_drop`` refuses the export (or warns with ``force``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookalike_export.parity import l2_normalise, photo_batch
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.preprocess import PRESETS
from lookalike_server.registry import ModelEntry, file_sha256, read_entries, resolve_decode

log = logging.getLogger(__name__)

MODES = ("fp16", "int8-dynamic", "int8-static")
_SUFFIX = {"fp16": "fp16", "int8-dynamic": "int8d", "int8-static": "int8s"}


def entry_from_registry(registry: Path, name: str) -> ModelEntry:
    """Reads one entry as a :class:`ModelEntry`, with its preset expanded."""
    raw = next((e for e in read_entries(registry) if e.get("name") == name), None)
    if raw is None:
        raise ConfigError(f"{name}: no entry of that name in {registry}")
    fields: dict[str, Any] = dict(PRESETS.get(str(raw.get("preset", "")), {}))
    fields.update(raw)
    fields.update(resolve_decode(raw))  # decode = "exact" without its flags written out
    for k in ("mean", "std"):
        fields[k] = tuple(float(v) for v in fields[k]) if k in fields else getattr(ModelEntry, k, None)
    known = set(ModelEntry.__dataclass_fields__)
    return ModelEntry(**{k: v for k, v in fields.items() if k in known})


def labelled_photos(folder: Path, min_per_class: int = 2) -> tuple[list[Path], list[str]]:
    """Photos and labels from ``folder/<label>/...`` (labels = first-level sub-folder)."""
    from lookalike_export.parity import find_photos

    paths, labels = [], []
    for p in find_photos(folder):
        rel = p.relative_to(folder)
        if len(rel.parts) >= 2:
            paths.append(p)
            labels.append(rel.parts[0])
    keep = {lab for lab in set(labels) if labels.count(lab) >= min_per_class}
    pairs = [(p, lab) for p, lab in zip(paths, labels, strict=True) if lab in keep]
    if len(keep) < 2:
        raise ConfigError(f"{folder}: need at least two classes of {min_per_class}+ photos for P@1")
    return [p for p, _ in pairs], [lab for _, lab in pairs]


def session(path: Path, threads: int = 0, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session (``threads`` 0 = ORT's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=list(providers))
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: ONNX Runtime cannot load it ({exc})") from exc


def embed(sess: Any, batch: np.ndarray, entry: ModelEntry, chunk: int = 32) -> np.ndarray:
    """Runs a preprocessed batch through a session in chunks; returns L2-normalised rows."""
    outs = [
        sess.run([entry.output or sess.get_outputs()[0].name], {entry.input: batch[i : i + chunk]})[0]
        for i in range(0, len(batch), chunk)
    ]
    return l2_normalise(np.concatenate(outs).reshape(len(batch), -1).astype(np.float64))


def precision_at_1(emb: np.ndarray, labels: Sequence[str]) -> float:
    """Leave-one-out nearest neighbour (L2 on normalised rows) accuracy."""
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)  # max cosine = min L2 on unit vectors
    nn = np.argmax(sim, axis=1)
    lab = np.asarray(labels)
    return float(np.mean(lab[nn] == lab))


class _PhotoReader:
    """``CalibrationDataReader`` over preprocessed photos, one image per call."""

    def __init__(self, batch: np.ndarray, input_name: str) -> None:
        self._it: Iterator[np.ndarray] = iter(batch)
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self._name: x[None]}


def make_variant(src: Path, dst: Path, mode: str, entry: ModelEntry, calibration: Sequence[Path]) -> None:
    """Writes the ``mode`` variant of ``src`` to ``dst``.

    Raises:
        ConfigError: Unknown mode, or int8-static without calibration photos.
        ModelLoadError: The converter failed.
    """
    import onnx

    if mode not in MODES:
        raise ConfigError(f"{entry.name}: unknown precision mode {mode!r} (known: {', '.join(MODES)})")
    try:
        if mode == "fp16":
            from onnxconverter_common import float16

            from lookalike_export.uint8_input import PREFIX

            fp32 = onnx.load(str(src))
            # A uint8-input graph's own cast and normalisation stay fp32 (the
            # converter would retype the cast's output and break the graph);
            # a cast to fp16 follows them.
            keep = [n.name for n in fp32.graph.node if n.name.startswith(PREFIX)]
            model = float16.convert_float_to_float16(fp32, keep_io_types=True, node_block_list=keep or None)
            onnx.save(model, str(dst))
            _check_loads(dst, entry.name, mode)
            return
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with tempfile.TemporaryDirectory() as td:
            # ORT's recommended pre-pass (shape inference + graph optimisation)
            # before quantising; without it some Conv/Add pairs stay fp32.
            pre = Path(td) / "pre.onnx"
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
            if mode == "int8-dynamic":
                quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
                return
            if not calibration:
                raise ConfigError(f"{entry.name}: int8-static needs calibration photos")
            batch = photo_batch(calibration, entry)
            quantize_static(
                str(pre),
                str(dst),
                _PhotoReader(batch, entry.input or "input"),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                # 7-bit weights. x86 CPUs without VNNI (AVX2 only) multiply u8 x s8 with
                # VPMADDUBSW, whose 16-bit sums can saturate (ONNX Runtime's quantization
                # docs): on an AVX2-only EPYC, MobileNetV2's smallest cosine to fp32 over the
                # test photos was 0.70 without this and 0.97 with it. The same file should give
                # the same vectors on every replica's CPU, so the range that cannot saturate
                # is the default.
                reduce_range=True,
            )
    except (ConfigError, ModelLoadError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"{entry.name}: {mode} conversion failed: {exc}") from exc


def _check_loads(path: Path, name: str, mode: str) -> None:
    """Refuses a variant ONNX Runtime cannot load (checked on the CPU, where no GPU is here to run it)."""
    try:
        session(path)
    except ModelLoadError as exc:
        path.unlink(missing_ok=True)
        raise ModelLoadError(f"{name}: the {mode} variant does not load: {exc}") from None


@dataclass(frozen=True)
class QuantizeResult:
    """A written variant and its quality numbers.

    Attributes:
        path: The variant file.
        entry: Its registry entry.
        p1_fp32: P@1 of the fp32 model (None without an eval folder).
        p1_variant: P@1 of the variant.
        min_cosine: Smallest cosine between fp32 and variant embeddings.
        n_eval: Photos evaluated.
        warning: Set when the quality gate was overridden with ``force``.
    """

    path: Path
    entry: ModelEntry
    p1_fp32: float | None
    p1_variant: float | None
    min_cosine: float | None
    n_eval: int
    warning: str = ""

    def summary(self) -> str:
        """One line for the CLI."""
        q = "quality not checked (no --eval-dir, no GPU for fp16)"
        if self.min_cosine is not None:
            q = f"min cosine to fp32 {self.min_cosine:.4f} on {self.n_eval} photos"
        if self.p1_fp32 is not None and self.p1_variant is not None:
            q += f"; P@1 {self.p1_fp32:.3f} → {self.p1_variant:.3f}"
        head = f"{self.entry.name}: wrote {self.path} (sha256 {self.entry.sha256}); {q}"
        return head + (f"; WARNING {self.warning}" if self.warning else "")


def quantize_model(
    src: Path,
    *,
    mode: str,
    out: Path | None = None,
    registry: Path | None = None,
    name: str | None = None,
    calibration: Sequence[Path] = (),
    eval_dir: Path | None = None,
    max_p1_drop: float = 0.05,
    force: bool = False,
) -> QuantizeResult:
    """Makes a precision variant and checks its retrieval quality.

    Args:
        src: The fp32 ONNX file.
        mode: One of :data:`MODES`.
        out: Output path (default ``<stem>_<suffix>.onnx`` beside ``src``).
        registry: Registry holding the fp32 entry (default: ``models.toml``
            beside ``src``); its preprocessing is reused for calibration,
            evaluation and the variant's entry.
        name: The fp32 entry's name (default: ``src``'s stem).
        calibration: Photos for int8-static.
        eval_dir: Labelled photos (``<dir>/<class>/*``) for the P@1 gate; the
            cosine check runs on the calibration photos otherwise.
        max_p1_drop: Largest allowed P@1 drop (absolute, e.g. 0.05).
        force: Write anyway past the gate (the result carries a warning).

    Raises:
        ModelLoadError: The variant's quality drop exceeds the gate, or conversion failed.
        ConfigError: No registry entry to take the preprocessing from.
    """
    if not src.is_file():
        raise ModelLoadError(f"{src.stem}: ONNX file {src} does not exist")
    name = name or src.stem
    registry = registry or src.parent / "models.toml"
    if not registry.is_file():
        raise ConfigError(f"{name}: no registry at {registry} to read its preprocessing from; pass --registry")
    base = entry_from_registry(registry, name)
    dst = out or src.with_name(f"{src.stem}_{_SUFFIX.get(mode, mode)}.onnx")
    tmp = dst.with_name(f".{dst.name}.tmp")
    make_variant(src, tmp, mode, base, calibration)

    p1_a = p1_b = cos = None
    n = 0
    warning = ""
    gpu = _has_gpu()
    if mode != "fp16" or gpu:
        providers = ("CUDAExecutionProvider", "CPUExecutionProvider") if mode == "fp16" else ("CPUExecutionProvider",)
        if eval_dir is not None:
            paths, labels = labelled_photos(eval_dir)
        else:
            paths, labels = list(calibration), []
        if paths:
            batch = photo_batch(paths, base)
            a = embed(session(src, providers=providers), batch, base)
            b = embed(session(tmp, providers=providers), batch, base)
            cos, n = float(np.min(np.sum(a * b, axis=1))), len(paths)
            if labels:
                p1_a, p1_b = precision_at_1(a, labels), precision_at_1(b, labels)
                drop = p1_a - p1_b
                if drop > max_p1_drop:
                    msg = f"{mode} drops P@1 by {drop:.3f} ({p1_a:.3f} → {p1_b:.3f}) > {max_p1_drop}"
                    if not force:
                        tmp.unlink(missing_ok=True)
                        raise ModelLoadError(f"{name}: {msg}; refusing (use --force to keep it)")
                    warning = msg
                    log.warning("%s: %s", name, msg)
    tmp.replace(dst)
    dst.chmod(0o644)
    suffix = _SUFFIX[mode]
    entry = replace(
        base,
        name=f"{name}_{suffix}",
        path=str(Path(base.path).with_name(dst.name)) if out is None else str(dst.resolve()),
        sha256=file_sha256(dst),
        description=f"{base.description}; {mode} variant made by lookalike-export quantize",
        batching=dict(base.batching),
    )
    return QuantizeResult(dst, entry, p1_a, p1_b, cos, n, warning)


def _has_gpu() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_device_present()


def _cuda_device_present() -> bool:
    """onnxruntime-gpu lists CUDA even without a device; check that one exists."""
    try:
        import ctypes

        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    except OSError:
        return False


def time_ms_per_image(sess: Any, entry: ModelEntry, batch_size: int, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds per image for ``batch_size`` random inputs."""
    shape = (
        (batch_size, 3, entry.height, entry.width)
        if entry.layout == "NCHW"
        else (batch_size, entry.height, entry.width, 3)
    )
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    feed = {entry.input: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000 / batch_size
