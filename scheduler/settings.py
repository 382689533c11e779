"""How patient the scheduler is: call deadlines, poll intervals and retry delays."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class SchedulerSettings:
    # Deadline of every call to a host; the scan of all job statuses gets longer.
    call_timeout: float = 10.0
    scan_timeout: float = 120.0
    # restored is asked with a short deadline: it must never hold up backups for long.
    restore_check_timeout: float = 2.0
    # How often running backups are polled, per host, while any runs.
    poll_interval: float = 1.0
    # After backupd answered RESOURCE_EXHAUSTED (no free slot): not a failure, retry soon.
    busy_retry: float = 5.0
    # While restores run on a host, how often restored is asked again.
    restore_poll_interval: float = 5.0
    # How long a "no restores running" answer is trusted.
    restore_check_cache: float = 1.0
    # Re-read every job status of a host this often: revisions deleted behind the
    # scheduler's back (by hand, DeleteRevision, DeleteJobData) are noticed within it.
    scan_interval: float = 60.0
    # A backup that ended RETRY_LATER (freeze hook exit 75) runs again after this delay.
    retry_later_delay: dt.timedelta = dt.timedelta(minutes=1)
    # Failed backups retry after schedule.backoff(failures, base, cap).
    failure_backoff_base: dt.timedelta = dt.timedelta(minutes=1)
    failure_backoff_cap: dt.timedelta = dt.timedelta(hours=1)
    # An unreachable host is tried again after schedule.backoff(attempts, base, cap).
    host_backoff_base: dt.timedelta = dt.timedelta(seconds=2)
    host_backoff_cap: dt.timedelta = dt.timedelta(minutes=1)
    # No host task sleeps longer than this, so wall-clock jumps are noticed.
    max_sleep: float = 30.0
