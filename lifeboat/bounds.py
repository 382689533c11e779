"""Limits on what callers and config files may say, and how much of it is ever repeated.

One place for every bound, shared by the config loader and the request checks, so
a value the config refuses is refused over the wire too, with the same words.
"""

from __future__ import annotations

import datetime as dt
import math
import re

# Job, host, schedule and tag names: safe as directory names.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 64
MAX_TAG_LENGTH = 64
MAX_TAGS = 32
MIN_DURATION = dt.timedelta(seconds=1)
MAX_DURATION = dt.timedelta(days=36525)  # 100 years
MAX_KEEP = 10_000
# Most ReadRevision streams one host may be configured to serve at once (stream-limit).
MAX_STREAM_LIMIT = 10_000
MIN_SLA_FACTOR = 1.0
# Longest string any request field may carry (a restore target path is the longest).
MAX_REQUEST_STRING = 4096
# Most entries any repeated request field may carry.
MAX_REQUEST_REPEATED = 10_000
# Most characters of a caller's input repeated in a reply or a log line.
ECHO_LIMIT = 100


def clip(value: object, limit: int = ECHO_LIMIT) -> str:
    """`repr(value)`, cut to about `limit` characters: safe to put into a reply or a log."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value))} characters)"


def name_problem(name: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    """Why `name` cannot be a job, host, schedule or tag name, or None."""
    if not name:
        return "must be a non-empty string"
    if len(name) > limit:
        return f"longer than {limit} characters"
    if not NAME.fullmatch(name):
        return "may hold letters, digits, '.', '_', '-' and not start with '.' or '-'"
    return None


def duration_problem(value: dt.timedelta) -> str | None:
    """Why a duration is out of bounds, or None."""
    return seconds_problem(value.total_seconds())


def seconds_problem(seconds: float) -> str | None:
    """Why a duration of `seconds` is out of bounds, or None. Check a number with this
    before making a timedelta of it: NaN, infinity or a huge number would not make one."""
    within = MIN_DURATION.total_seconds() <= seconds <= MAX_DURATION.total_seconds()
    if not (math.isfinite(seconds) and within):
        return "must be between 1s and 100 years"
    return None


def keep_problem(value: int) -> str | None:
    if not 1 <= value <= MAX_KEEP:
        return f"must be between 1 and {MAX_KEEP}"
    return None


def stream_limit_problem(value: int) -> str | None:
    if not 1 <= value <= MAX_STREAM_LIMIT:
        return f"must be between 1 and {MAX_STREAM_LIMIT}"
    return None


def sla_factor_problem(value: float) -> str | None:
    if not math.isfinite(value) or value < MIN_SLA_FACTOR:
        return f"must be a finite number of at least {MIN_SLA_FACTOR:g}"
    return None


def string_problem(value: str, limit: int = MAX_REQUEST_STRING) -> str | None:
    if "\0" in value:
        return "must not contain NUL"
    if len(value) > limit:
        return f"longer than {limit} characters"
    return None
