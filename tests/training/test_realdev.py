"""The real-dev manifest, its grouped validation split and the preprocessing cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training.conftest import write_realdev
from training.data import DataError
from training.realdev import NOT_A_DIGIT, Item, load_realdev, read_manifest, split


def test_manifest_items_know_their_class(tmp_path: Path) -> None:
    items = read_manifest(write_realdev(tmp_path / "dev"))
    digits = [it for it in items if it.is_digit]
    assert len(digits) == 40
    assert all(it.target == int(it.label) for it in digits)
    nondigits = [it for it in items if it.is_nondigit]
    assert len(nondigits) == 9
    assert {it.target for it in nondigits} == {NOT_A_DIGIT}
    assert sum(it.label.startswith("multi:") for it in items) == 1


def test_missing_manifest_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="manifest not found"):
        read_manifest(tmp_path)


def test_crops_of_one_picture_row_share_a_group() -> None:
    def crop(box: str) -> Item:
        return Item("p.png", "1", "s", "photo", f"r@c:img.jpg crop {box}")

    same_row = crop("0,100,40,140"), crop("50,104,90,144")
    other_row = crop("0,200,40,240")
    assert same_row[0].group == same_row[1].group
    assert other_row.group != same_row[0].group
    assert Item("a", "1", "s", "lowres", "r@c:a.png").group == "r@c:a.png"


def test_split_is_deterministic_stratified_and_keeps_groups_together(tmp_path: Path) -> None:
    items = read_manifest(write_realdev(tmp_path / "dev"))
    val = split(items, seed=0)
    np.testing.assert_array_equal(val, split(items, seed=0))
    assert 0 < val.sum() < len(items)
    groups: dict[str, set[bool]] = {}
    for item, v in zip(items, val, strict=True):
        groups.setdefault(f"{item.source}/{item.label}/{item.group}", set()).add(bool(v))
    assert all(len(sides) == 1 for sides in groups.values())
    # Both the bitmap set and the photos give some of their items to validation.
    for source in ("usps", "photo-src"):
        part = [bool(v) for it, v in zip(items, val, strict=True) if it.source == source]
        assert any(part)
        assert not all(part)


def test_load_realdev_preprocesses_like_the_server_and_caches(tmp_path: Path) -> None:
    root = write_realdev(tmp_path / "dev")
    dev = load_realdev(root, tmp_path / "cache")
    assert dev.pixels.shape == (len(dev.items), 28, 28)
    assert dev.pixels.dtype == np.uint8
    blank = [i for i, it in enumerate(dev.items) if it.label == "nondigit:blank_paper"]
    assert not dev.ok[blank].any()  # the server finds nothing to read there
    digits = [i for i, it in enumerate(dev.items) if it.is_digit]
    assert dev.ok[digits].all()
    assert (dev.pixels[digits].reshape(len(digits), -1).max(1) > 200).all()
    cached = list((tmp_path / "cache").glob("realdev-*.npz"))
    assert len(cached) == 1
    again = load_realdev(root, tmp_path / "cache")
    np.testing.assert_array_equal(again.pixels, dev.pixels)
    x, y = dev.select(np.ones(len(dev.items), bool))
    assert len(x) == len(y) == int(dev.ok.sum())
