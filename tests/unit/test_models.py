"""Model registry validation and ONNX session checks on real and broken files."""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookalike_server.config import BatchingConfig
from lookalike_server.errors import ConfigError, ModelLoadError
from lookalike_server.models import OnnxModel, bucket_for, keep_wide_session, l2_normalise, pool_features
from lookalike_server.registry_reader import load_registry

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "models" / "models.toml"
CPU = ("CPUExecutionProvider",)


def write_registry(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "models.toml"
    p.write_text(body)
    return p


def entry(**over: object) -> str:
    base = {
        "name": '"m"',
        "path": f'"{ROOT / "models" / "mobilenet_v2.onnx"}"',
        "dim": "1280",
        "preset": '"imagenet"',
        "input": '"input"',
        "output": '"embedding"',
    }
    base.update({k: str(v) for k, v in over.items()})
    return "[[models]]\n" + "\n".join(f"{k} = {v}" for k, v in base.items() if v != "DROP") + "\n"


def test_shipped_registry_loads():
    specs = load_registry(REGISTRY, BatchingConfig())
    names = [s.name for s in specs]
    assert {"mobilenet_v2", "efficientnet_lite0"} <= set(names)
    for s in specs:
        assert s.path.is_file() and s.dim > 0 and s.preprocess.shape[0] in (3, s.preprocess.height)


def test_preset_fills_preprocessing_and_explicit_fields_win(tmp_path):
    reg = write_registry(tmp_path, entry(preset='"caffe"', layout='"NCHW"'))
    (spec,) = load_registry(reg, BatchingConfig())
    assert spec.preprocess.color_order == "BGR" and spec.preprocess.layout == "NCHW"
    assert spec.preprocess.mean == (103.939, 116.779, 123.68)


def test_per_model_batching_override(tmp_path):
    reg = write_registry(tmp_path, entry() + "[models.batching]\nmax_batch_size = 4\n")
    (spec,) = load_registry(reg, BatchingConfig())
    assert spec.batching.max_batch_size == 4 and spec.batching.resolved_buckets() == (1, 2, 4)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"name": '"Bad Name"'}, "name must match"),
        ({"dim": "DROP"}, "missing required key 'dim'"),
        ({"preset": '"keras"'}, "unknown preset"),
        ({"pooling": '"sum"'}, "pooling"),
        ({"layout": '"CHW"'}, "layout"),
        ({"colour": '"RGB"'}, "unknown key"),
    ],
)
def test_bad_entries_name_the_model_and_problem(tmp_path, over, match):
    reg = write_registry(tmp_path, entry(**over))
    with pytest.raises(ConfigError, match=match):
        load_registry(reg, BatchingConfig())


def test_duplicate_and_unknown_only(tmp_path):
    with pytest.raises(ConfigError, match="duplicate"):
        load_registry(write_registry(tmp_path, entry() + entry()), BatchingConfig())
    with pytest.raises(ConfigError, match="not in"):
        load_registry(REGISTRY, BatchingConfig(), only=("nope",))


def test_missing_registry_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry(tmp_path / "none.toml", BatchingConfig())


def load_one(tmp_path: Path, **over: object) -> OnnxModel:
    (spec,) = load_registry(write_registry(tmp_path, entry(**over)), BatchingConfig(max_batch_size=2))
    return OnnxModel(spec, CPU)


def test_real_model_loads_warms_and_reports_cpu(tmp_path):
    model = load_one(tmp_path)
    assert model.providers == ["CPUExecutionProvider"]
    assert model.buckets == (1, 2)
    model.warmup()
    out = model.embed_batch([np.zeros((3, 224, 224), np.float32)] * 3)
    assert len(out) == 3 and all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in out)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_one(tmp_path, path=f'"{tmp_path / "nope.onnx"}"')


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_one(tmp_path, path=f'"{bad}"')


def test_checksum_mismatch(tmp_path):
    with pytest.raises(ModelLoadError, match="sha256"):
        load_one(tmp_path, sha256='"' + "0" * 64 + '"')


def test_dimension_disagreement_is_caught_at_warmup(tmp_path):
    model = load_one(tmp_path, dim="512")
    with pytest.raises(ModelLoadError, match="dim = 512"):
        model.warmup()


def test_layout_disagreement(tmp_path):
    with pytest.raises(ModelLoadError, match="layout"):
        load_one(tmp_path, layout='"NHWC"')


def test_wrong_input_name(tmp_path):
    with pytest.raises(ModelLoadError, match="no input named 'pixels'"):
        load_one(tmp_path, input='"pixels"')


def test_optional_model_is_skipped_and_others_load(tmp_path):
    from lookalike_server.app import load_models
    from lookalike_server.config_loading import load_config

    shutil.copy(ROOT / "models" / "mobilenet_v2.onnx", tmp_path / "good.onnx")
    (tmp_path / "broken.onnx").write_bytes(b"junk")
    body = entry(name='"good"', path='"good.onnx"') + entry(name='"broken"', path='"broken.onnx"', optional="true")
    reg = write_registry(tmp_path, body)
    cfg = load_config(
        ["--models-registry", str(reg), "--batching-max-batch-size", "1", "--models-providers", "CPUExecutionProvider"],
        {},
    )
    models = load_models(cfg)
    assert list(models) == ["good"]


def test_pooling_and_normalisation():
    fmap = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    np.testing.assert_array_equal(pool_features(fmap, "max", "NCHW"), fmap.max(axis=(2, 3)))
    np.testing.assert_allclose(pool_features(fmap, "avg", "NCHW"), fmap.mean(axis=(2, 3)))
    nhwc = fmap.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(pool_features(nhwc, "max", "NHWC"), fmap.max(axis=(2, 3)))
    v = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(v, [[0.6, 0.8], [0.0, 0.0]])


def test_session_per_bucket_gives_each_bucket_its_own_session(tmp_path):
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=4))
    shared = OnnxModel(spec, CPU)  # auto: one session on the CPU
    assert not shared.session_per_bucket and len({id(s) for s in shared.sessions.values()}) == 1
    split = OnnxModel(spec, CPU, session_per_bucket="on")
    assert split.session_per_bucket and len({id(s) for s in split.sessions.values()}) == 3
    x = [np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32) for _ in range(3)]
    np.testing.assert_allclose(np.stack(split.embed_batch(x)), np.stack(shared.embed_batch(x)), atol=1e-5)


@pytest.mark.parametrize(("n", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 9)])
def test_bucket_for(n: int, bucket: int) -> None:
    assert bucket_for(n, (1, 2, 4, 8)) == bucket


def test_every_key_the_exporter_writes_the_server_reads(tmp_path: Path) -> None:
    """One schema (lookalike_server.registry): the writer's output is the reader's input."""
    from lookalike_server.registry import ENTRY_KEYS, ModelEntry

    entry = ModelEntry.from_preset(
        "caffe",
        name="m",
        path=str(ROOT / "models" / "mobilenet_v2.onnx"),
        dim=1280,
        description="round trip",
        output_layout="NCHW",
        batching={"max_batch_size": 8},
    )
    text = entry.to_toml()
    assert {line.split(" = ")[0] for line in text.splitlines() if " = " in line} >= ENTRY_KEYS - {"batching"}
    (spec,) = load_registry(write_registry(tmp_path, text), BatchingConfig())
    assert (spec.name, spec.dim, spec.description) == ("m", 1280, "round trip")
    assert spec.preprocess.color_order == "BGR" and spec.preprocess.layout == "NHWC"
    assert spec.preprocess.mean == entry.mean and spec.preprocess.resize_shorter == 0
    assert spec.batching.max_batch_size == 8


def test_intra_op_spinning_is_off_unless_asked(tmp_path: Path) -> None:
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=2))
    key = "session.intra_op.allow_spinning"
    assert OnnxModel(spec, CPU).session.get_session_options().get_session_config_entry(key) == "0"
    assert OnnxModel(spec, CPU, spin_wait=True).session.get_session_options().get_session_config_entry(key) == "1"


def test_wide_session_spins_during_a_run_and_stops_after_it(tmp_path: Path) -> None:
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=1))
    model = OnnxModel(spec, CPU, intra_op_threads=1, wide_intra_op_threads=2)

    def entries(session: object) -> tuple[str, str]:
        opts = session.get_session_options()  # type: ignore[attr-defined]
        try:
            stop = opts.get_session_config_entry("session.force_spinning_stop")
        except RuntimeError:  # ORT's answer for a key never set
            stop = ""
        return opts.get_session_config_entry("session.intra_op.allow_spinning"), stop

    assert entries(model.wide_session) == ("1", "1")
    assert entries(model.session) == ("0", "")  # the narrow one as before
    quiet = OnnxModel(spec, CPU, intra_op_threads=1, wide_intra_op_threads=2, wide_spin_wait=False)
    assert entries(quiet.wide_session) == ("0", "")


def test_warmup_measures_every_bucket_and_applies_a_plan(tmp_path):
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(auto_max_batch_size=4))
    model = OnnxModel(spec, CPU, intra_op_threads=1, inter_op_threads=1)
    assert model.plan.costs_ms == {} and "not measured" in model.plan.reason
    model.warmup(timed_runs=1)
    plan = model.plan
    assert set(plan.costs_ms) == {1, 2, 4} and all(c > 0 for c in plan.costs_ms.values())
    # Whatever this machine measured, the model runs the plan it chose.
    assert plan.buckets[0] == 1 and set(plan.buckets) <= {1, 2, 4}
    assert model.buckets == plan.buckets and model.max_batch_size == plan.max_batch_size == max(plan.buckets)
    assert set(model.sessions) == set(plan.buckets)
    assert plan.max_delay_ms == 0.0 if plan.max_batch_size == 1 else 0.0 < plan.max_delay_ms <= 2.0
    x = [np.zeros((3, 224, 224), np.float32)] * 3
    assert len(model.embed_batch(x)) == 3  # 3 pads to a kept bucket, or runs as is past the largest


def test_warmup_times_short_buckets_more_often_than_long_ones(tmp_path, monkeypatch):
    from lookalike_server import models as models_mod

    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(auto_max_batch_size=4))
    model = OnnxModel(spec, CPU, intra_op_threads=1, inter_op_threads=1)
    runs: dict[int, int] = {}
    real = model._infer

    def infer(x, n, wide=False):
        runs[n] = runs.get(n, 0) + 1
        if n == 4:
            time.sleep(0.04)  # a long bucket: 3 runs pass MIN_TIMED_MS
        return real(x, n, wide)

    monkeypatch.setattr(model, "_infer", infer)
    model.warmup(timed_runs=3)
    # One untimed run each, then: the long bucket its 3 timed runs, the short
    # ones more, until MIN_TIMED_MS or MAX_TIMED_RUNS.
    assert runs[4] == 1 + 3
    assert 1 + models_mod.MAX_TIMED_RUNS >= runs[1] >= runs[2] > 1 + 3


def test_registry_batching_overrides_win_over_the_measurements(tmp_path):
    body = entry() + "[models.batching]\nmax_batch_size = 4\nmax_delay_ms = 7.5\n"
    (spec,) = load_registry(write_registry(tmp_path, body), BatchingConfig())
    model = OnnxModel(spec, CPU, intra_op_threads=1)
    model.warmup(timed_runs=1)
    assert set(model.plan.costs_ms) == {1, 2, 4}  # still measured and reported
    assert model.plan.buckets == (1, 2, 4) and model.max_batch_size == 4
    assert model.plan.max_delay_ms == 7.5 and model.plan.items_to_take(3) == 3
    assert "set by config" in model.plan.reason


def test_load_models_logs_the_costs_the_choice_and_applies_the_budget(tmp_path, caplog):
    import logging

    from lookalike_server.app import load_models
    from lookalike_server.config_loading import load_config
    from lookalike_server.thread_budget import thread_budget

    shutil.copy(ROOT / "models" / "mobilenet_v2.onnx", tmp_path / "m.onnx")
    reg = write_registry(tmp_path, entry(name='"m"', path='"m.onnx"'))
    cfg = load_config(
        [
            "--models-registry", str(reg), "--batching-auto-max-batch-size", "2",
            "--models-providers", "CPUExecutionProvider",
        ],
        {},
    )  # fmt: skip
    budget = thread_budget(2)
    with caplog.at_level(logging.INFO, logger="lookalike_server.app"):
        (model,) = load_models(cfg, budget).values()
    assert model.intra_op_threads == 1 and model.inter_op_threads == 1
    # The budget applies as given, except for the wide session the warm-up judged.
    assert replace(model.threads, wide_intra_op_threads=2, reason=budget.reason) == budget
    assert model.threads.wide_intra_op_threads == model.wide_intra_op_threads
    assert model.threads.reason == f"{budget.reason}; wide session {model.wide_reason}"
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model m ")]
    assert "ms/image by bucket 1:" in line and f"max batch {model.max_batch_size}" in line
    assert model.plan.reason in line


def test_io_binding_gives_the_plain_runs_vectors_and_reuses_its_buffers(tmp_path):
    """The CPU provider runs the IO-binding path too; its vectors are the plain run's, and buffers are reused."""
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=4))
    plain = OnnxModel(spec, CPU, intra_op_threads=1)
    bound = OnnxModel(spec, CPU, intra_op_threads=1, io_binding=True)
    assert not plain._runners and len(bound._runners) == 1  # the CPU shares one session between buckets
    (runner,) = bound._runners.values()
    assert runner.device_type == "cpu"
    rng = np.random.default_rng(1)
    for n in (1, 3, 3, 4, 1):  # buckets 1, 4, 4, 4, 1
        x = [rng.standard_normal((3, 224, 224)).astype(np.float32) for _ in range(n)]
        got = np.stack(bound.embed_batch(x))
        np.testing.assert_allclose(got, np.stack(plain.embed_batch(x)), rtol=0, atol=1e-6)
    assert runner.buffers_made == 2  # one binding per batch shape seen (1 and 4), reused afterwards


def test_io_binding_runs_safely_from_several_threads(tmp_path):
    """Batch workers may run one model's batches side by side: each run gets its own buffers."""
    from concurrent.futures import ThreadPoolExecutor

    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(max_batch_size=2))
    model = OnnxModel(spec, CPU, intra_op_threads=1, io_binding=True)
    rng = np.random.default_rng(2)
    inputs = [[rng.standard_normal((3, 224, 224)).astype(np.float32)] * 2 for _ in range(6)]
    plain = OnnxModel(spec, CPU, intra_op_threads=1)
    want = [np.stack(plain.embed_batch(x)) for x in inputs]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda x: np.stack(model.embed_batch(x)), inputs))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-6)
    (runner,) = model._runners.values()
    assert 1 <= runner.buffers_made <= 3  # never more bindings than runs at once


def test_wide_session_runs_alone_batches_with_the_same_results(tmp_path: Path) -> None:
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(auto_max_batch_size=2))
    model = OnnxModel(spec, CPU, intra_op_threads=1, wide_intra_op_threads=2, wide_session="on")
    model.warmup(timed_runs=1)
    # "on": kept whatever the measurement, which the reason still reports.
    assert model.wide_session is not None and model.wide_intra_op_threads == 2
    assert model.wide_reason.startswith("kept (batch 1: ") and "on 2 intra-op threads" in model.wide_reason
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal(spec.preprocess.shape).astype(np.float32) for _ in range(2)]
    np.testing.assert_allclose(model.embed_batch_alone(tensors), model.embed_batch(tensors), atol=1e-5)


def test_wide_session_in_auto_is_kept_unless_the_narrow_one_is_much_faster(tmp_path: Path) -> None:
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(auto_max_batch_size=1))
    model = OnnxModel(spec, CPU, intra_op_threads=1, wide_intra_op_threads=2)
    assert model.wide_reason == "not measured (warm-up off)"
    model.warmup(timed_runs=1)
    # Which one depends on this machine; the decision and its figures must agree.
    kept = model.wide_reason.startswith("kept (")
    assert kept == (model.wide_session is not None) == (model.wide_intra_op_threads == 2)
    if not kept:
        assert model.wide_reason.startswith("dropped: the narrow session 25% faster (batch 1: ")
        tensors = [np.zeros(spec.preprocess.shape, dtype=np.float32)]
        # Without a wide session, a lone batch runs on the narrow one.
        np.testing.assert_allclose(model.embed_batch_alone(tensors), model.embed_batch(tensors))


@pytest.mark.parametrize(
    ("wide_ms", "narrow_ms", "keep"),
    [
        (5.85, 5.67, True),  # the near tie a warm-up once dropped it on (+6.7 ms at c=1 after)
        (6.0, 5.0, True),  # narrow 17% faster at warm-up: not a reason
        (4.4, 6.0, True),
        (8.3, 4.3, False),  # a neighbour holding the other core stalls a spinning wide run
    ],
)
def test_warm_up_drops_the_wide_session_only_for_a_much_faster_narrow_one(
    wide_ms: float, narrow_ms: float, keep: bool
) -> None:
    assert keep_wide_session(narrow_ms, wide_ms) is keep


def test_no_wide_session_unless_asked(tmp_path: Path) -> None:
    (spec,) = load_registry(write_registry(tmp_path, entry()), BatchingConfig(auto_max_batch_size=1))
    model = OnnxModel(spec, CPU, intra_op_threads=1)
    model.warmup(timed_runs=1)
    assert model.wide_session is None and model.wide_intra_op_threads == 0 and model.wide_reason == ""
