"""Server logging: dependencies quiet unless DEBUG; Milvus Lite's probe tracebacks dropped, nothing else."""

from __future__ import annotations

import logging
import sys

import pytest

from lookalike_server.logs import THIRD_PARTY, MilvusLiteProbeFilter, configure_logging


def record_for(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return logging.LogRecord("grpc._server", logging.ERROR, __file__, 1, "Exception calling application", (), info)


def test_probe_filter_drops_only_pymilvus_unimplemented_methods() -> None:
    from pymilvus.grpc_gen import milvus_pb2_grpc

    servicer = milvus_pb2_grpc.MilvusServiceServicer()

    class Context:
        def set_code(self, _code: object) -> None: ...
        def set_details(self, _details: str) -> None: ...

    try:
        servicer.AllocTimestamp(None, Context())
    except NotImplementedError:
        probe = logging.LogRecord(
            "grpc._server", logging.ERROR, __file__, 1, "Exception calling application", (), sys.exc_info()
        )
    flt = MilvusLiteProbeFilter()
    assert flt.filter(probe) is False
    assert flt.filter(record_for(NotImplementedError("ours"))) is True  # our own servicer's bug stays visible
    assert flt.filter(record_for(RuntimeError("boom"))) is True
    plain = logging.LogRecord("grpc._server", logging.ERROR, __file__, 1, "no exception", (), None)
    assert flt.filter(plain) is True


@pytest.mark.parametrize(("level", "expected"), [("INFO", logging.WARNING), ("DEBUG", logging.NOTSET)])
def test_third_party_loggers_at_warning_unless_debug(level: str, expected: int) -> None:
    saved = {name: logging.getLogger(name).level for name in THIRD_PARTY}
    try:
        for name in THIRD_PARTY:
            logging.getLogger(name).setLevel(logging.NOTSET)
        configure_logging(level)
        assert {logging.getLogger(n).level for n in THIRD_PARTY} == {expected}
    finally:
        for name, lvl in saved.items():
            logging.getLogger(name).setLevel(lvl)
