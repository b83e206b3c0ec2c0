"""Generated protobuf and gRPC code for lookalike.v1 (do not edit; run scripts/gen_protos.py)."""
