"""RestoreService glue. The RPCs are implemented by the restored issue; until then the
generated base class answers UNIMPLEMENTED."""

from __future__ import annotations

from lifeboat.v1 import restore_pb2_grpc


class RestoreServicer(restore_pb2_grpc.RestoreServiceServicer):
    pass
