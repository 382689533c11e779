"""The SLA report in the Prometheus text exposition format (version 0.0.4)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from lifeboat.sla import SlaState
from monitor.report import HostReport, JobReport, SlaReport, states_count

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Value = float | int | None


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    samples: Sequence[tuple[Labels, Value]]
    type: str = "gauge"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float | int) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help}")
        lines.append(f"# TYPE {metric.name} {metric.type}")
        for labels, value in metric.samples:
            if value is None:
                continue
            label_text = ",".join(f'{key}="{escape_label(text)}"' for key, text in labels)
            selector = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{metric.name}{selector} {_format_value(value)}")
    return "\n".join(lines) + "\n"


def _seconds(value: dt.timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


def _timestamp(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _job_metric(
    name: str, help: str, jobs: Sequence[JobReport], value: Callable[[JobReport], Value]
) -> Metric:
    return Metric(name, help, [((("job", j.job), ("host", j.host)), value(j)) for j in jobs])


def _host_metric(
    name: str, help: str, hosts: Sequence[HostReport], value: Callable[[HostReport], Value]
) -> Metric:
    return Metric(name, help, [((("host", h.host),), value(h)) for h in hosts])


def metrics_of(report: SlaReport) -> list[Metric]:
    jobs, hosts = report.jobs, report.hosts
    counts = states_count(jobs)
    return [
        _job_metric(
            "lifeboat_job_sla_state",
            "SLA state of the job as a Nagios code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
            jobs,
            lambda j: j.state.exit_code,
        ),
        _job_metric(
            "lifeboat_job_last_good_timestamp_seconds",
            "Creation time of the newest good revision (absent: never backed up).",
            jobs,
            lambda j: _timestamp(j.last_good_time),
        ),
        _job_metric(
            "lifeboat_job_sla_window_seconds",
            "How old the newest good revision may be (sla-factor x smallest interval).",
            jobs,
            lambda j: _seconds(j.window),
        ),
        _job_metric(
            "lifeboat_job_revisions",
            "Complete revisions stored for the job.",
            jobs,
            lambda j: j.revision_count,
        ),
        _job_metric(
            "lifeboat_job_repository_bytes",
            "Bytes allocated by the job's files in the repository.",
            jobs,
            lambda j: j.bytes_used,
        ),
        _job_metric(
            "lifeboat_job_next_run_timestamp_seconds",
            "When the scheduler runs the job next (absent: scheduler unavailable).",
            jobs,
            lambda j: _timestamp(j.next_run),
        ),
        _job_metric(
            "lifeboat_job_predicted_restore_seconds",
            "Predicted restore time of the job's newest revision (absent: not measured).",
            jobs,
            lambda j: _seconds(j.predicted_restore),
        ),
        _job_metric(
            "lifeboat_job_restore_within_seconds",
            "The job's restore-time objective (absent: none).",
            jobs,
            lambda j: _seconds(j.restore_within),
        ),
        Metric(
            "lifeboat_jobs",
            "Configured jobs by SLA state.",
            [((("state", state.name.lower()),), counts[state]) for state in SlaState],
        ),
        _host_metric(
            "lifeboat_host_up",
            "Whether the host's backupd and restored answered the latest poll.",
            hosts,
            lambda h: int(h.reachable),
        ),
        _host_metric(
            "lifeboat_host_data_age_seconds",
            "Age of the newest answer of the host's backupd.",
            hosts,
            lambda h: _seconds(h.data_age),
        ),
        _host_metric(
            "lifeboat_host_repository_free_bytes",
            "Free bytes of the filesystem holding the host's repository.",
            hosts,
            lambda h: h.free_bytes if h.data_age is not None else None,
        ),
        _host_metric(
            "lifeboat_host_repository_size_bytes",
            "Size of the filesystem holding the host's repository.",
            hosts,
            lambda h: h.total_bytes if h.data_age is not None else None,
        ),
        _host_metric(
            "lifeboat_host_running_backups",
            "Backups running on the host.",
            hosts,
            lambda h: h.running_backups,
        ),
        _host_metric(
            "lifeboat_host_running_restores",
            "Restores running on the host.",
            hosts,
            lambda h: h.running_restores,
        ),
        Metric(
            "lifeboat_scheduler_up",
            "Whether the scheduler answered the latest poll.",
            [((), int(report.scheduler.reachable))],
        ),
    ]


def exposition(report: SlaReport) -> str:
    return render(metrics_of(report))
