"""The fleet configuration: one YAML file, validated into plain types.

Every problem is reported as a ConfigError naming the file, the key (dotted
path) and what is wrong with it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lifeboat import bounds
from lifeboat.access import Role
from lifeboat.bounds import clip
from lifeboat.errors import ConfigError
from lifeboat.model import CephRbdSource, FileSource, FreezeHook, Job, Schedule, Source, TagSpec

log = logging.getLogger(__name__)

# libyaml's loader where PyYAML was built with it: ten times faster on a large fleet.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CONFIG_VARIABLE = "LIFEBOAT_CONFIG"
LOCAL_HOST = "localhost"
DEFAULT_BACKUPD = "127.0.0.1:9411"
DEFAULT_RESTORED = "127.0.0.1:9412"
DEFAULT_SCHEDULER = "127.0.0.1:9410"
DEFAULT_MONITOR = "127.0.0.1:9413"
DEFAULT_MONITOR_HTTP = "127.0.0.1:9414"
DEFAULT_POLL_INTERVAL = dt.timedelta(seconds=10)
DEFAULT_FREEZE_TIMEOUT = dt.timedelta(minutes=5)
DEFAULT_RESTORE_LIMIT = 32
DEFAULT_STREAM_LIMIT = 64
DEFAULT_STREAM_IDLE_TIMEOUT = dt.timedelta(seconds=60)
MAX_CERTIFICATE_NAME = 255

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# A YAML error repeats a line of the document; enough of it to find the place.
_SYNTAX_MESSAGE_LIMIT = 4 * bounds.ECHO_LIMIT
# More digits than any duration within bounds has, in any unit.
_MAX_DURATION_DIGITS = len(str(int(bounds.MAX_DURATION.total_seconds())))

# Keys a backy 2.x config may carry that Lifeboat does not use; accepted so
# such a file loads as it is.
_BACKY_IGNORED_GLOBAL = {
    "status-file",
    "status-interval",
    "telnet_port",
    "backup-completed-callback",
}


@dataclass(frozen=True)
class TlsFiles:
    """A certificate (PEM) and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerSecurity:
    """How one server section (`scheduler`, `monitor`, `hosts.NAME`) may listen."""

    key: str
    tls: TlsFiles | None = None
    # Plaintext on a non-loopback address, knowingly.
    insecure: bool = False


@dataclass(frozen=True)
class Security:
    """`global.tls`, `global.access` and `client.tls`: without a CA, plaintext on loopback."""

    ca: Path | None = None
    access: Mapping[Role, frozenset[str]] = field(default_factory=dict)
    client_tls: TlsFiles | None = None

    @property
    def enabled(self) -> bool:
        return self.ca is not None


@dataclass(frozen=True)
class HostConfig:
    name: str
    backupd: str
    restored: str
    base_dir: Path
    worker_limit: int
    restore_targets: tuple[str, ...]
    restore_limit: int
    security: ServerSecurity = ServerSecurity("hosts")
    stream_limit: int = DEFAULT_STREAM_LIMIT
    stream_idle_timeout: dt.timedelta = DEFAULT_STREAM_IDLE_TIMEOUT


@dataclass(frozen=True)
class GlobalConfig:
    base_dir: Path
    worker_limit: int
    restore_limit: int
    restore_targets: tuple[str, ...]
    restore_within: dt.timedelta | None
    sla_factor: float
    verify_fraction: float = 0.05
    verify_time_limit: dt.timedelta = dt.timedelta(minutes=10)
    stream_limit: int = DEFAULT_STREAM_LIMIT
    stream_idle_timeout: dt.timedelta = DEFAULT_STREAM_IDLE_TIMEOUT


@dataclass(frozen=True)
class Config:
    path: str
    global_: GlobalConfig
    scheduler_listen: str
    monitor_listen: str
    monitor_http: str
    hosts: Mapping[str, HostConfig]
    schedules: Mapping[str, Schedule]
    jobs: Mapping[str, Job] = field(default_factory=dict)
    monitor_poll_interval: dt.timedelta = DEFAULT_POLL_INTERVAL
    security: Security = Security()
    scheduler_security: ServerSecurity = ServerSecurity("scheduler")
    monitor_security: ServerSecurity = ServerSecurity("monitor")

    def host(self, name: str) -> HostConfig:
        try:
            return self.hosts[name]
        except KeyError:
            raise ConfigError(self.path, "hosts", f"no host named {clip(name)}") from None

    def jobs_on(self, host: str) -> list[Job]:
        return [job for job in self.jobs.values() if job.host == host]


def parse_duration(text: object, path: str, key: str) -> dt.timedelta:
    """Parse "90m", "1d", "1h30m" or a number of seconds, within the bounds of
    `lifeboat.bounds` (checked on the number, before a timedelta could overflow)."""
    seconds = _duration_seconds(text, path, key)
    problem = bounds.seconds_problem(seconds)
    if problem is not None:
        raise ConfigError(path, key, f"{problem}, got {clip(text)}")
    return dt.timedelta(seconds=seconds)


def _duration_seconds(text: object, path: str, key: str) -> float:
    if isinstance(text, bool):
        raise ConfigError(path, key, f"expected a duration like 1h or 30m, got {clip(text)}")
    if isinstance(text, int | float):
        return float(text)
    value = str(text).strip()
    parts = _DURATION_PART.findall(value)
    if not value or "".join(n + u for n, u in parts) != value:
        raise ConfigError(path, key, f"expected a duration like 1h or 30m, got {clip(text)}")
    # Digits beyond these are out of bounds anyway; int() of thousands of them would fail.
    if any(len(n.lstrip("0")) > _MAX_DURATION_DIGITS for n, _ in parts):
        return math.inf
    return float(sum(int(n) * _DURATION_UNITS[u] for n, u in parts))


def format_duration(value: dt.timedelta) -> str:
    """The inverse of parse_duration for whole seconds: 90 minutes -> "1h30m"."""
    seconds = int(value.total_seconds())
    text = ""
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        count, seconds = divmod(seconds, size)
        if count:
            text += f"{count}{unit}"
    return text or "0s"


def check_name(name: object, path: str, key: str, limit: int = bounds.MAX_NAME_LENGTH) -> str:
    """A job, host, schedule or tag name: safe as a directory name."""
    if not isinstance(name, str):
        raise ConfigError(path, key, "name must be a non-empty string")
    problem = bounds.name_problem(name, limit)
    if problem is not None:
        raise ConfigError(path, key, f"name {problem}")
    return name


def child_key(parent: str, name: object) -> str:
    """The dotted key of `name` below `parent`, fit for a message: clipped, NUL shown as \\0."""
    return f"{parent}.{_shorten(str(name))}" if parent else _shorten(str(name))


def _shorten(text: str, limit: int = bounds.ECHO_LIMIT) -> str:
    text = text.replace("\0", "\\0")
    return text if len(text) <= limit else f"{text[:limit]}..."


def _check_strings(document: object, path: str) -> None:
    """ConfigError naming a key whose name or string value (at any depth) holds a NUL."""
    stack: list[tuple[str, object]] = [("", document)]
    seen: set[int] = set()  # aliases share a node (and may make a cycle): visit it once
    while stack:
        key, node = stack.pop()
        if isinstance(node, str):
            if "\0" in node:
                raise ConfigError(path, key or "(top level)", "must not contain NUL")
            continue
        if not isinstance(node, Mapping | list | set) or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            for name, value in node.items():
                if isinstance(name, str) and "\0" in name:
                    raise ConfigError(path, child_key(key, name), "key must not contain NUL")
                stack.append((child_key(key, name), value))
        else:
            stack.extend((f"{key}[{index}]", item) for index, item in enumerate(node))


class _Reader:
    """Typed access to one mapping of the YAML document, with errors naming the key."""

    def __init__(self, path: str, key: str, data: object) -> None:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(path, key or "(top level)", "expected a mapping")
        self.path = path
        self.key = key
        self.data: Mapping[str, Any] = data

    def child_key(self, name: str) -> str:
        return child_key(self.key, name)

    def reject_unknown(self, allowed: set[str], ignored: frozenset[str] = frozenset()) -> None:
        for name in self.data:
            if name in ignored:
                log.info("%s: %s is a backy setting that Lifeboat ignores", self.path, name)
            elif name not in allowed:
                known = ", ".join(sorted(allowed))
                raise ConfigError(
                    self.path, self.child_key(str(name)), f"unknown key (known: {known})"
                )

    def mapping(self, name: str) -> _Reader:
        return _Reader(self.path, self.child_key(name), self.data.get(name))

    def string(self, name: str, default: str | None = None) -> str:
        value = self.data.get(name, default)
        if value is None:
            raise ConfigError(self.path, self.child_key(name), "required")
        if not isinstance(value, str) or not value:
            raise ConfigError(
                self.path, self.child_key(name), f"expected a string, got {clip(value)}"
            )
        return value

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                self.path, self.child_key(name), f"expected an integer, got {clip(value)}"
            )
        if value < minimum:
            raise ConfigError(self.path, self.child_key(name), f"must be at least {minimum}")
        return value

    def number(self, name: str, default: float, minimum: float) -> float:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(
                self.path, self.child_key(name), f"expected a number, got {clip(value)}"
            )
        if not math.isfinite(value):
            raise ConfigError(
                self.path, self.child_key(name), f"must be a finite number, got {clip(value)}"
            )
        if value < minimum:
            raise ConfigError(self.path, self.child_key(name), f"must be at least {minimum}")
        return float(value)

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise ConfigError(
                self.path, self.child_key(name), f"expected true or false, got {clip(value)}"
            )
        return value

    def absolute_path(self, name: str) -> Path:
        value = self.string(name)
        if not os.path.isabs(value):
            raise ConfigError(self.path, self.child_key(name), "must be an absolute path")
        return Path(value)

    def duration(self, name: str) -> dt.timedelta | None:
        if self.data.get(name) is None:
            return None
        return parse_duration(self.data[name], self.path, self.child_key(name))

    def address(self, name: str, default: str) -> str:
        value = self.string(name, default)
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                self.path, self.child_key(name), f"expected HOST:PORT, got {clip(value)}"
            )
        return value

    def string_list(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.path, self.child_key(name), "expected a list of strings")
        return tuple(value)


def _check_restore_targets(reader: _Reader, name: str, targets: tuple[str, ...]) -> None:
    for target in targets:
        if target.startswith("rbd:"):
            if not target[4:] or "/" in target[4:]:
                raise ConfigError(
                    reader.path, reader.child_key(name), f"expected rbd:POOL, got {clip(target)}"
                )
        elif not os.path.isabs(target) or ".." in Path(target).parts:
            raise ConfigError(
                reader.path,
                reader.child_key(name),
                f"expected an absolute path or rbd:POOL, got {clip(target)}",
            )


def _read_tls_files(reader: _Reader) -> TlsFiles | None:
    if reader.data.get("tls") is None:
        return None
    tls = reader.mapping("tls")
    tls.reject_unknown({"cert", "key"})
    return TlsFiles(tls.absolute_path("cert"), tls.absolute_path("key"))


def _read_server_security(reader: _Reader) -> ServerSecurity:
    return ServerSecurity(reader.key, _read_tls_files(reader), reader.boolean("insecure"))


def _read_access(reader: _Reader) -> dict[Role, frozenset[str]]:
    known = {role.label for role in Role}
    reader.reject_unknown(known)
    access = {}
    for label in reader.data:
        names = reader.string_list(label, ())
        for name in names:
            if len(name) > MAX_CERTIFICATE_NAME or "\0" in name:
                raise ConfigError(
                    reader.path,
                    reader.child_key(label),
                    "expected certificate names (CN or DNS SAN)",
                )
        access[Role[label.upper()]] = frozenset(names)
    return access


def _read_security(top: _Reader, hosts: Mapping[str, HostConfig]) -> Security:
    global_ = top.mapping("global")
    client = top.mapping("client")
    client.reject_unknown({"tls"})
    client_tls = _read_tls_files(client)
    ca = None
    if global_.data.get("tls") is not None:
        tls = global_.mapping("tls")
        tls.reject_unknown({"ca"})
        ca = tls.absolute_path("ca")
    elif client_tls is not None:
        raise ConfigError(top.path, "client.tls", "needs global.tls.ca (the CA to verify servers)")
    return Security(ca, _read_access(global_.mapping("access")), client_tls)


def _read_global(reader: _Reader) -> GlobalConfig:
    reader.reject_unknown(
        {
            "tls",
            "access",
            "base-dir",
            "worker-limit",
            "restore-limit",
            "stream-limit",
            "stream-idle-timeout",
            "restore-targets",
            "restore-within",
            "sla-factor",
            "verify-fraction",
            "verify-time-limit",
        },
        frozenset(_BACKY_IGNORED_GLOBAL),
    )
    base_dir = reader.string("base-dir", "/srv/lifeboat")
    if not os.path.isabs(base_dir):
        raise ConfigError(reader.path, reader.child_key("base-dir"), "must be an absolute path")
    targets = reader.string_list("restore-targets", ())
    _check_restore_targets(reader, "restore-targets", targets)
    return GlobalConfig(
        base_dir=Path(base_dir),
        worker_limit=reader.integer("worker-limit", 1, minimum=1),
        restore_limit=reader.integer("restore-limit", DEFAULT_RESTORE_LIMIT, minimum=1),
        restore_targets=targets,
        restore_within=reader.duration("restore-within"),
        sla_factor=_sla_factor(reader, 1.5),
        verify_fraction=_fraction(reader, "verify-fraction", 0.05),
        verify_time_limit=reader.duration("verify-time-limit") or dt.timedelta(minutes=10),
        stream_limit=_stream_limit(reader, DEFAULT_STREAM_LIMIT),
        stream_idle_timeout=(reader.duration("stream-idle-timeout") or DEFAULT_STREAM_IDLE_TIMEOUT),
    )


def _stream_limit(reader: _Reader, default: int) -> int:
    value = reader.integer("stream-limit", default, minimum=1)
    problem = bounds.stream_limit_problem(value)
    if problem is not None:
        raise ConfigError(
            reader.path, reader.child_key("stream-limit"), f"{problem}, got {clip(value)}"
        )
    return value


def _sla_factor(reader: _Reader, default: float) -> float:
    value = reader.number("sla-factor", default, minimum=-math.inf)
    problem = bounds.sla_factor_problem(value)
    if problem is not None:
        raise ConfigError(
            reader.path, reader.child_key("sla-factor"), f"{problem}, got {clip(value)}"
        )
    return value


def _fraction(reader: _Reader, name: str, default: float) -> float:
    value = reader.number(name, default, minimum=0.0)
    if value > 1.0:
        raise ConfigError(reader.path, reader.child_key(name), "must be between 0 and 1")
    return value


def _read_hosts(reader: _Reader, defaults: GlobalConfig) -> dict[str, HostConfig]:
    if not reader.data:
        return {
            LOCAL_HOST: HostConfig(
                LOCAL_HOST,
                DEFAULT_BACKUPD,
                DEFAULT_RESTORED,
                defaults.base_dir,
                defaults.worker_limit,
                defaults.restore_targets,
                defaults.restore_limit,
                stream_limit=defaults.stream_limit,
                stream_idle_timeout=defaults.stream_idle_timeout,
            )
        }
    hosts = {}
    for name in reader.data:
        check_name(name, reader.path, reader.child_key(str(name)))
        host = reader.mapping(name)
        host.reject_unknown(
            {
                "backupd",
                "restored",
                "base-dir",
                "worker-limit",
                "restore-targets",
                "restore-limit",
                "stream-limit",
                "stream-idle-timeout",
                "tls",
                "insecure",
            }
        )
        targets = host.string_list("restore-targets", defaults.restore_targets)
        _check_restore_targets(host, "restore-targets", targets)
        base_dir = host.string("base-dir", str(defaults.base_dir))
        if not os.path.isabs(base_dir):
            raise ConfigError(host.path, host.child_key("base-dir"), "must be an absolute path")
        hosts[name] = HostConfig(
            name=name,
            backupd=host.address("backupd", ""),
            restored=host.address("restored", ""),
            base_dir=Path(base_dir),
            worker_limit=host.integer("worker-limit", defaults.worker_limit, minimum=1),
            restore_targets=targets,
            restore_limit=host.integer("restore-limit", defaults.restore_limit, minimum=1),
            security=_read_server_security(host),
            stream_limit=_stream_limit(host, defaults.stream_limit),
            stream_idle_timeout=(
                host.duration("stream-idle-timeout") or defaults.stream_idle_timeout
            ),
        )
    return hosts


def _read_schedules(reader: _Reader) -> dict[str, Schedule]:
    schedules = {}
    for name in reader.data:
        check_name(name, reader.path, reader.child_key(str(name)))
        tags_reader = reader.mapping(name)
        tags = []
        for tag in tags_reader.data:
            check_name(tag, reader.path, tags_reader.child_key(tag), bounds.MAX_TAG_LENGTH)
            spec = tags_reader.mapping(tag)
            spec.reject_unknown({"interval", "keep"})
            interval = spec.duration("interval")
            if interval is None:
                raise ConfigError(reader.path, spec.child_key("interval"), "required")
            if interval.microseconds:
                # Slots are whole seconds apart (lifeboat.schedule).
                raise ConfigError(
                    reader.path,
                    spec.child_key("interval"),
                    f"must be a whole number of seconds, got {clip(spec.data['interval'])}",
                )
            tags.append(TagSpec(tag, interval, _keep(spec)))
        if not tags:
            raise ConfigError(
                reader.path, reader.child_key(name), "a schedule needs at least one tag"
            )
        if len(tags) > bounds.MAX_TAGS:
            raise ConfigError(
                reader.path, reader.child_key(name), f"more than {bounds.MAX_TAGS} tags"
            )
        schedules[name] = Schedule(name, tuple(tags))
    return schedules


def _keep(spec: _Reader) -> int:
    keep = spec.integer("keep", 1, minimum=1)
    problem = bounds.keep_problem(keep)
    if problem is not None:
        raise ConfigError(spec.path, spec.child_key("keep"), f"{problem}, got {clip(keep)}")
    return keep


def _read_source(reader: _Reader) -> Source:
    kind = reader.string("type")
    if kind == "file":
        reader.reject_unknown({"type", "path", "filename"})
        path = reader.data.get("path", reader.data.get("filename"))
        if path is None:
            raise ConfigError(reader.path, reader.child_key("path"), "required")
        if not isinstance(path, str) or not os.path.isabs(path):
            raise ConfigError(reader.path, reader.child_key("path"), "must be an absolute path")
        return FileSource(path)
    if kind == "ceph-rbd":
        reader.reject_unknown({"type", "pool", "image", "conf", "id"})
        conf = reader.data.get("conf", "")
        client_id = reader.data.get("id", "")
        if not isinstance(conf, str) or not isinstance(client_id, str):
            raise ConfigError(reader.path, reader.key, "conf and id must be strings")
        return CephRbdSource(reader.string("pool"), reader.string("image"), conf, client_id)
    raise ConfigError(
        reader.path,
        reader.child_key("type"),
        f"unknown source type {clip(kind)} (known: file, ceph-rbd)",
    )


def _read_job(
    reader: _Reader,
    name: str,
    hosts: Mapping[str, HostConfig],
    schedules: Mapping[str, Schedule],
    defaults: GlobalConfig,
) -> Job:
    reader.reject_unknown(
        {
            "host",
            "schedule",
            "source",
            "freeze-command",
            "freeze-timeout",
            "thaw-command",
            "restore-within",
            "sla-factor",
        }
    )
    only_host = next(iter(hosts)) if len(hosts) == 1 else None
    host = reader.string("host", only_host)
    if host not in hosts:
        raise ConfigError(
            reader.path, reader.child_key("host"), f"no host named {clip(host)} under hosts"
        )
    schedule_name = reader.string("schedule")
    if schedule_name not in schedules:
        raise ConfigError(
            reader.path, reader.child_key("schedule"), f"no schedule named {clip(schedule_name)}"
        )
    freeze = None
    if reader.data.get("freeze-command") is not None:
        freeze = FreezeHook(
            reader.string("freeze-command"),
            reader.duration("freeze-timeout") or DEFAULT_FREEZE_TIMEOUT,
            reader.string("thaw-command") if reader.data.get("thaw-command") else "",
        )
    return Job(
        name=name,
        host=host,
        schedule=schedules[schedule_name],
        source=_read_source(reader.mapping("source")),
        freeze=freeze,
        restore_within=reader.duration("restore-within") or defaults.restore_within,
        sla_factor=_sla_factor(reader, defaults.sla_factor),
    )


def parse(document: object, path: str) -> Config:
    """Validate a loaded YAML document."""
    _check_strings(document, path)
    top = _Reader(path, "", document)
    top.reject_unknown({"global", "scheduler", "monitor", "hosts", "schedules", "jobs", "client"})
    defaults = _read_global(top.mapping("global"))
    scheduler = top.mapping("scheduler")
    scheduler.reject_unknown({"listen", "tls", "insecure"})
    monitor = top.mapping("monitor")
    monitor.reject_unknown({"listen", "http", "poll-interval", "tls", "insecure"})
    hosts = _read_hosts(top.mapping("hosts"), defaults)
    schedules = _read_schedules(top.mapping("schedules"))
    jobs_reader = top.mapping("jobs")
    jobs = {}
    for name in jobs_reader.data:
        key = jobs_reader.child_key(str(name))
        check_name(name, path, key)
        jobs[name] = _read_job(jobs_reader.mapping(name), name, hosts, schedules, defaults)
    return Config(
        path=path,
        global_=defaults,
        scheduler_listen=scheduler.address("listen", DEFAULT_SCHEDULER),
        monitor_listen=monitor.address("listen", DEFAULT_MONITOR),
        monitor_http=monitor.address("http", DEFAULT_MONITOR_HTTP),
        hosts=hosts,
        schedules=schedules,
        jobs=jobs,
        monitor_poll_interval=monitor.duration("poll-interval") or DEFAULT_POLL_INTERVAL,
        security=_read_security(top, hosts),
        scheduler_security=_read_server_security(scheduler),
        monitor_security=_read_server_security(monitor),
    )


def resolve_path(path: str | None) -> str:
    """The config path: the --config argument, else $LIFEBOAT_CONFIG."""
    resolved = path or os.environ.get(CONFIG_VARIABLE)
    if not resolved:
        raise ConfigError(
            "(none)", "--config", f"no config file given and ${CONFIG_VARIABLE} is not set"
        )
    return resolved


def load(path: str | None) -> Config:
    """Read and validate the config file."""
    resolved = resolve_path(path)
    try:
        data = Path(resolved).read_bytes()
    except OSError as error:
        raise ConfigError(resolved, "(file)", error.strerror or str(error)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            resolved, "(file)", f"not UTF-8 text (invalid byte at offset {error.start})"
        ) from None
    try:
        document = yaml.load(text, Loader=_SafeLoader)
    # ValueError: an integer of thousands of digits; RecursionError: deep nesting in
    # PyYAML's pure-Python loader.
    except (yaml.YAMLError, ValueError, RecursionError) as error:
        message = _shorten(" ".join(str(error).split()), _SYNTAX_MESSAGE_LIMIT)
        raise ConfigError(resolved, "(syntax)", message) from None
    return parse(document, resolved)


def reload_error(path: str, error: Exception) -> ConfigError:
    """What went wrong while a daemon re-read `path` and applied it, as a ConfigError: one
    as it is; anything else (a bug, not the file's fault) under the key "(reload)"."""
    if isinstance(error, ConfigError):
        return error
    problem = _shorten(" ".join(f"{type(error).__name__}: {error}".split()), _SYNTAX_MESSAGE_LIMIT)
    return ConfigError(path, "(reload)", problem)
