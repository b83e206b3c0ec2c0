"""uint8-input graphs: the model's normalisation folded into its ONNX graph.

:func:`prepend_uint8_input` puts in front of a float model what the server's
:func:`~lookalike_server.preprocess.normalise` does on the host::

    input: uint8 (N, H, W, 3) RGB
      → [Transpose to NCHW if the model is NCHW: on uint8, a quarter of the bytes]
      → Cast(float) → [Gather channels 2,1,0 if BGR] → Mul(scale / std)
      → Sub(mean / std) → the model

The multiply and subtract use the very float32 constants the host uses
(:attr:`PreprocessSpec.affine`), in the same order, so the two paths agree to
the last bit or nearly. Resizing and cropping stay on the host; what moves to
the model's device is the cast, the arithmetic and the transpose, and the host
copies a quarter of the bytes (uint8, not float32) to it.

:func:`wrap_uint8` writes such a graph beside a float one, with a registry
entry that says ``input_dtype = "uint8"`` (the server then feeds uint8 pixels)
and a parity check on real photos: the float path against the uint8 path,
both preprocessed by the server's own code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lookalike_export.parity import ParityReport, compare, photo_batch
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.preprocess_spec import PreprocessSpec
from lookalike_server.registry import ModelEntry, file_sha256

#: Prefix of every tensor and node this module adds (never clashes with an exporter's names).
PREFIX = "lookalike_u8/"
#: Smallest cosine between the float and uint8 paths that :func:`wrap_uint8` accepts.
MIN_COSINE = 0.99999
SUFFIX = "u8"


def prepend_uint8_input(model: Any, spec: PreprocessSpec, input_name: str) -> Any:
    """Returns ``model`` taking uint8 RGB pixels, with ``spec``'s normalisation in the graph.

    Args:
        model: An ``onnx.ModelProto`` whose input ``input_name`` is the float
            tensor the host would make with ``spec`` (batch axis first).
        spec: The model's preprocessing, ``input_dtype = "float32"``.
        input_name: The input to replace; the new uint8 input keeps its name.

    Returns:
        A new ModelProto (``model`` is not changed).

    Raises:
        ConfigError: The input is missing, not 4-D float, or already uint8.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if spec.input_dtype != "float32":
        raise ConfigError(f"input {input_name!r}: the preprocessing says input_dtype = {spec.input_dtype!r} already")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    old = next((i for i in graph.input if i.name == input_name), None)
    if old is None:
        raise ConfigError(f"the graph has no input {input_name!r}; it has {[i.name for i in graph.input]}")
    ttype = old.type.tensor_type
    if ttype.elem_type != TensorProto.FLOAT or len(ttype.shape.dim) != 4:
        raise ConfigError(
            f"input {input_name!r} is {TensorProto.DataType.Name(ttype.elem_type)} with "
            f"{len(ttype.shape.dim)} axes; a 4-D float input is needed"
        )
    batch = ttype.shape.dim[0]
    batch_dim: str | int | None = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else None)

    normalised = PREFIX + "normalised"
    _rename_input(graph, input_name, normalised)
    # NCHW models: transpose the uint8 pixels first (a quarter of the bytes a
    # float transpose moves), then work per channel on axis 1.
    nchw = spec.layout == "NCHW"
    channel_shape = (3, 1, 1) if nchw else (3,)
    a, b = spec.affine
    initialisers = [
        numpy_helper.from_array(np.asarray(a, dtype=np.float32).reshape(channel_shape), PREFIX + "scale_over_std"),
        numpy_helper.from_array(np.asarray(b, dtype=np.float32).reshape(channel_shape), PREFIX + "mean_over_std"),
    ]
    nodes = []
    x = input_name
    if nchw:
        nodes.append(helper.make_node("Transpose", [x], [PREFIX + "nchw"], name=PREFIX + "nchw", perm=[0, 3, 1, 2]))
        x = PREFIX + "nchw"
    nodes.append(helper.make_node("Cast", [x], [PREFIX + "float"], name=PREFIX + "cast", to=TensorProto.FLOAT))
    x = PREFIX + "float"
    if spec.color_order == "BGR":
        initialisers.append(numpy_helper.from_array(np.array([2, 1, 0], dtype=np.int64), PREFIX + "bgr_index"))
        axis = 1 if nchw else 3
        nodes.append(
            helper.make_node("Gather", [x, PREFIX + "bgr_index"], [PREFIX + "bgr"], name=PREFIX + "bgr", axis=axis)
        )
        x = PREFIX + "bgr"
    nodes.append(helper.make_node("Mul", [x, PREFIX + "scale_over_std"], [PREFIX + "scaled"], name=PREFIX + "scale"))
    nodes.append(
        helper.make_node("Sub", [PREFIX + "scaled", PREFIX + "mean_over_std"], [normalised], name=PREFIX + "mean")
    )

    new_input = helper.make_tensor_value_info(input_name, TensorProto.UINT8, [batch_dim, spec.height, spec.width, 3])
    position = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(position, new_input)
    graph.initializer.extend(initialisers)
    # Nodes must stay topologically sorted: the new ones first.
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    onnx.checker.check_model(out)
    return out


def _rename_input(graph: Any, old: str, new: str) -> None:
    """Points every use of tensor ``old`` (subgraphs included) at ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_input(sub, old, new)
    for output in graph.output:
        if output.name == old:
            raise ConfigError(f"input {old!r} is also a graph output; cannot wrap it")


@dataclass(frozen=True)
class Uint8Result:
    """A written uint8-input graph.

    Attributes:
        path: The new ONNX file.
        entry: Its registry entry (``input_dtype = "uint8"``).
        parity: Float path vs uint8 path on real photos (None without photos).
        seconds: Wall time, parity included.
    """

    path: Path
    entry: ModelEntry
    parity: ParityReport | None
    seconds: float

    def summary(self) -> str:
        """One line for the CLI."""
        check = f"float vs uint8 path: {self.parity}" if self.parity else "parity skipped (no photos)"
        return f"{self.entry.name}: wrote {self.path} (sha256 {self.entry.sha256}); {check}"


def wrap_uint8(
    src: Path,
    entry: ModelEntry,
    *,
    out: Path | None = None,
    photos: Sequence[Path] = (),
    min_cosine: float = MIN_COSINE,
) -> Uint8Result:
    """Writes the uint8-input variant of a float model, checked on real photos.

    Args:
        src: The float ONNX file.
        entry: Its registry entry (preprocessing and tensor names).
        out: Output file (default ``<stem>_u8.onnx`` beside ``src``).
        photos: Real photos: each is preprocessed by the server's code for
            both entries, and both graphs' outputs are compared.
        min_cosine: Smallest acceptable cosine between the two paths.

    Returns:
        The result; its entry is named ``<name>_u8`` with the path written
        the way ``entry.path`` is (relative to its registry) unless ``out``
        is given.

    Raises:
        ConfigError: The graph cannot be wrapped (see :func:`prepend_uint8_input`).
        ModelLoadError: The file is missing, or the two paths disagree.
    """
    import onnx

    started = time.perf_counter()
    if not src.is_file():
        raise ModelLoadError(f"{entry.name}: ONNX file {src} does not exist")
    input_name = entry.input or "input"
    try:
        wrapped = prepend_uint8_input(onnx.load(str(src)), entry.preprocess_spec(), input_name)
    except ConfigError as exc:
        raise ConfigError(f"{entry.name}: {exc}") from None
    dst = out or src.with_name(f"{src.stem}_{SUFFIX}.onnx")
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(wrapped, str(tmp))
    variant = replace(
        entry,
        name=f"{entry.name}_{SUFFIX}",
        path=str(Path(entry.path).with_name(dst.name)) if out is None else str(dst.resolve()),
        sha256=file_sha256(tmp),
        description=f"{entry.description}; uint8 input, normalisation in the graph (lookalike-export uint8)",
        input_dtype="uint8",
        batching=dict(entry.batching),
    )
    report = None
    try:
        if photos:
            report = compare(
                _embed(src, photo_batch(photos, entry), entry), _embed(tmp, photo_batch(photos, variant), entry)
            )
            if report.cosine_min < min_cosine:
                raise ModelLoadError(
                    f"{entry.name}: the uint8 graph's output differs from the float path's: {report} "
                    f"(min cosine must be ≥ {min_cosine})"
                )
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    dst.chmod(0o644)
    return Uint8Result(dst, variant, report, time.perf_counter() - started)


def _embed(path: Path, batch: np.ndarray, entry: ModelEntry, chunk: int = 16) -> np.ndarray:
    """Raw outputs of ``path`` on ``batch`` (CPU), flattened per row."""
    from lookalike_export.parity import onnx_session

    sess: Any = onnx_session(path)
    output = entry.output or sess.get_outputs()[0].name
    outs = [sess.run([output], {entry.input or "input": batch[i : i + chunk]})[0] for i in range(0, len(batch), chunk)]
    return np.concatenate(outs).reshape(len(batch), -1)
