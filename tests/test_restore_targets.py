"""Restore targets: which are allowed (resolve_target), and what only files or block
devices do."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from lifeboat.errors import (
    FailedPrecondition,
    InvalidArgument,
    LifeboatError,
    NotFound,
    PermissionDenied,
)
from restored.targets import (
    BlockDeviceTarget,
    FileTarget,
    RbdImageTarget,
    TargetPolicy,
    resolve_target,
)
from tests.support.needs import need_root

MiB = 1024 * 1024


# --- which targets are allowed -----------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """restore/ (allowed), restore-evil/ and outside/ (not), repo/ (the repository)."""
    paths = {name: tmp_path / name for name in ("restore", "restore-evil", "outside", "repo")}
    for path in paths.values():
        path.mkdir()
    (paths["restore"] / "sub").mkdir()
    (paths["restore"] / "escape").symlink_to(paths["outside"])
    (paths["restore"] / "link.raw").symlink_to(paths["outside"] / "x.raw")
    (paths["restore"] / "inner.raw").symlink_to(paths["restore"] / "sub" / "y.raw")
    return paths


def policy_for(layout: dict[str, Path], *extra: str) -> TargetPolicy:
    return TargetPolicy("backup01", (str(layout["restore"]), "rbd:restore", *extra), layout["repo"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("{restore}/vm.raw", "{restore}/vm.raw", id="file-under-prefix"),
        pytest.param("{restore}/sub/../vm.raw", "{restore}/vm.raw", id="dotdot-inside"),
        pytest.param("{restore}/inner.raw", "{restore}/sub/y.raw", id="symlink-inside"),
        pytest.param("rbd:restore/vm-web01", "rbd:restore/vm-web01", id="rbd-allowed-pool"),
    ],
)
def test_allowed_targets_resolve(layout: dict[str, Path], text: str, expected: str) -> None:
    names = {name: str(path) for name, path in layout.items()}
    target = resolve_target(text.format(**names), policy_for(layout))
    assert target.key == expected.format(**names)


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        pytest.param("{outside}/vm.raw", PermissionDenied, "not under", id="outside"),
        pytest.param("{restore}/../outside/vm.raw", PermissionDenied, "not under", id="dotdot"),
        pytest.param("{restore}/escape/vm.raw", PermissionDenied, "not under", id="symlink-dir"),
        pytest.param("{restore}/link.raw", PermissionDenied, "not under", id="symlink-file"),
        pytest.param("{restore-evil}/vm.raw", PermissionDenied, "not under", id="string-prefix"),
        pytest.param("{restore}/repo/vm.raw", PermissionDenied, "repository", id="in-repo"),
        pytest.param("rbd:other/vm", PermissionDenied, "pool 'other'", id="rbd-other-pool"),
        pytest.param("vm.raw", InvalidArgument, "target", id="relative"),
        pytest.param("", InvalidArgument, "target", id="empty"),
        pytest.param("rbd:restore", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-no-image"),
        pytest.param("rbd:restore/a/b", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-namespace"),
        pytest.param("rbd:restore/vm@snap", InvalidArgument, "rbd:POOL/IMAGE", id="rbd-snapshot"),
    ],
)
def test_refused_targets(
    layout: dict[str, Path], text: str, error: type[LifeboatError], words: str
) -> None:
    (layout["restore"] / "repo").symlink_to(layout["repo"])
    names = {name: str(path) for name, path in layout.items()}
    with pytest.raises(error) as raised:
        resolve_target(text.format(**names), policy_for(layout))
    assert words in str(raised.value)


def test_repository_under_an_allowed_prefix_is_still_refused(tmp_path: Path) -> None:
    policy = TargetPolicy("backup01", (str(tmp_path),), tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    with pytest.raises(PermissionDenied, match="repository"):
        resolve_target(str(tmp_path / "repo" / "vm-web01" / "x.raw"), policy)
    assert isinstance(resolve_target(str(tmp_path / "x.raw"), policy), FileTarget)


def test_rbd_target_parts(layout: dict[str, Path]) -> None:
    target = resolve_target("rbd:restore/vm-web01.root", policy_for(layout))
    assert isinstance(target, RbdImageTarget)
    assert (target.pool, target.image_name) == ("restore", "vm-web01.root")


# --- files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error"),
    [
        pytest.param("sub", InvalidArgument, id="directory"),
        pytest.param("missing/vm.raw", NotFound, id="missing-directory"),
    ],
)
def test_open_refuses(layout: dict[str, Path], name: str, error: type[LifeboatError]) -> None:
    policy = policy_for(layout)
    target = resolve_target(str(layout["restore"] / name), policy)
    assert isinstance(target, FileTarget)
    with pytest.raises(error):
        target.open(4096, overwrite=True)
    assert sorted(p.name for p in layout["restore"].iterdir()) == [
        "escape",
        "inner.raw",
        "link.raw",
        "sub",
    ]


def test_directory_swapped_for_a_symlink_after_the_check_is_refused(
    layout: dict[str, Path],
) -> None:
    policy = policy_for(layout)
    target = resolve_target(str(layout["restore"] / "sub" / "vm.raw"), policy)
    (layout["restore"] / "sub").rmdir()
    (layout["restore"] / "sub").symlink_to(layout["outside"])
    with pytest.raises(PermissionDenied):
        target.open(4096, overwrite=False)
    assert list(layout["outside"].iterdir()) == []


@pytest.mark.parametrize(
    ("existing", "final"),
    [pytest.param(None, 0o600, id="new-file"), pytest.param(0o644, 0o644, id="replaced")],
)
def test_the_file_being_restored_is_private_until_it_is_in_place(
    layout: dict[str, Path], existing: int | None, final: int
) -> None:
    path = layout["restore"] / "vm.raw"
    if existing is not None:
        path.write_bytes(b"old")
        os.chmod(path, existing)
    target = resolve_target(str(path), policy_for(layout))
    old_umask = os.umask(0o022)
    try:
        target.open(4096, overwrite=True)
    finally:
        os.umask(old_umask)
    target.write(0, memoryview(b"new data"))
    (temporary,) = layout["restore"].glob(".vm.raw.*.tmp")
    assert stat.S_IMODE(temporary.stat().st_mode) == 0o600
    target.finish()
    assert stat.S_IMODE(path.stat().st_mode) == final
    assert path.read_bytes()[:8] == b"new data"


# --- block devices -----------------------------------------------------------------------


def test_a_block_device_in_use_is_refused(tmp_path: Path) -> None:
    need_root()
    backing = tmp_path / "disk.img"
    backing.write_bytes(b"\xa5" * MiB)
    device = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        policy = TargetPolicy("backup01", (device,), tmp_path / "repo")
        target = resolve_target(device, policy)
        assert isinstance(target, BlockDeviceTarget)
        claimed = os.open(device, os.O_RDONLY | os.O_EXCL)  # as a mount would claim it
        try:
            with pytest.raises(FailedPrecondition, match="in use"):
                target.open(4096, overwrite=True)
        finally:
            os.close(claimed)
        with pytest.raises(FailedPrecondition, match="holds 1048576 bytes"):
            target.open(2 * MiB, overwrite=True)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)
    assert backing.read_bytes() == b"\xa5" * MiB
