"""Config validation: every error names the file, the key and the problem."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lifeboat import config
from lifeboat.errors import ConfigError
from lifeboat.model import CephRbdSource, FileSource

BASE = """
global: {base-dir: /srv/lifeboat, worker-limit: 2}
hosts:
  backup01: {backupd: 127.0.0.1:9411, restored: 127.0.0.1:9412}
schedules:
  default:
    hourly: {interval: 1h, keep: 24}
    daily: {interval: 1d, keep: 7}
jobs:
  vm-web01:
    host: backup01
    schedule: default
    source: {type: file, path: /var/lib/images/vm-web01.raw}
  vm-db01:
    host: backup01
    schedule: default
    source: {type: ceph-rbd, pool: rbd, image: vm-db01.root}
"""

BACKY_SAMPLE = """
global:
  base-dir: /srv/backy
  worker-limit: 3
  status-file: /srv/backy/status
  status-interval: 30
schedules:
  default:
    daily: {interval: 1d, keep: 9}
    weekly: {interval: 7d, keep: 5}
    monthly: {interval: 30d, keep: 4}
jobs:
  test01:
    source: {type: file, filename: /srv/images/test01.img}
    schedule: default
  test02:
    source: {type: ceph-rbd, pool: rbd.ssd, image: test02.root}
    schedule: default
"""


def parse(text: str) -> config.Config:
    return config.parse(yaml.safe_load(text), "fleet.yaml")


def edited(change: dict[str, object]) -> str:
    document = yaml.safe_load(BASE)
    apply(document, change)
    return yaml.safe_dump(document)


def apply(document: dict[str, object], change: dict[str, object]) -> None:
    for dotted, value in change.items():
        node = document
        *parents, last = (part.replace("|", "/") for part in dotted.split("/"))
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value


def test_example_config_loads() -> None:
    loaded = parse(BASE)
    assert loaded.global_.worker_limit == 2
    assert set(loaded.jobs) == {"vm-web01", "vm-db01"}
    assert loaded.jobs["vm-web01"].source == FileSource("/var/lib/images/vm-web01.raw")
    assert loaded.jobs["vm-db01"].source == CephRbdSource("rbd", "vm-db01.root")
    assert loaded.jobs["vm-db01"].schedule.smallest_interval() == dt.timedelta(hours=1)
    assert loaded.hosts["backup01"].backupd == "127.0.0.1:9411"


def test_backy_config_loads_as_is() -> None:
    loaded = parse(BACKY_SAMPLE)
    assert list(loaded.hosts) == [config.LOCAL_HOST]
    assert {job.host for job in loaded.jobs.values()} == {config.LOCAL_HOST}
    assert loaded.jobs["test01"].source == FileSource("/srv/images/test01.img")
    assert loaded.global_.base_dir == Path("/srv/backy")
    assert loaded.schedules["default"].tags[1].interval == dt.timedelta(days=7)


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        pytest.param(
            {"global/worker-limit": 0}, "global.worker-limit", "at least 1", id="worker-limit"
        ),
        pytest.param(
            {"global/verify-fraction": 1.5},
            "global.verify-fraction",
            "between 0 and 1",
            id="verify-fraction",
        ),
        pytest.param({"global/base-dir": "relative"}, "global.base-dir", "absolute", id="base-dir"),
        pytest.param({"global/bogus": 1}, "global.bogus", "unknown key", id="unknown-global"),
        pytest.param(
            {"jobs/vm-web01/schedule": "nope"},
            "jobs.vm-web01.schedule",
            "no schedule",
            id="schedule",
        ),
        pytest.param({"jobs/vm-web01/host": "nope"}, "jobs.vm-web01.host", "no host", id="host"),
        pytest.param(
            {"jobs/vm-web01/source/path": None}, "jobs.vm-web01.source.path", "required", id="path"
        ),
        pytest.param(
            {"jobs/vm-web01/source/type": "nfs"},
            "jobs.vm-web01.source.type",
            "unknown source type",
            id="type",
        ),
        pytest.param(
            {"jobs/vm-db01/source/pool": None}, "jobs.vm-db01.source.pool", "required", id="pool"
        ),
        pytest.param({"jobs/a|b": {"schedule": "default"}}, "jobs.a/b", "name", id="bad-character"),
        pytest.param({"jobs/..": {"schedule": "default"}}, "jobs...", "name", id="dot-dot"),
        pytest.param(
            {"jobs/.hidden": {"schedule": "default"}}, "jobs..hidden", "name", id="leading-dot"
        ),
        pytest.param(
            {"jobs/vm-a\n": {"schedule": "default"}}, "jobs.vm-a\n", "name", id="trailing-newline"
        ),
        pytest.param(
            {"jobs/" + "x" * 65: {"schedule": "default"}},
            "jobs." + "x" * 65,
            "longer",
            id="long-name",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": "1 hour"},
            "schedules.default.hourly.interval",
            "duration",
            id="interval",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": None},
            "schedules.default.hourly.interval",
            "required",
            id="no-interval",
        ),
        pytest.param(
            {"schedules/default/hourly/keep": 0},
            "schedules.default.hourly.keep",
            "at least 1",
            id="keep",
        ),
        pytest.param(
            {"hosts/backup01/backupd": "nowhere"},
            "hosts.backup01.backupd",
            "HOST:PORT",
            id="address",
        ),
        pytest.param(
            {"global/restore-targets": ["relative/dir"]},
            "global.restore-targets",
            "absolute",
            id="targets",
        ),
        pytest.param(
            {"jobs/vm-web01/restore-within": "soon"},
            "jobs.vm-web01.restore-within",
            "duration",
            id="restore-within",
        ),
    ],
)
def test_errors_name_the_key(change: dict[str, object], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(edited(change))
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"fleet.yaml: {key}: ")


LONG_TAG = "t" * 65
MANY_TAGS = {f"t{index}": {"interval": "1h"} for index in range(33)}
FREEZE = {"jobs/vm-web01/freeze-command": "/bin/true"}
OUT_OF_BOUNDS = "between 1s and 100 years"


@pytest.mark.parametrize(
    ("change", "key", "problem"),
    [
        pytest.param(
            {"schedules/default/hourly/interval": "99999999999999d"},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-overflow",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": "1" + "0" * 5000 + "s"},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-thousands-of-digits",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": 10**30},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-huge-number",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": float("inf")},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-inf",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": float("nan")},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-nan",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": 0.5},
            "schedules.default.hourly.interval",
            OUT_OF_BOUNDS,
            id="interval-under-a-second",
        ),
        pytest.param(
            {"schedules/default/hourly/interval": 90.5},
            "schedules.default.hourly.interval",
            "must be a whole number of seconds, got 90.5",
            id="interval-fraction-of-a-second",
        ),
        pytest.param(
            {"global/restore-within": "36526d"},
            "global.restore-within",
            OUT_OF_BOUNDS,
            id="restore-within-over-100-years",
        ),
        pytest.param(
            {"jobs/vm-web01/restore-within": -5},
            "jobs.vm-web01.restore-within",
            OUT_OF_BOUNDS,
            id="restore-within-negative",
        ),
        pytest.param(
            {**FREEZE, "jobs/vm-web01/freeze-timeout": "9999999999w"},
            "jobs.vm-web01.freeze-timeout",
            OUT_OF_BOUNDS,
            id="freeze-timeout",
        ),
        pytest.param(
            {"global/verify-time-limit": 1e300},
            "global.verify-time-limit",
            OUT_OF_BOUNDS,
            id="verify-time-limit",
        ),
        pytest.param(
            {"global/stream-idle-timeout": 0.5},
            "global.stream-idle-timeout",
            OUT_OF_BOUNDS,
            id="stream-idle-timeout-under-a-second",
        ),
        pytest.param(
            {"hosts/backup01/stream-idle-timeout": "0s"},
            "hosts.backup01.stream-idle-timeout",
            OUT_OF_BOUNDS,
            id="host-stream-idle-timeout",
        ),
        pytest.param(
            {"global/stream-limit": 0},
            "global.stream-limit",
            "at least 1",
            id="no-streams",
        ),
        pytest.param(
            {"hosts/backup01/stream-limit": 10_001},
            "hosts.backup01.stream-limit",
            "between 1 and 10000",
            id="stream-limit-too-big",
        ),
        pytest.param(
            {"monitor": {"poll-interval": "0s"}},
            "monitor.poll-interval",
            OUT_OF_BOUNDS,
            id="poll-interval",
        ),
        pytest.param(
            {"schedules/default/hourly/keep": 10_001},
            "schedules.default.hourly.keep",
            "between 1 and 10000",
            id="keep-too-many",
        ),
        pytest.param(
            {"global/sla-factor": float("nan")}, "global.sla-factor", "finite", id="sla-nan"
        ),
        pytest.param(
            {"global/sla-factor": float("inf")}, "global.sla-factor", "finite", id="sla-inf"
        ),
        pytest.param(
            {"global/sla-factor": 0.5}, "global.sla-factor", "at least 1", id="sla-below-one"
        ),
        pytest.param(
            {"jobs/vm-db01/sla-factor": float("-inf")},
            "jobs.vm-db01.sla-factor",
            "finite",
            id="job-sla-inf",
        ),
        pytest.param(
            {"global/verify-fraction": float("nan")},
            "global.verify-fraction",
            "finite",
            id="verify-fraction-nan",
        ),
        pytest.param(
            {f"schedules/default/{LONG_TAG}": {"interval": "1h"}},
            f"schedules.default.{LONG_TAG}",
            "longer than 64",
            id="long-tag",
        ),
        pytest.param(
            {"schedules/many": MANY_TAGS}, "schedules.many", "more than 32 tags", id="many-tags"
        ),
        pytest.param(
            {"jobs/vm-web01/source/path": "/var/lib/a\0b"},
            "jobs.vm-web01.source.path",
            "NUL",
            id="nul-in-value",
        ),
        pytest.param(
            {"jobs/vm-\0": {"schedule": "default"}}, "jobs.vm-\\0", "NUL", id="nul-in-key"
        ),
        pytest.param(
            {"global/restore-targets": ["/srv/ok", "/srv/a\0"]},
            "global.restore-targets[1]",
            "NUL",
            id="nul-in-list",
        ),
        pytest.param(
            {"global/access": {"admin": ["ops\0"]}},
            "global.access.admin[0]",
            "NUL",
            id="nul-in-access",
        ),
        pytest.param(
            {"global/backy-thing": "x" * 1_000_000},
            "global.backy-thing",
            "unknown key",
            id="huge-value-unknown-key",
        ),
        pytest.param(
            {"jobs/vm-web01/source/type": "x" * 1_000_000},
            "jobs.vm-web01.source.type",
            "unknown source type 'xxx",
            id="huge-value-echoed",
        ),
        pytest.param(
            {"global/" + "k" * 1_000_000: 1},
            "global." + "k" * 100 + "...",
            "unknown key",
            id="huge-key",
        ),
    ],
)
def test_values_out_of_bounds_name_the_key_in_a_short_message(
    change: dict[str, object], key: str, problem: str
) -> None:
    document = yaml.safe_load(edited({}))
    apply(document, change)
    with pytest.raises(ConfigError) as caught:
        config.parse(document, "fleet.yaml")
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert len(str(caught.value)) < 400


def test_stream_limits_default_and_are_overridden_per_host() -> None:
    defaults = parse(BASE).hosts["backup01"]
    assert (defaults.stream_limit, defaults.stream_idle_timeout) == (64, dt.timedelta(minutes=1))
    document = yaml.safe_load(BASE)
    document["global"].update({"stream-limit": 8, "stream-idle-timeout": "2m"})
    document["hosts"]["backup02"] = {
        "backupd": "127.0.0.1:9421",
        "restored": "127.0.0.1:9422",
        "stream-limit": 2,
        "stream-idle-timeout": "5s",
    }
    hosts = config.parse(document, "fleet.yaml").hosts
    assert (hosts["backup01"].stream_limit, hosts["backup01"].restore_limit) == (8, 32)
    assert hosts["backup01"].stream_idle_timeout == dt.timedelta(minutes=2)
    assert hosts["backup02"].stream_limit == 2
    assert hosts["backup02"].stream_idle_timeout == dt.timedelta(seconds=5)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20s", 20), ("90m", 5400), ("1h30m", 5400), ("1d", 86400), ("2w", 1209600), (45, 45)],
)
def test_durations(text: object, seconds: int) -> None:
    assert config.parse_duration(text, "f", "k") == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "1x", "h", "-1h", "0s", True, "1h 30m"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError):
        config.parse_duration(text, "f", "k")


def test_format_duration_round_trips() -> None:
    for seconds in (20, 60, 5400, 86400, 90061):
        value = dt.timedelta(seconds=seconds)
        assert config.parse_duration(config.format_duration(value), "f", "k") == value


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(str(tmp_path / "absent.yaml"))
    assert "absent.yaml" in str(caught.value)


def test_directory_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(str(tmp_path))
    assert (caught.value.path, caught.value.key) == (str(tmp_path), "(file)")
    assert caught.value.problem == "Is a directory"


@pytest.mark.parametrize(
    ("error", "key", "problem"),
    [
        pytest.param(
            ConfigError("other.yaml", "jobs.x", "bad"), "jobs.x", "bad", id="config-error-as-is"
        ),
        pytest.param(
            ValueError("interval must be whole"),
            "(reload)",
            "ValueError: interval must be whole",
            id="bug",
        ),
        pytest.param(
            RuntimeError("line one\nline " + "x" * 1000),
            "(reload)",
            ("RuntimeError: line one line " + "x" * 1000)[:400] + "...",
            id="long-bug-one-short-line",
        ),
    ],
)
def test_reload_error_names_the_file_key_and_problem(
    error: Exception, key: str, problem: str
) -> None:
    failure = config.reload_error("fleet.yaml", error)
    assert (failure.key, failure.problem) == (key, problem)
    assert failure.path == ("other.yaml" if isinstance(error, ConfigError) else "fleet.yaml")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("jobs: [unclosed\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert caught.value.key == "(syntax)"


def test_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(BASE)
    monkeypatch.setenv(config.CONFIG_VARIABLE, str(path))
    assert config.load(None).path == str(path)
    monkeypatch.delenv(config.CONFIG_VARIABLE)
    with pytest.raises(ConfigError, match="LIFEBOAT_CONFIG"):
        config.load(None)


@pytest.mark.parametrize(
    ("content", "key", "problem"),
    [
        pytest.param(b"global: {base-dir: /srv/\xff}\n", "(file)", "not UTF-8", id="not-utf8"),
        pytest.param(b"global: {worker-limit: " + b"9" * 5000 + b"}\n", "(syntax)", "", id="int"),
        pytest.param(b'global: {base-dir: "/a\\0"}\n', "global.base-dir", "NUL", id="nul"),
        pytest.param(
            b"schedules: {d: {h: {interval: 99999999999999d}}}\n",
            "schedules.d.h.interval",
            OUT_OF_BOUNDS,
            id="overflow",
        ),
        pytest.param(
            b"jobs: &a {x: *a}\n",
            "jobs.x.x",
            "unknown key",
            id="alias-cycle",
        ),
    ],
)
def test_load_reports_bad_files_as_config_errors(
    tmp_path: Path, content: bytes, key: str, problem: str
) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        config.load(str(path))
    assert (caught.value.path, caught.value.key) == (str(path), key)
    assert problem in caught.value.problem
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize(
    ("content", "key"),
    [
        pytest.param(
            BASE.replace("interval: 1h", "interval: 99999999999999d").encode(),
            "schedules.default.hourly.interval",
            id="overflowing-interval",
        ),
        pytest.param(
            BASE.replace("/srv/lifeboat", "/srv/\xe9t\xe9").encode("latin-1"),
            "(file)",
            id="latin-1",
        ),
    ],
)
def test_daemon_exits_2_naming_file_and_key(tmp_path: Path, content: bytes, key: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "backupd.cli", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert f"{path}: {key}: " in result.stderr
    assert "Traceback" not in result.stderr
