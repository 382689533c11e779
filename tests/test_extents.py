"""Extent arithmetic used to plan which bytes a backup reads."""

from __future__ import annotations

import pytest

from backupd import extents


@pytest.mark.parametrize(
    ("given", "gap", "expected"),
    [
        pytest.param([], 0, [], id="empty"),
        pytest.param([(10, 5), (0, 5)], 0, [(0, 5), (10, 5)], id="sorted"),
        pytest.param([(0, 5), (5, 5)], 0, [(0, 10)], id="adjacent"),
        pytest.param([(0, 10), (3, 2)], 0, [(0, 10)], id="contained"),
        pytest.param([(0, 5), (8, 2)], 3, [(0, 10)], id="within-gap"),
        pytest.param([(0, 5), (9, 2)], 3, [(0, 5), (9, 2)], id="beyond-gap"),
        pytest.param([(0, 0), (4, 1)], 0, [(4, 1)], id="empty-extent-dropped"),
    ],
)
def test_merge(given: list[extents.Extent], gap: int, expected: list[extents.Extent]) -> None:
    assert extents.merge(given, gap) == expected


@pytest.mark.parametrize(
    ("given", "size", "expected"),
    [
        pytest.param([(5, 1)], 100, [(0, 16)], id="grow-to-block"),
        pytest.param([(15, 2)], 100, [(0, 32)], id="straddle"),
        pytest.param([(90, 20)], 100, [(80, 20)], id="clipped-at-size"),
        pytest.param([(0, 16), (16, 16)], 100, [(0, 32)], id="merged"),
    ],
)
def test_align(given: list[extents.Extent], size: int, expected: list[extents.Extent]) -> None:
    assert extents.align(given, 16, size) == expected


def test_clip_split_total() -> None:
    assert extents.clip([(0, 10), (20, 10)], 5, 25) == [(5, 5), (20, 5)]
    assert extents.split([(0, 10)], 4) == [(0, 4), (4, 4), (8, 2)]
    assert extents.total([(0, 10), (20, 5)]) == 15
