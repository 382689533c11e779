"""Who may call what: roles, the one rule table of every RPC, and the audit list.

Pure data and functions (no grpc): the server interceptor in `lifeboat.bootstrap`
applies them. Roles are ordered: each may do everything the one before it may.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Role(enum.IntEnum):
    MONITOR = 1
    SCHEDULER = 2
    OPERATOR = 3
    ADMIN = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> Role | None:
        return cls.__members__.get(label.upper())


LOCAL_CALLER = "local"

_BACKUP = "/lifeboat.v1.BackupService/"
_RESTORE = "/lifeboat.v1.RestoreService/"
_OPERATIONS = "/lifeboat.v1.OperationService/"
_SCHEDULER = "/lifeboat.v1.SchedulerService/"
_MONITOR = "/lifeboat.v1.MonitorService/"

# Default deny: a Lifeboat RPC missing here is refused to every caller.
RULES: Mapping[str, Role] = {
    _BACKUP + "ListRevisions": Role.MONITOR,
    _BACKUP + "GetRevision": Role.MONITOR,
    _BACKUP + "GetJobStatus": Role.MONITOR,
    _BACKUP + "ListJobStatuses": Role.MONITOR,
    _BACKUP + "GetHostStatus": Role.MONITOR,
    _BACKUP + "StartBackup": Role.SCHEDULER,
    _BACKUP + "UpdateRevisionTags": Role.OPERATOR,
    _BACKUP + "VerifyRevision": Role.OPERATOR,
    _BACKUP + "DeleteRevision": Role.ADMIN,
    _BACKUP + "DeleteJobData": Role.ADMIN,
    _RESTORE + "ListRestoreEstimates": Role.MONITOR,
    _RESTORE + "StartRestore": Role.OPERATOR,
    _RESTORE + "ReadRevision": Role.OPERATOR,
    _OPERATIONS + "GetOperation": Role.MONITOR,
    _OPERATIONS + "ListOperations": Role.MONITOR,
    _OPERATIONS + "WatchOperation": Role.MONITOR,
    _OPERATIONS + "CancelOperation": Role.OPERATOR,
    _SCHEDULER + "ListJobs": Role.MONITOR,
    _SCHEDULER + "GetJob": Role.MONITOR,
    _SCHEDULER + "RunJob": Role.OPERATOR,
    _SCHEDULER + "ReloadConfig": Role.ADMIN,
    _MONITOR + "GetSlaReport": Role.MONITOR,
    _MONITOR + "CheckSla": Role.MONITOR,
}

# Services any caller with a valid certificate may use: they reveal nothing of the fleet.
OPEN_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# Calls that change something: each writes one audit line.
AUDITED = frozenset(
    {
        _BACKUP + "StartBackup",
        _BACKUP + "UpdateRevisionTags",
        _BACKUP + "VerifyRevision",
        _BACKUP + "DeleteRevision",
        _BACKUP + "DeleteJobData",
        _RESTORE + "StartRestore",
        _OPERATIONS + "CancelOperation",
        _SCHEDULER + "RunJob",
        _SCHEDULER + "ReloadConfig",
    }
)


@dataclass(frozen=True)
class Caller:
    """Who made a call: a certificate name (or `local` for plaintext loopback) and its role."""

    name: str
    role: Role | None


class Access:
    """Role of each certificate name, from the config's `global.access`."""

    def __init__(self, names_by_role: Mapping[Role, frozenset[str]]) -> None:
        self.names_by_role = dict(names_by_role)

    def role_of(self, names: list[str]) -> Role | None:
        """The highest role any of a certificate's names (CN, DNS SANs) has."""
        roles = [role for role, members in self.names_by_role.items() if members & set(names)]
        return max(roles) if roles else None


def short_method(method: str) -> str:
    """`/lifeboat.v1.BackupService/StartBackup` -> `BackupService/StartBackup`."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def service_of(method: str) -> str:
    return method.lstrip("/").rpartition("/")[0]


def refusal(method: str, caller: Caller) -> str | None:
    """Why `caller` may not call `method`, or None when it may."""
    if service_of(method) in OPEN_SERVICES:
        return None
    needed = RULES.get(method)
    if needed is None:
        return f"{short_method(method)} has no access rule; refused to every caller"
    if caller.role is not None and caller.role >= needed:
        return None
    has = f"role {caller.role.label}" if caller.role is not None else "no role"
    return (
        f"{short_method(method)} needs role {needed.label}; certificate {caller.name!r} has {has}"
    )
