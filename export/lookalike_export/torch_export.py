"""PyTorch → ONNX export of the feature networks in :mod:`.archs`.

Uses torch's ``torch.export``-based ONNX exporter (``dynamo=True``, the
default since torch 2.9): on torch 2.13 it folds BatchNorm into the
convolutions and emits no ``Constant`` nodes, so MobileNetV2 becomes 98 nodes
(Conv, Clip, Add, one ReduceMean) against 169 from the legacy TorchScript
exporter. The batch axis is dynamic; height and width stay fixed, which lets
ONNX Runtime plan memory and matches the server's fixed input size.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from lookalike_export.archs import ARCHS, Pooling, build_feature_net
from lookalike_export.parity import check_parity, photo_batch
from lookalike_export.result import ExportResult
from lookalike_server.errors import ModelLoadError
from lookalike_server.registry import ModelEntry, file_sha256

log = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "embedding"


def torch_entry(
    arch: str,
    name: str,
    onnx_file: str,
    pooling: Pooling,
    weights_label: str,
    size: int = 224,
    decode: str = "fast",
) -> ModelEntry:
    """The registry entry a torch export of ``arch`` needs.

    Args:
        arch: Architecture name.
        name: Model name in the registry.
        onnx_file: Path of the ONNX file relative to the registry.
        pooling: Global pooling baked into the graph.
        weights_label: Where the weights came from (for the description).
        size: Input height and width.
        decode: ``fast`` or ``exact`` (decode as torchvision's ``ImageFolder``
            loader does: every pixel, EXIF tag ignored).
    """
    spec = ARCHS[arch]
    extra: dict[str, object] = {"interpolation": spec.interpolation}
    if spec.mean is not None:
        extra["mean"] = spec.mean
    if spec.std is not None:
        extra["std"] = spec.std
    # Keep torchvision's 224/256 crop ratio at other sizes.
    resize_shorter = 256 if size == 224 else round(size * 256 / 224)
    return ModelEntry.from_preset(
        spec.preset,
        name=name,
        path=onnx_file,
        dim=spec.dim,
        description=(
            f"{spec.description}, {weights_label}, classifier removed, global {pooling} pool "
            f"(exported from PyTorch by lookalike-export)"
        ),
        height=size,
        width=size,
        resize_shorter=resize_shorter,
        pooling="none",  # pooling is inside the graph: the output is already (N, dim)
        decode=decode,
        **extra,
    )


def export_onnx(net: object, path: Path, size: int) -> None:
    """Exports ``net`` to ``path`` (single file, fp32, dynamic batch) and checks it.

    Raises:
        ModelLoadError: The exporter or the ONNX checker failed.
    """
    import onnx
    import torch

    # The exporter warns once per torchvision op it cannot register; we use none.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    x = torch.zeros(2, 3, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter is chatty about internal deprecations
        try:
            torch.onnx.export(
                net,  # type: ignore[arg-type]
                (x,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=OPSET,
                dynamo=True,
                external_data=False,  # one self-contained file; all our models are < 2 GB
                dynamic_shapes={"x": {0: batch}},
                verbose=False,
            )
        except Exception as exc:
            raise ModelLoadError(f"{path.stem}: torch.onnx.export failed: {exc}") from exc
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ModelLoadError(f"{path.stem}: exported graph fails onnx.checker: {exc}") from exc


def stamp_metadata(path: Path, props: dict[str, str]) -> None:
    """Records provenance in the ONNX file's ``metadata_props``."""
    import onnx

    model = onnx.load(str(path))
    for k, v in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.save(model, str(path))


def export_torch(
    arch: str,
    *,
    weights: Path | None,
    out_dir: Path,
    name: str | None = None,
    pooling: Pooling | None = None,
    photos: list[Path] | None = None,
    size: int = 224,
    seed: int = 0,
    atol: float = 1e-4,
    decode: str = "fast",
) -> ExportResult:
    """Exports one architecture to ``out_dir/<name>.onnx`` and checks parity.

    Args:
        arch: One of :data:`.archs.ARCHS`.
        weights: A torchvision-format ``.pth`` (or EfficientNet-Lite's), or
            None for seeded random weights.
        out_dir: Output folder.
        name: Model name (file stem and registry name); defaults to ``arch``.
        pooling: Global pooling; defaults to the architecture's.
        photos: Real photos for the parity check; None or empty skips it.
        size: Input height and width.
        seed: Seed of random weights.
        atol: Parity tolerance.
        decode: The entry's decode preset, ``fast`` or ``exact``. The parity
            photos go through the server's preprocessing with it.

    Returns:
        The result, with the registry entry ready to write.

    Raises:
        ModelLoadError: One line naming the model and what went wrong.
    """
    import torch

    t0 = time.perf_counter()
    name = name or arch
    spec = ARCHS.get(arch)
    if spec is None:
        raise ModelLoadError(f"{name}: unknown architecture {arch!r} (known: {', '.join(sorted(ARCHS))})")
    pooling = pooling or spec.default_pooling
    net, _ = build_feature_net(arch, weights, pooling, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{name}.onnx"
    # Write next to the target and rename, so a failed export never leaves a
    # half-written file where the server would pick it up.
    fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_onnx(net, tmp, size)
        weights_label = f"random weights (seed {seed}; TEST ONLY, embeddings are meaningless)"
        if weights is not None:
            weights_label = f"weights {weights.name} (sha256 {file_sha256(weights)[:16]})"
        stamp_metadata(
            tmp,
            {
                "lookalike.arch": arch,
                "lookalike.pooling": pooling,
                "lookalike.weights": weights.name if weights is not None else f"random:seed={seed}",
                "lookalike.exporter": f"torch {torch.__version__} dynamo opset {OPSET}",
            },
        )
        entry = torch_entry(arch, name, final.name, pooling, weights_label, size, decode)
        report = None
        if photos:
            batch = photo_batch(photos, entry)

            def framework(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return net(torch.from_numpy(x)).numpy()

            report = check_parity(tmp, framework, batch, name=name, atol=atol)
            log.info("%s: parity %s", name, report)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the server may run as another user
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    entry.sha256 = file_sha256(final)
    return ExportResult(final, entry, report, time.perf_counter() - t0)
