"""SchedulerService glue. The RPCs are implemented by the scheduler issue; until then the
generated base class answers UNIMPLEMENTED."""

from __future__ import annotations

from lifeboat.v1 import scheduler_pb2_grpc


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServiceServicer):
    pass
