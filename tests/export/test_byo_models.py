"""Bring your own model: random-weight ResNet50 and VGG16 exported, registered and served.

The same compute as the ImageNet models the original system used (which
cannot be downloaded here); the export path, registry entry and serving path
are exactly what a user with the weights runs.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from lookalike.v1 import lookalike_pb2 as pb
from lookalike.v1 import lookalike_pb2_grpc as pb_grpc
from lookalike_export.cli import main as export_main
from lookalike_server.config import BatchingConfig, ModelsConfig
from tests.conftest import start_server

pytestmark = [pytest.mark.export, pytest.mark.slow]


@pytest.fixture(scope="module")
def byo_server(tmp_path_factory):
    out = tmp_path_factory.mktemp("byo")
    registry = out / "models.toml"
    for arch in ("resnet50", "vgg16"):
        rc = export_main(
            ["torch", arch, "--random", "--pooling", "max", "--out", str(out), "--registry", str(registry)]
        )
        assert rc == 0, arch
    live = start_server(
        stores=False,
        models=ModelsConfig(registry=str(registry)),
        batching=BatchingConfig(max_batch_size=4),
    )
    yield live
    live.server.stop(0)


def test_server_serves_exported_resnet50_and_vgg16(byo_server, photos):
    stub = pb_grpc.LookalikeStub(grpc.insecure_channel(byo_server.target))
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert {n: m.dim for n, m in models.items()} == {"resnet50": 2048, "vgg16": 512}
    for name, dim in (("resnet50", 2048), ("vgg16", 512)):
        assert models[name].preprocessing.preset == "imagenet" and models[name].preprocessing.pooling in ("none", "max")
        resp = stub.Embed(pb.EmbedRequest(model=name, images=[p.read_bytes() for p in photos[:2]]), timeout=120)
        vectors = np.array([e.values for e in resp.embeddings])
        assert vectors.shape == (2, dim)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
