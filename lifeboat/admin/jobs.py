"""Admin subcommands of the scheduler: `lifeboat jobs`, `lifeboat reload`, `lifeboat run`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from lifeboat import client, convert
from lifeboat.admin.table import table
from lifeboat.config import Config
from lifeboat.errors import NotFound
from lifeboat.sla import format_age
from lifeboat.v1 import resources_pb2, scheduler_pb2, scheduler_pb2_grpc

EXIT_OK = 0
EXIT_FAILED = 1


def register(subparsers: Any) -> None:
    jobs = subparsers.add_parser("jobs", help="every job with its next run, from the scheduler")
    jobs.add_argument("--host", default="", help="only the jobs of this backup host")
    _scheduler_option(jobs)
    jobs.set_defaults(func=run_jobs)

    reload = subparsers.add_parser("reload", help="make the scheduler re-read the config file")
    _scheduler_option(reload)
    reload.set_defaults(func=run_reload)

    run = subparsers.add_parser("run", help="back up a job now, through the scheduler")
    run.add_argument("job")
    run.add_argument(
        "--tag",
        action="append",
        default=[],
        help="tag of the new revision (repeatable; default: the tags of the job's next slot)",
    )
    run.add_argument("--wait", action="store_true", help="wait for the end, with a progress bar")
    _scheduler_option(run)
    run.set_defaults(func=run_run)


def _scheduler_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="scheduler address (default: scheduler.listen of the config)",
    )


def _call(args: argparse.Namespace, config: Config, method: str, request: Any) -> Any:
    address = args.scheduler or config.scheduler_listen
    with client.channel(address, args.identity) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        return client.call(f"scheduler {address}", getattr(stub, method), request, args.timeout)


def _when(stamp: Any, now: dt.datetime) -> str:
    when = convert.from_timestamp(stamp)
    if when is None:
        return "-"
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    if when <= now:
        return f"{text} ({format_age(now - when)} ago)"
    return f"{text} (in {format_age(when - now)})"


def state_name(view: scheduler_pb2.JobView) -> str:
    state = scheduler_pb2.JobState.Name(view.state).removeprefix("JOB_STATE_").lower()
    if view.state == scheduler_pb2.JOB_STATE_BACKING_OFF:
        state += (
            f" ({view.failures} failures, retry after {format_age(view.backoff.ToTimedelta())})"
        )
    elif view.last_result in (
        resources_pb2.OPERATION_STATE_FAILED,
        resources_pb2.OPERATION_STATE_RETRY_LATER,
    ):
        result = resources_pb2.OperationState.Name(view.last_result)
        state += f" (last: {result.removeprefix('OPERATION_STATE_').lower()})"
    return state.replace("_", "-")


def job_rows(views: Any, now: dt.datetime) -> list[list[str]]:
    return [
        [
            view.job.name,
            view.job.host,
            _when(view.last_backup_time, now),
            _when(view.next_run_time, now),
            ",".join(view.next_tags) or "-",
            state_name(view),
        ]
        for view in views
    ]


def run_jobs(args: argparse.Namespace, config: Config) -> int:
    reply = _call(args, config, "ListJobs", scheduler_pb2.ListJobsRequest(host=args.host))
    header = ["JOB", "HOST", "LAST BACKUP (UTC)", "NEXT RUN (UTC)", "TAGS", "STATE"]
    for line in table(header, job_rows(reply.jobs, dt.datetime.now(dt.UTC))):
        print(line)
    errors = [view for view in reply.jobs if view.last_error]
    for view in errors:
        print(f"{view.job.name}: {view.last_error}", file=sys.stderr)
    return EXIT_OK


def run_reload(args: argparse.Namespace, config: Config) -> int:
    reply = _call(args, config, "ReloadConfig", scheduler_pb2.ReloadConfigRequest())
    for word, names in (
        ("added", reply.jobs_added),
        ("removed", reply.jobs_removed),
        ("changed", reply.jobs_changed),
    ):
        print(f"{word}: {', '.join(names) if names else '-'}")
    return EXIT_OK


def run_run(args: argparse.Namespace, config: Config) -> int:
    request = scheduler_pb2.RunJobRequest(job=args.job, tags=args.tag)
    reply = _call(args, config, "RunJob", request)
    operation = reply.operation
    if not reply.started:
        print(f"a backup of {args.job} is already running: {operation.name}", file=sys.stderr)
    if not args.wait:
        print(operation.name)
        return EXIT_OK
    job = config.jobs.get(args.job)
    if job is None:
        raise NotFound(f"no job named {args.job!r} in {config.path}: cannot find its host")
    final = client.watch(config.host(job.host).backupd, args.identity, operation.name)
    state = resources_pb2.OperationState.Name(final.state).removeprefix("OPERATION_STATE_")
    revision = f" revision {final.revision_id}" if final.revision_id else ""
    detail = f": {final.error}" if final.error else ""
    print(f"{final.name} {state.lower()}{revision}{detail}")
    return EXIT_OK if final.state == resources_pb2.OPERATION_STATE_SUCCEEDED else EXIT_FAILED
