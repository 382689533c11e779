"""Admin subcommand `lifeboat status`: the monitor's SLA table of every job and host."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from lifeboat import client, convert
from lifeboat.admin.table import table
from lifeboat.config import Config
from lifeboat.sla import format_age
from lifeboat.v1 import monitor_pb2, monitor_pb2_grpc, resources_pb2

EXIT_OK = 0


def register(subparsers: Any) -> None:
    status = subparsers.add_parser("status", help="SLA state of every job, from the monitor")
    status.add_argument("--job", default="", help="only this job")
    status.add_argument("--host", default="", help="only the jobs of this backup host")
    status.add_argument(
        "--monitor", metavar="ADDR", help="monitor address (default: monitor.listen of the config)"
    )
    status.set_defaults(func=run_status)


def state_name(state: resources_pb2.SlaState.ValueType) -> str:
    return resources_pb2.SlaState.Name(state).removeprefix("SLA_STATE_")


def _age(value: dt.timedelta | None, never: str = "never") -> str:
    return never if value is None else f"{format_age(value)} ago"


def _next_run(when: dt.datetime | None, now: dt.datetime) -> str:
    if when is None:
        return "-"
    if when <= now:
        return "now"
    return f"in {format_age(when - now)}"


def job_rows(reply: monitor_pb2.GetSlaReportResponse) -> list[list[str]]:
    now = convert.from_timestamp(reply.generate_time) or dt.datetime.now(dt.UTC)
    rows = []
    for job in reply.jobs:
        window = convert.from_duration(job.sla_window)
        rows.append(
            [
                job.job,
                job.host,
                state_name(job.state),
                _age(job.last_good_age.ToTimedelta() if job.HasField("last_good_age") else None),
                format_age(window) if window else "-",
                _next_run(convert.from_timestamp(job.next_run_time), now),
                job.reason,
            ]
        )
    return rows


def host_rows(reply: monitor_pb2.GetSlaReportResponse) -> list[list[str]]:
    rows = []
    for host in reply.hosts:
        free = (
            f"{client.format_bytes(host.free_bytes)} of {client.format_bytes(host.total_bytes)}"
            if host.total_bytes
            else "-"
        )
        age = host.data_age.ToTimedelta() if host.HasField("data_age") else None
        rows.append(
            [
                host.host,
                "yes" if host.reachable else "NO",
                str(host.running_backups),
                str(host.running_restores),
                free,
                _age(age, never="-"),
                host.error,
            ]
        )
    return rows


def scheduler_line(scheduler: monitor_pb2.SchedulerSla) -> str:
    if scheduler.reachable:
        return f"scheduler {scheduler.address}: reachable"
    return f"scheduler {scheduler.address}: unavailable ({scheduler.error}); next runs unknown"


def render(reply: monitor_pb2.GetSlaReportResponse) -> str:
    lines = table(
        ["JOB", "HOST", "STATE", "LAST GOOD", "SLA WINDOW", "NEXT RUN", "REASON"], job_rows(reply)
    )
    lines.append("")
    lines += table(
        ["HOST", "REACHABLE", "BACKUPS", "RESTORES", "FREE", "DATA", "ERROR"], host_rows(reply)
    )
    lines.append("")
    lines.append(scheduler_line(reply.scheduler))
    return "\n".join(lines)


def run_status(args: argparse.Namespace, config: Config) -> int:
    address = args.monitor or config.monitor_listen
    with client.channel(address, args.identity) as channel:
        stub = monitor_pb2_grpc.MonitorServiceStub(channel)
        request = monitor_pb2.GetSlaReportRequest(job=args.job, host=args.host)
        reply: Any = client.call(f"monitor {address}", stub.GetSlaReport, request, args.timeout)
    print(render(reply))
    return EXIT_OK
