"""The ablation's counting and table, on a tiny constructed set with a stand-in model."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import torch
from PIL import Image

from evaluation.ablation import (
    UPLOADS,
    Counts,
    Variant,
    _off,
    cost,
    markdown,
    real_dev_files,
    run,
    upload_files,
)
from service.config import Settings
from service.vision.decode import Decoded, ImageLimits, decode_upload
from service.vision.reading import READ, Reading
from training.realdev import Item

ONE = 1


class AlwaysOne:
    """Stands in for the model (this tests the ablation, not the model): every glyph is a 1."""

    reject_threshold = None

    def __init__(self) -> None:
        self.glyphs = 0

    def predict_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        self.glyphs += len(pixels)
        rows = torch.full((len(pixels), 11), 0.01)
        rows[:, ONE] = 0.9
        return rows


def png(bars: int) -> bytes:
    """A white 96x64 page with `bars` black upright strokes, far apart (a 1 each)."""
    page = np.full((64, 96), 255, np.uint8)
    for i in range(bars):
        x = 20 + 40 * i
        page[12:52, x : x + 6] = 0
    out = io.BytesIO()
    Image.fromarray(page).save(out, format="PNG")
    return out.getvalue()


def item(label: str, source: str, kind: str) -> Item:
    return Item(f"{source}/{label}.png", label, source, kind, f"{source}-{label}")


SET = [
    (item("1", "alice", "photo"), png(1)),  # read right
    (item("7", "bob", "scan"), png(1)),  # misread, not refused
    (item("3", "bob", "scan"), png(0)),  # blank: refused
    (item("4", "usps", "lowres"), png(1)),  # bitmap set: its own column
    (item("nondigit:blank", "carol", "photo"), png(0)),  # refused, rightly
    (item("multi:11", "dave", "photo"), png(2)),  # read exactly
]


def decoded() -> list[Decoded | None]:
    limits = ImageLimits.from_settings(Settings(device="cpu"))
    return [decode_upload(data, limits) for _, data in SET]


def test_run_counts_every_column_of_the_shipped_reader() -> None:
    items = [it for it, _ in SET]
    cpu: list[float] = []
    c = run(items, decoded(), AlwaysOne(), (Variant("shipped", "as shipped"),), cpu)["shipped"]
    assert c.by_kind["photo"] == [1, 1]
    assert c.by_kind["scan"] == [0, 2]
    assert c.by_kind["usps"] == [0, 1]  # bitmap sets are counted by source, not by kind
    assert c.real == [1, 3]  # ... and stay out of the real digits
    assert c.refused == [1, 3]
    assert c.refused_by_source["bob"] == [1, 2]
    assert c.nondigits == [1, 1]
    assert c.numbers == [1, 1]
    assert len(cpu) == len(items)


def test_run_scans_once_per_distinct_reader() -> None:
    items = [it for it, _ in SET]
    model = AlwaysOne()
    variants = (
        Variant("shipped", "as shipped"),
        Variant(
            "read.tall_letter",
            "no tall-letter rule",
            read=dataclasses.replace(READ, tall_letter=False),
        ),
        Variant("glyphs.split", "no splits", _off("glyphs", "split")),
    )
    results = run(items, decoded(), model, variants)
    assert set(results) == {v.name for v in variants}
    # Five glyphs per pass (four single strokes and a number of two); the read-only variant
    # reuses the shipped scan, so the model saw two passes, not three.
    assert model.glyphs == 2 * 5


def test_counts_undecodable_file_as_refused() -> None:
    c = Counts()
    c.add(item("5", "erin", "photo"), None)
    c.add(item("multi:12", "erin", "photo"), Reading("not_a_digit", reason="x"))
    assert (c.real, c.refused, c.numbers) == ([0, 1], [1, 1], [0, 1])


def test_markdown_has_the_shipped_row_and_changes_in_files() -> None:
    base, worse = Counts(), Counts()
    base.real, worse.real = [9, 10], [7, 10]
    base.refused_by_source["bob"] = [1, 4]
    variants = (Variant("shipped", "as shipped"), Variant("x.off", "x off"))
    table = markdown({"shipped": base, "x.off": worse}, variants)
    rows = table.splitlines()
    shipped = next(r for r in rows if r.startswith("| shipped |"))
    off = next(r for r in rows if r.startswith("| x.off |"))
    assert "| 90.0 |" in shipped
    assert "(" not in shipped
    assert "| 70.0 (-2) |" in off
    assert "| bob | 1 of 4 |" in rows


def test_markdown_leaves_out_empty_columns_and_lists_refusals_a_variant_moves() -> None:
    base, off = Counts(), Counts()
    base.real, off.real = [9, 10], [9, 10]
    base.refused, off.refused = [1, 10], [2, 10]
    base.refused_by_source["bob"], off.refused_by_source["bob"] = [1, 4], [2, 4]
    variants = (Variant("shipped", "as shipped"), Variant("x.off", "x off"))
    table = markdown({"shipped": base, "x.off": off}, variants, kinds=("plain",), digits="digits")
    head = table.splitlines()[0]
    assert head == "| variant | what | digits | refused (lower is better) |", head
    assert "| x.off | bob 1 -> 2 |" in table


def test_real_dev_files_gives_the_part_asked_for(tmp_path) -> None:
    rows = ["path,label,source,kind,origin,licence,note"]
    for i in range(20):
        (tmp_path / f"{i}.png").write_bytes(png(1))
        rows.append(f"{i}.png,1,alice,photo,pic{i}.jpg,MIT,")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    val, train = (real_dev_files(tmp_path, part, 0) for part in ("validation", "train"))
    assert len(val) == 6, "30 % of the groups"
    assert len(train) == 14
    assert not {it.path for it, _ in val} & {it.path for it, _ in train}
    assert len(real_dev_files(tmp_path, "all", 0)) == 20
    assert val[0][1] == png(1)


def test_upload_files_makes_every_kind_of_each_digit() -> None:
    images = np.zeros((2, 28, 28), np.uint8)
    images[:, 6:22, 12:16] = 255
    files = upload_files(images, np.array([1, 1]), np.array([7, 9]))
    assert len(files) == 2 * len(UPLOADS)
    assert {it.kind for it, _ in files} == set(UPLOADS)
    assert all(it.source == it.kind and it.label == "1" for it, _ in files)
    plain = [data for it, data in files if it.kind == "plain"]
    assert Image.open(io.BytesIO(plain[0])).size == (28, 28)


def test_cost_gives_median_and_p99_in_ms() -> None:
    text = cost([0.001] * 99 + [0.1])
    assert "median 1.00 ms" in text
    assert "worst 100.0 ms" in text
