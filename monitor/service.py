"""MonitorService glue: unpack the filters, ask the monitor, pack the report."""

from __future__ import annotations

import grpc

from lifeboat import convert
from lifeboat.sla import SlaState
from lifeboat.v1 import monitor_pb2 as pb
from lifeboat.v1 import monitor_pb2_grpc as pb_grpc
from lifeboat.v1 import resources_pb2
from monitor.core import Monitor
from monitor.report import HostReport, JobReport, SchedulerReport

STATE_TO_PB = {
    SlaState.OK: resources_pb2.SLA_STATE_OK,
    SlaState.WARNING: resources_pb2.SLA_STATE_WARNING,
    SlaState.CRITICAL: resources_pb2.SLA_STATE_CRITICAL,
    SlaState.UNKNOWN: resources_pb2.SLA_STATE_UNKNOWN,
}


def job_to_pb(report: JobReport) -> pb.JobSla:
    return pb.JobSla(
        job=report.job,
        host=report.host,
        state=STATE_TO_PB[report.state],
        last_good_time=convert.timestamp(report.last_good_time),
        last_good_age=convert.duration(report.last_good_age),
        sla_window=convert.duration(report.window),
        reason=report.reason,
        next_run_time=convert.timestamp(report.next_run),
        predicted_restore=convert.duration(report.predicted_restore),
        restore_within=convert.duration(report.restore_within),
        revision_count=report.revision_count,
        bytes_used=report.bytes_used,
    )


def host_to_pb(report: HostReport) -> pb.HostSla:
    return pb.HostSla(
        host=report.host,
        reachable=report.reachable,
        running_backups=report.running_backups,
        running_restores=report.running_restores,
        free_bytes=report.free_bytes,
        total_bytes=report.total_bytes,
        data_age=convert.duration(report.data_age),
        error=report.error,
    )


def scheduler_to_pb(report: SchedulerReport) -> pb.SchedulerSla:
    return pb.SchedulerSla(
        address=report.address,
        reachable=report.reachable,
        data_age=convert.duration(report.data_age),
        error=report.error,
    )


class MonitorServicer(pb_grpc.MonitorServiceServicer):
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    async def GetSlaReport(
        self, request: pb.GetSlaReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSlaReportResponse:
        report = self.monitor.report(request.job, request.host)
        return pb.GetSlaReportResponse(
            jobs=[job_to_pb(j) for j in report.jobs],
            hosts=[host_to_pb(h) for h in report.hosts],
            generate_time=convert.timestamp(report.generate_time),
            scheduler=scheduler_to_pb(report.scheduler),
        )

    async def CheckSla(
        self, request: pb.CheckSlaRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckSlaResponse:
        result = self.monitor.check(request.job, request.host)
        return pb.CheckSlaResponse(
            state=STATE_TO_PB[result.state],
            summary=result.summary,
            perfdata=result.perfdata,
            exit_code=result.state.exit_code,
        )
