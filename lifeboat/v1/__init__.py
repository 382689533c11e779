"""Generated protobuf code for lifeboat.v1 (produced by `make generate`, not committed)."""
