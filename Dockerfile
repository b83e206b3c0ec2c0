# syntax=docker/dockerfile:1.7
# lookalike server on a CUDA runtime image (onnxruntime-gpu 1.31 wants CUDA 13 + cuDNN 9).
#
#   docker build -t lookalike:0.1.0 .
#   docker run --gpus all -p 50051:50051 -v lookalike-data:/data lookalike:0.1.0
#
# Without a GPU the same image runs on the CPU: ONNX Runtime falls back, and
# ListModels reports the providers actually obtained.
# (This file cannot be built in the project's own CI machines, which have no
# Docker engine; keep every version pinned and every step boring.)

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------- builder --
FROM ${CUDA_IMAGE} AS builder
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3-pip \
 && rm -rf /var/lib/apt/lists/*
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, for layer caching: only pyproject.toml invalidates them.
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
COPY export ./export
RUN pip install --upgrade pip==25.3 \
 && pip install ".[server]"
# onnxruntime and onnxruntime-gpu share one import name: both installed means
# whichever wrote last wins. Fail the build rather than ship the CPU one.
RUN python -c "import importlib.metadata as m, sys; \
names = {d.metadata['Name'].lower() for d in m.distributions()}; \
sys.exit('plain onnxruntime beside onnxruntime-gpu' if 'onnxruntime' in names else 0)"

# ---------------------------------------------------------------- runtime --
FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 lookalike \
 && mkdir -p /data && chown lookalike /data
COPY --from=builder /opt/venv /opt/venv
COPY --chown=lookalike models /opt/lookalike/models
ENV PATH=/opt/venv/bin:$PATH \
    LOOKALIKE_HOST=0.0.0.0 \
    LOOKALIKE_PORT=50051 \
    LOOKALIKE_DATA_DIR=/data \
    LOOKALIKE_MODELS_REGISTRY=/opt/lookalike/models/models.toml \
    LOOKALIKE_SHUTDOWN_DELAY_S=5 \
    LOOKALIKE_METRICS_PORT=9464 \
    PYTHONUNBUFFERED=1
USER lookalike
VOLUME ["/data"]
# gRPC, and Prometheus /metrics.
EXPOSE 50051 9464
# grpc.health.v1: SERVING once models are warm and Milvus/Redis answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 CMD \
  python -c "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;\
s=g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(),timeout=4).status;\
sys.exit(0 if s==h.HealthCheckResponse.SERVING else 1)"
# SIGTERM drains: health NOT_SERVING, shutdown_delay_s, then grace_s for in-flight calls.
STOPSIGNAL SIGTERM
ENTRYPOINT ["lookalike-server"]
