"""Consistency hooks of a job: freeze before the snapshot, thaw after it.

The freeze command's exit status says what to do: 0 go on, 75 (EX_TEMPFAIL) try
again later, anything else fail. Both see LIFEBOAT_JOB, LIFEBOAT_OPERATION and
LIFEBOAT_PHASE (freeze or thaw) in their environment.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess

from lifeboat.errors import FailedPrecondition, RetryLater
from lifeboat.model import Job

EX_TEMPFAIL = 75


def _run(phase: str, command: str, job: Job, operation: str, timeout: dt.timedelta) -> None:
    env = {
        **os.environ,
        "LIFEBOAT_JOB": job.name,
        "LIFEBOAT_OPERATION": operation,
        "LIFEBOAT_PHASE": phase,
    }
    try:
        result = subprocess.run(
            command,
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout.total_seconds(),
        )
    except subprocess.TimeoutExpired:
        raise FailedPrecondition(
            f"{phase}-command timed out after {timeout.total_seconds():.0f}s"
        ) from None
    output = (result.stderr or result.stdout).strip().splitlines()
    detail = f": {output[-1]}" if output else ""
    if result.returncode == EX_TEMPFAIL and phase == "freeze":
        raise RetryLater(f"freeze-command asked to retry later (exit 75){detail}")
    if result.returncode != 0:
        raise FailedPrecondition(
            f"{phase}-command failed with exit status {result.returncode}{detail}"
        )


def freeze(job: Job, operation: str) -> None:
    if job.freeze is not None:
        _run("freeze", job.freeze.command, job, operation, job.freeze.timeout)


def thaw(job: Job, operation: str) -> None:
    if job.freeze is not None and job.freeze.thaw_command:
        _run("thaw", job.freeze.thaw_command, job, operation, job.freeze.timeout)
