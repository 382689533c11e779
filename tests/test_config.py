"""Config validation: every error names the file, the key and the problem."""

from __future__ import annotations

import datetime as dt
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
    for dotted, value in change.items():
        node = document
        *parents, last = (part.replace("|", "/") for part in dotted.split("/"))
        for key in parents:
            node = node[key]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return yaml.safe_dump(document)


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
