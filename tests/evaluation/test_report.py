"""The evaluation's scoring and its naive-resize baseline, on answers and images built here."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from evaluation.client import Answer, naive_pixels
from evaluation.report import markdown, score_real_dev
from training.realdev import Item


def _items() -> list[Item]:
    return [
        Item("photo/3_0.jpg", "3", "zox", "photo", "o1"),
        Item("photo/5_0.jpg", "5", "zox", "photo", "o2"),
        Item("usps/1_0.png", "1", "usps", "dataset", "o3"),
        Item("nondigit/x_0.png", "nondigit:letter", "a", "drawing", "o4"),
        Item("nondigit/y_0.png", "nondigit:noise", "gen", "dataset", "o5"),
        Item("multi/12_0.png", "multi:12", "zox", "photo", "o6"),
        Item("multi/34_0.png", "multi:34", "zox", "photo", "o7"),
    ]


def test_score_counts_only_unrejected_right_digits_and_exact_numbers() -> None:
    answers = [
        Answer("digit", 3, "3", 0.9, 200),  # right
        Answer("not_a_digit", None, None, None, 200),  # a real digit wrongly rejected
        Answer("digit", 7, "7", 0.6, 200),  # wrong bitmap digit
        Answer("not_a_digit", None, None, None, 200),  # rejected: right
        Answer("not_a_digit", None, None, None, 422),  # refused as unreadable: rejected too
        Answer("number", None, "12", 0.8, 200),  # exact
        Answer("number", None, "3\n4", 0.8, 200),  # rows are joined before comparing
    ]
    baseline = np.array([3, 0, 1])  # one answer per digit item, in order
    res = score_real_dev(_items(), answers, baseline, np.ones(7, bool)).json()
    assert res["by_kind"]["photo"] == {"correct": 1, "total": 2, "rate": 0.5}
    assert res["by_kind"]["usps"]["rate"] == 0.0
    assert res["by_source"]["zox"]["total"] == 2
    assert res["real_digits"]["rate"] == 0.5
    assert res["false_rejection"] == {"correct": 1, "total": 2, "rate": 0.5}
    assert res["nondigit_rejection"]["rate"] == 1.0
    assert res["numbers_exact"] == {"correct": 2, "total": 2, "rate": 1.0}
    assert res["baseline_by_kind"]["usps"]["rate"] == 1.0
    assert res["baseline_real_digits"]["rate"] == 0.5


def test_score_respects_the_mask() -> None:
    answers = [Answer("digit", 3, "3", 0.9, 200)] * 7
    mask = np.array([True] + [False] * 6)
    res = score_real_dev(_items(), answers, np.array([3, 3, 3]), mask).json()
    assert res["real_digits"] == {"correct": 1, "total": 1, "rate": 1.0}
    assert res["nondigit_rejection"]["total"] == 0
    text = markdown({"model": {"name": "m", "version": "2"},
                     "real_dev": {"validation": res, "all": res}})  # fmt: skip
    assert "| digits: photo | 100.0 % (1/1) |" in text


def _png(arr: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_naive_pixels_resizes_and_inverts_paper_only() -> None:
    paper = np.full((100, 60), 255, np.uint8)
    paper[20:80, 25:35] = 0  # a dark bar on white
    px = naive_pixels(_png(paper, "L"))
    assert px.shape == (28, 28)
    assert px.dtype == np.uint8
    assert px[0, 0] == 0
    assert px[14, 14] == 255
    board = 255 - paper
    np.testing.assert_array_equal(naive_pixels(_png(board, "L")), px)
    rgba = np.zeros((100, 60, 4), np.uint8)
    rgba[20:80, 25:35, 3] = 255  # black ink on a transparent canvas
    np.testing.assert_array_equal(naive_pixels(_png(rgba, "RGBA")), px)
