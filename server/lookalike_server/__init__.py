"""Lookalike server: micro-batched ONNX embeddings, Milvus vectors, Redis metadata, over gRPC."""

__version__ = "0.1.0"
