"""The `.rev` format: its version, its typed trust and verification, and the old spelling."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from lifeboat.convert import revision_to_pb
from lifeboat.errors import DataLoss
from lifeboat.repository import Repository, RevisionMeta
from lifeboat.revision import Against, Trust, Verification, VerificationState
from lifeboat.v1 import resources_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
REVISION_ID = "20261126T193200Z-3f9a"
WHEN = dt.datetime(2026, 11, 26, 19, 32, 0, 123456, tzinfo=dt.UTC)

# A `.rev` exactly as lifeboat wrote it before `.rev` had a version (and before
# `checked-runs` had its name): every existing repository holds files like this.
UNVERSIONED_REV = f"""\
id: {REVISION_ID}
job: vm-web01
timestamp: 2026-11-26T19:32:00.123456+00:00
parent: 20261126T183200Z-0b1c
tags: [daily, hourly]
size: 4194304
block-size: 16384
checksum: xxh3-128
trust: distrusted
source: {{type: file, path: /var/lib/images/vm-web01.raw}}
stats: {{bytes-read: 4194304, bytes-written: 65536, blocks-changed: 4, duration: 0.25, full: false}}
verification:
  state: failed
  against: source
  blocks-checked: 128
  blocks-total: 256
  checked-blocks:
  - [0, 64]
  - [192, 64]
  mismatched-offsets: [32768]
  time: 2026-11-26T19:32:00.123456+00:00
"""


def every_field() -> RevisionMeta:
    return RevisionMeta(
        id=REVISION_ID,
        job="vm-web01",
        timestamp=WHEN,
        parent="20261126T183200Z-0b1c",
        tags=["daily", "manual:before-upgrade"],
        size=4 * 1024 * 1024,
        block_size=16384,
        trust=Trust.DISTRUSTED,
        source={"type": "file", "path": "/var/lib/images/vm-web01.raw"},
        stats={"bytes-read": 1, "bytes-written": 2, "blocks-changed": 3, "full": True},
        verification=Verification(
            state=VerificationState.FAILED,
            against=Against.MANIFEST,
            time=WHEN,
            blocks_checked=200,
            blocks_total=256,
            checked_runs=((0, 64), (100, 136)),
            mismatched_offsets=(16384, 65536),
            problem="/repo/vm-web01/x.sums: manifest version b'9' is not supported",
        ),
    )


def test_every_field_round_trips_and_the_version_is_written() -> None:
    meta = every_field()
    text = meta.to_yaml()
    assert text.startswith("version: 1\n")
    assert RevisionMeta.from_yaml(text) == meta


@pytest.mark.parametrize("state", list(VerificationState))
@pytest.mark.parametrize("trust", list(Trust))
def test_every_trust_and_state_round_trips_and_has_a_proto_value(
    trust: Trust, state: VerificationState
) -> None:
    meta = RevisionMeta(
        id=REVISION_ID,
        job="vm-web01",
        timestamp=WHEN,
        trust=trust,
        verification=Verification(state, Against.SOURCE),
    )
    assert RevisionMeta.from_yaml(meta.to_yaml()) == meta
    message = revision_to_pb(meta)
    assert pb.Trust.Name(message.trust) == f"TRUST_{trust.name}"
    assert pb.VerificationState.Name(message.verification.state) == (
        f"VERIFICATION_STATE_{state.name}"
    )


def test_a_revision_never_verified_round_trips_and_reads_its_old_empty_record() -> None:
    meta = RevisionMeta(id=REVISION_ID, job="vm-web01", timestamp=WHEN)
    text = meta.to_yaml()
    assert "verification" not in text
    assert RevisionMeta.from_yaml(text) == meta
    assert RevisionMeta.from_yaml(text + "verification: {}\n") == meta
    assert revision_to_pb(meta).verification.state == pb.VERIFICATION_STATE_UNSPECIFIED


def test_a_rev_without_a_version_reads_as_version_1() -> None:
    meta = RevisionMeta.from_yaml(UNVERSIONED_REV)
    assert (meta.trust, meta.good) == (Trust.DISTRUSTED, False)
    assert meta.verification == Verification(
        state=VerificationState.FAILED,
        against=Against.SOURCE,
        time=WHEN,
        blocks_checked=128,
        blocks_total=256,
        checked_runs=((0, 64), (192, 64)),
        mismatched_offsets=(32768,),
    )
    rewritten = meta.to_yaml()
    assert "checked-runs:" in rewritten and "checked-blocks" not in rewritten
    assert RevisionMeta.from_yaml(rewritten) == meta


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("trust: distrusted", "trust: maybe"), "'trust' must be trusted or distrusted"),
        (("state: failed", "state: fine"), "'state' must be passed or partial"),
        (("against: source", "against: hope"), "'against' must be source or manifest"),
        (("blocks-checked: 128", "blocks-checked: -1"), "'blocks-checked' must be a count"),
        (("- [0, 64]", "- [0]"), "'checked-runs' must be"),
        (("[32768]", "[x]"), "'mismatched-offsets' must be offsets"),
    ],
)
def test_a_wrong_word_or_number_is_data_loss(change: tuple[str, str], words: str) -> None:
    with pytest.raises(DataLoss, match=re.escape(words)):
        RevisionMeta.from_yaml(UNVERSIONED_REV.replace(*change))


@pytest.mark.parametrize(
    ("version", "shown"), [("2", "2"), ("0", "0"), ("'1'", "'1'"), ("true", "True")]
)
def test_a_rev_of_an_unknown_version_is_a_damaged_revision(
    tmp_path: Path, version: str, shown: str
) -> None:
    job = Repository(tmp_path).job("vm-web01")
    job.path.mkdir(parents=True)
    rev = job.rev_path(REVISION_ID)
    rev.write_text(f"version: {version}\n{UNVERSIONED_REV}")
    (damaged,) = job.listing().damaged
    assert damaged.file == rev
    assert damaged.reason.startswith(f"{rev}: revision metadata version {shown} is not supported")


# Where trust and verification states may be spelled as strings: their enums' module.
WORDS = re.compile(r"""["'](trusted|distrusted|passed|partial|skipped)["']""")
KEYS = re.compile(r"""["'](blocks-checked|checked-blocks|checked-runs|mismatched-offsets)["']""")


def test_trust_and_verification_words_are_spelled_only_in_lifeboat_revision() -> None:
    found = []
    for directory in ("lifeboat", "backupd", "restored", "monitor", "bench"):
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path == ROOT / "lifeboat" / "revision.py" or path.name.endswith("_pb2.py"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if WORDS.search(line) or KEYS.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []
