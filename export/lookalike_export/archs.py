"""The architectures the exporter knows, and the feature networks it builds from them.

:data:`ARCHS` says, per architecture, what the registry entry needs (width,
preprocessing, pooling) and which state-dict keys are the classifier.
:func:`build_feature_net` builds the network (:mod:`.torchvision_nets`, or
EfficientNet-Lite0 from ``efficientnet-lite-pytorch``), loads the weights
(:mod:`.weights`), and wraps only the convolutional trunk plus a global
pooling, so the exported ONNX graph carries no classifier weights.

EfficientNet-Lite's ``set_swish()`` replaces the ReLU6 activations the Lite
weights were trained with by Swish, which silently ruins the embeddings, so it
is never called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lookalike_export.torchvision_nets import VGG16, MobileNetV2, ResNet50
from lookalike_export.weights import load_weights, read_state_dict
from lookalike_server.errors import ModelLoadError

__all__ = ["ARCHS", "ArchSpec", "FeatureNet", "GlobalPool", "Pooling", "build_feature_net"]

Pooling = Literal["avg", "max"]


# ---------------------------------------------------------------------------
# Feature networks: trunk + global pooling → (N, dim)
# ---------------------------------------------------------------------------


class GlobalPool(nn.Module):
    """Global average or max pooling over H, W, then flatten to (N, C)."""

    def __init__(self, mode: Pooling) -> None:
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f"pooling must be 'avg' or 'max', got {mode!r}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        """Pools a (N, C, H, W) map to (N, C)."""
        # amax/mean over explicit axes export to ReduceMax/ReduceMean: cleaner for
        # ONNX Runtime than an adaptive pool followed by a reshape.
        if self.mode == "max":
            return torch.amax(x, dim=(2, 3))
        return torch.mean(x, dim=(2, 3))


class FeatureNet(nn.Module):
    """A trunk followed by a global pooling; what is exported to ONNX.

    Args:
        trunk: Maps (N, 3, H, W) to a (N, C, h, w) feature map.
        pool: The global pooling.
        input_transform: Optional affine fixup applied first (EfficientNet-Lite's
            ``(x - 0.5) / 0.5`` is *not* folded in here; the registry entry
            carries it as mean/std so the server does it, like for the others).
    """

    def __init__(self, trunk: nn.Module, pool: GlobalPool) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        """Returns the (N, dim) embedding (not L2-normalised; the server does that)."""
        return self.pool(self.trunk(x))


class _EfficientNetTrunk(nn.Module):
    """Adapts ``EfficientNet.extract_features`` to a plain module call."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        """Returns the 1280-channel head feature map."""
        return self.net.extract_features(x)


@dataclass(frozen=True)
class ArchSpec:
    """What the exporter needs to know about one architecture.

    Attributes:
        name: Architecture name used on the command line.
        dim: Embedding width.
        default_pooling: Pooling used when none is asked for.
        preset: Registry preprocessing preset the torch weights expect.
        mean: Per-channel mean (after scale to [0, 1]) when not the preset's.
        std: Per-channel std when not the preset's.
        interpolation: Resize filter the weights were evaluated with.
        description: Human text for the registry entry.
        head_prefixes: State-dict key prefixes of the classifier, which feature
            export does not use (and which a headless state dict may omit).
    """

    name: str
    dim: int
    default_pooling: Pooling
    preset: str
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    interpolation: str
    description: str
    head_prefixes: tuple[str, ...]


ARCHS: dict[str, ArchSpec] = {
    "mobilenet_v2": ArchSpec(
        "mobilenet_v2", 1280, "avg", "imagenet", None, None, "bilinear", "MobileNetV2", ("classifier.",)
    ),
    "resnet50": ArchSpec("resnet50", 2048, "avg", "imagenet", None, None, "bilinear", "ResNet50", ("fc.",)),
    "vgg16": ArchSpec("vgg16", 512, "max", "imagenet", None, None, "bilinear", "VGG16", ("classifier.",)),
    # EfficientNet-Lite was trained on (x - 127.5) / 127.5 in RGB; expressed on
    # [0, 1]-scaled pixels that is mean 0.5, std 0.5. Its TF evaluation crops
    # 224/256 of the image and resizes with bicubic.
    "efficientnet_lite0": ArchSpec(
        "efficientnet_lite0",
        1280,
        "avg",
        "imagenet",
        (0.5, 0.5, 0.5),
        (0.5, 0.5, 0.5),
        "bicubic",
        "EfficientNet-Lite0",
        ("_fc.",),
    ),
}


def build_feature_net(
    arch: str, weights: Path | None, pooling: Pooling | None = None, seed: int = 0
) -> tuple[FeatureNet, ArchSpec]:
    """Builds an eval-mode feature network for ``arch``.

    Args:
        arch: One of :data:`ARCHS`.
        weights: A ``.pth`` state dict, or None for random weights (seeded,
            with the architecture's own initialisation).
        pooling: Global pooling; None takes the architecture's default.
        seed: Seed for random weights.

    Returns:
        The network (eval mode, no grad) and its spec.

    Raises:
        ModelLoadError: Unknown architecture, unreadable or mismatched weights.
    """
    spec = ARCHS.get(arch)
    if spec is None:
        raise ModelLoadError(f"{arch}: unknown architecture (known: {', '.join(sorted(ARCHS))})")
    pool = GlobalPool(pooling or spec.default_pooling)
    torch.manual_seed(seed)
    state = read_state_dict(weights, arch) if weights is not None else None
    builders: dict[str, Callable[[], tuple[nn.Module, nn.Module]]] = {
        "mobilenet_v2": lambda: _with_trunk(MobileNetV2(), lambda m: m.features),
        "resnet50": lambda: _with_trunk(ResNet50(), lambda m: m.trunk()),
        # Skip the classifier unless the file has it (strict loading wants it then).
        "vgg16": lambda: _with_trunk(
            VGG16(with_classifier=state is not None and any(k.startswith("classifier.") for k in state)),
            lambda m: m.features,
        ),
        "efficientnet_lite0": lambda: _efficientnet_lite0(),
    }
    model, trunk = builders[arch]()
    if state is not None:
        load_weights(model, state, arch, spec.head_prefixes)
    net = FeatureNet(trunk, pool).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, spec


def _with_trunk(model: nn.Module, get: Callable[[nn.Module], nn.Module]) -> tuple[nn.Module, nn.Module]:
    return model, get(model)


def _efficientnet_lite0() -> tuple[nn.Module, nn.Module]:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ModelLoadError(
            "efficientnet_lite0: needs the 'efficientnet-lite-pytorch' package (pip install 'lookalike[export]')"
        ) from exc
    # from_name (not from_pretrained): that one prints and calls torch.load
    # without weights_only; we load the state dict ourselves.
    net = EfficientNet.from_name("efficientnet-lite0")
    return net, _EfficientNetTrunk(net)
