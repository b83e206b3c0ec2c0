"""Embeddings built from their packed wire form carry exactly the float32 values they were given."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike.v1 import lookalike_pb2 as pb
from lookalike_server.domain import Timing
from lookalike_server.proto_convert import embed_response, embedding_pb


@pytest.mark.parametrize("dim", [1, 31, 32, 33, 512, 1280, 2048, 40_000])
def test_embedding_values_are_the_rows_bits_whatever_the_length(dim: int) -> None:
    # 31-33 floats straddle the length's one- to two-byte varint (128 bytes);
    # 40,000 floats need three bytes.
    rng = np.random.default_rng(dim)
    row = rng.standard_normal(dim).astype(np.float32)
    msg = embedding_pb(row)
    got = np.array(msg.values, dtype=np.float32)
    assert got.tobytes() == row.tobytes()
    # The same message the obvious construction gives, and it survives the wire.
    assert msg == pb.Embedding(values=row.tolist())
    assert pb.Embedding.FromString(msg.SerializeToString()) == msg


def test_special_values_and_non_contiguous_or_wider_rows_keep_their_float32_bits() -> None:
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.finfo(np.float32).tiny / 2, 1e-45, 3.4e38], np.float32)
    assert np.array(embedding_pb(special).values, np.float32).tobytes() == special.tobytes()
    # A column of a C-ordered matrix is strided; a float64 row is narrowed as the list path would.
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert list(embedding_pb(matrix[:, 1]).values) == [1.0, 5.0, 9.0]
    wide = np.array([0.1, 0.2], dtype=np.float64)
    assert list(embedding_pb(wide).values) == list(pb.Embedding(values=wide.tolist()).values)


def test_embed_response_has_one_embedding_per_row_in_order() -> None:
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    resp = embed_response("m", vectors, Timing(total_ms=1.5))
    assert resp.model == "m" and resp.dim == 2
    assert [list(e.values) for e in resp.embeddings] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert resp.timing.total_ms == pytest.approx(1.5)
    empty = embed_response("m", np.zeros((0, 4), np.float32), Timing())
    assert len(empty.embeddings) == 0 and empty.dim == 4
