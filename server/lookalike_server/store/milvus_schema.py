"""What a model version's Milvus collection looks like: name, fields, index, search parameters.

Pure functions of the configuration: nothing here talks to Milvus;
:mod:`.milvus_collections` creates collections from them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pymilvus import DataType, MilvusClient

from lookalike_server.config import MilvusConfig
from lookalike_server.validation import MAX_KEY_BYTES

ID_FIELD = "id"
VECTOR_FIELD = "vector"
KEY_FIELD = "key"
ATTRS_FIELD = "attrs"
# Limits live in one place (validation.py); this name stays for importers.
KEY_MAX_BYTES = MAX_KEY_BYTES
METRIC = "L2"
# Milvus' own limits: collection names and search-time index parameters.
MAX_NAME_LEN = 255
MAX_HNSW_EF = 32768
MAX_IVF_NPROBE = 65536
# Default indexes when MilvusConfig.index_type is empty.
LITE_DEFAULT_INDEX = "IVF_FLAT"
SERVER_DEFAULT_INDEX = "HNSW"


def collection_name(prefix: str, model: str, version: str) -> str:
    """The collection holding ``model``'s vectors at ``version``.

    Characters outside ``[A-Za-z0-9_]`` become ``_`` (so ``resnet-50`` and
    ``resnet_50`` would share a collection: keep model names distinct after
    that mapping).

    Args:
        prefix: ``MilvusConfig.collection_prefix``.
        model: Model name from the registry.
        version: Model version (changing it starts a fresh collection).

    Returns:
        ``{prefix}_{model}_v{version}``, sanitised, at most 255 characters.
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", f"{prefix}_{model}_v{version}")
    if name[0].isdigit():
        name = "_" + name
    return name[:MAX_NAME_LEN]


def choose_index_type(config: MilvusConfig, is_lite: bool) -> str:
    """The vector index to create: the configured one, or the backend's default.

    Args:
        config: Milvus settings (``index_type`` empty = the default).
        is_lite: Whether the backend is Milvus Lite.

    Returns:
        ``HNSW``, ``IVF_FLAT`` or ``FLAT``.
    """
    # Empty = the backend's default, chosen by measurement
    # (benchmarks/results/lite-index-*.md): on Milvus Lite an IVF_FLAT index
    # finds every stored item with its own vector (its own cell is always
    # probed first) and searches ~9x faster than Lite's HNSW.
    return config.index_type or (LITE_DEFAULT_INDEX if is_lite else SERVER_DEFAULT_INDEX)


def collection_schema(dim: int) -> Any:
    """The fields of every collection: id (primary key), vector, key, attrs.

    Args:
        dim: Embedding dimension of the model.

    Returns:
        A pymilvus ``CollectionSchema``.
    """
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(KEY_FIELD, DataType.VARCHAR, max_length=KEY_MAX_BYTES)
    schema.add_field(ATTRS_FIELD, DataType.JSON)
    return schema


def build_params(config: MilvusConfig, index_type: str) -> dict[str, Any]:
    """The index's build parameters, as configured (empty for FLAT).

    Args:
        config: Milvus settings.
        index_type: From :func:`choose_index_type`.

    Returns:
        e.g. ``{"M": 16, "efConstruction": 200}`` for HNSW.
    """
    if index_type == "HNSW":
        return {"M": config.hnsw_m, "efConstruction": config.hnsw_ef_construction}
    if index_type == "IVF_FLAT":
        return {"nlist": config.ivf_nlist}
    return {}


def index_params(config: MilvusConfig, index_type: str, is_lite: bool) -> Any:
    """The index definition passed when a collection (or its index) is created.

    Args:
        config: Milvus settings.
        index_type: From :func:`choose_index_type`.
        is_lite: Whether the backend is Milvus Lite.

    Returns:
        A pymilvus ``IndexParams`` for the vector field.
    """
    params: dict[str, Any] = build_params(config, index_type)
    if is_lite and params:
        # pymilvus 3 sends build parameters as one key-value pair each;
        # Milvus Lite 3.2 reads only a JSON "params" pair and silently
        # builds with its defaults otherwise (HNSW M=16, IVF nlist=128).
        # Sent this way Lite honours them; ensure_collection checks.
        params = {"params": json.dumps(params)}
    result = MilvusClient.prepare_index_params()
    result.add_index(field_name=VECTOR_FIELD, index_type=index_type, metric_type=METRIC, params=params)
    return result


def search_params(config: MilvusConfig, index_type: str, top_k: int, filtered: bool = False) -> dict[str, Any]:
    """Search-time parameters for one search.

    Args:
        config: Milvus settings.
        index_type: The collection's index type.
        top_k: Hits wanted per query.
        filtered: Whether a key prefix or attribute filter narrows the search.

    Returns:
        The ``search_params`` argument of ``MilvusClient.search``.
    """
    params: dict[str, Any] = {}
    if index_type == "HNSW":
        # HNSW cannot return more than ef candidates.
        params["ef"] = min(max(config.search_ef, top_k), MAX_HNSW_EF)
    elif index_type == "IVF_FLAT":
        # A selective filter (key prefix, attributes) may match items only
        # in cells nprobe would skip: probe every cell then, which is an
        # exact scan of the matching rows, not a silent miss. Unfiltered,
        # probe at least top_k cells: a cell holds at least one row, and
        # Milvus Lite clamps nlist to a small segment's row count (one row
        # per cell), where nprobe cells would cap the hits at nprobe.
        nprobe = config.ivf_nlist if filtered else max(config.ivf_nprobe, top_k)
        params["nprobe"] = min(nprobe, MAX_IVF_NPROBE)
    return {"metric_type": METRIC, "params": params}
