"""MonitorService glue. The RPCs are implemented by the monitor issue; until then the
generated base class answers UNIMPLEMENTED."""

from __future__ import annotations

from lifeboat.v1 import monitor_pb2_grpc


class MonitorServicer(monitor_pb2_grpc.MonitorServiceServicer):
    pass
