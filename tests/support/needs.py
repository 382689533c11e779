"""Skips for tests that need root, a loop device or Ceph.

Where LIFEBOAT_REQUIRE_ALL=1 (set by .ci/run) a missing requirement fails the
test instead of skipping it, so CI can never pass by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL_VARIABLE = "LIFEBOAT_REQUIRE_ALL"


def require_all() -> bool:
    return os.environ.get(REQUIRE_ALL_VARIABLE, "") not in ("", "0")


def need(condition: bool, reason: str) -> None:
    """Skip (or, under LIFEBOAT_REQUIRE_ALL, fail) the running test unless `condition`."""
    if condition:
        return
    if require_all():
        pytest.fail(f"{reason} (required: {REQUIRE_ALL_VARIABLE} is set)", pytrace=False)
    pytest.skip(reason)


def need_root() -> None:
    need(os.geteuid() == 0, "needs root (loop devices and mounts)")
