"""The web page in a real Chromium against a real server: draw, upload, errors, layout."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import png_bytes


def stroke(page: Page, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through canvas-relative points (canvas is 280x280 CSS px here)."""
    box = page.get_by_test_id("canvas").bounding_box()
    assert box is not None
    sx, sy = box["width"] / 280, box["height"] / 280

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * sx, box["y"] + y * sy

    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for x, y in points[1:]:
        page.mouse.move(*at(x, y), steps=4)
    page.mouse.up()


def line(a: tuple[float, float], b: tuple[float, float], n: int = 12) -> list[tuple[float, float]]:
    return [(a[0] + (b[0] - a[0]) * t / n, a[1] + (b[1] - a[1]) * t / n) for t in range(n + 1)]


DRAWINGS = {
    "1": [line((150, 45), (135, 235))],
    "0": [
        [
            (140 + 62 * math.sin(t / 24 * 2 * math.pi), 140 - 92 * math.cos(t / 24 * 2 * math.pi))
            for t in range(26)
        ]
    ],  # fmt: skip
    "7": [line((75, 55), (210, 55)) + line((210, 55), (120, 235))[1:]],
}


@pytest.mark.parametrize("digit", ["1", "0", "7"])
def test_page_drawn_digit_is_predicted(page: Page, digit: str) -> None:
    page.get_by_test_id("clear").click()
    for points in DRAWINGS[digit]:
        stroke(page, points)
    expect(page.get_by_test_id("prediction")).to_have_text(re.compile(rf"^{digit}\b"))
    seen = page.locator("#draw-result img.seen")
    expect(seen).to_have_attribute("src", re.compile(r"^data:image/png;base64,"))


def test_page_clear_resets_the_prediction(page: Page) -> None:
    stroke(page, DRAWINGS["1"][0])
    expect(page.get_by_test_id("prediction")).to_have_text(re.compile(r"^1"))
    page.get_by_test_id("clear").click()
    expect(page.get_by_test_id("prediction")).to_have_text("–")


def test_page_upload_shows_digits_for_each_file(page: Page, mnist_sample, tmp_path) -> None:
    images, labels = mnist_sample
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        path.write_bytes(png_bytes(images[i]))
        paths.append(str(path))
    page.get_by_test_id("upload").set_input_files(paths)
    cells = page.locator("#grid .result .digit")
    expect(cells).to_have_count(3)
    assert cells.all_inner_texts() == [str(int(v)) for v in labels[:3]]
    expect(page.get_by_test_id("prediction")).to_have_text(re.compile(rf"^{int(labels[2])}\b"))
    expect(page.locator("#grid .bars").first).to_be_visible()


def test_page_non_image_upload_shows_a_readable_error(page: Page, tmp_path: Path) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not an image")
    page.get_by_test_id("upload").set_input_files(str(bad))
    error = page.get_by_role("alert")
    expect(error).to_be_visible()
    expect(error).to_contain_text("not a supported image file")
    expect(page.locator("#grid .result.failed")).to_contain_text("notes.txt")


def test_page_shows_a_bad_file_beside_the_good_ones(
    page: Page, mnist_sample, tmp_path: Path
) -> None:
    images, labels = mnist_sample
    good = tmp_path / "digit.png"
    good.write_bytes(png_bytes(images[0]))
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.get_by_test_id("upload").set_input_files([str(good), str(bad)])
    expect(page.locator("#grid .result .digit")).to_have_text(str(int(labels[0])))
    expect(page.locator("#grid .result.failed")).to_contain_text("broken.png")
    expect(page.get_by_test_id("prediction")).to_have_text(re.compile(rf"^{int(labels[0])}\b"))


def test_page_phone_width_and_screenshots(
    page: Page, browser, server, mnist_sample, tmp_path
) -> None:
    images, _ = mnist_sample
    stroke(page, DRAWINGS["7"][0])
    expect(page.get_by_test_id("prediction")).to_have_text(re.compile(r"^7"))
    paths = []
    for i in range(4):
        path = tmp_path / f"d{i}.png"
        path.write_bytes(png_bytes(images[10 + i]))
        paths.append(str(path))
    page.get_by_test_id("upload").set_input_files(paths)
    expect(page.locator("#grid .result .digit")).to_have_count(4)
    page.screenshot(path=str(tmp_path / "desktop.png"), full_page=True)
    phone = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
    mobile = phone.new_page()
    mobile.goto(server.url + "/")
    width = mobile.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"page overflows a phone screen: {width}px"
    canvas = mobile.get_by_test_id("canvas").bounding_box()
    assert canvas is not None
    assert canvas["x"] >= 0
    assert canvas["x"] + canvas["width"] <= 390
    mobile.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    phone.close()
    assert (tmp_path / "desktop.png").stat().st_size > 10_000


def test_page_controls_are_labelled_and_keyboard_reachable(page: Page) -> None:
    expect(page.get_by_role("button", name="Clear")).to_be_visible()
    canvas = page.get_by_label("Drawing area: draw one digit with mouse, pen or touch")
    expect(canvas).to_be_visible()
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused in {"clear", "upload", "api-key"}


def test_page_upload_shows_not_a_digit_and_boxes_of_a_number(
    page: Page, mnist_sample, tmp_path: Path
) -> None:
    images, labels = mnist_sample
    from PIL import Image

    row = np.full((130, 250), 255, np.uint8)  # two digits side by side, ink on paper
    for i, x in enumerate((15, 135)):
        up = np.asarray(Image.fromarray(images[20 + i]).resize((100, 100), Image.BICUBIC))
        row[15:115, x : x + 100] = 255 - up
    (tmp_path / "number.png").write_bytes(png_bytes(row))
    (tmp_path / "blank.png").write_bytes(png_bytes(np.full((60, 60), 255, np.uint8)))
    page.get_by_test_id("upload").set_input_files(
        [str(tmp_path / "number.png"), str(tmp_path / "blank.png")]
    )
    answers = page.locator("#grid .result .digit")
    expect(answers).to_have_count(2)
    assert answers.all_inner_texts() == [f"{int(labels[20])}{int(labels[21])}", "not a digit"]
    boxes = page.locator("#grid .result.number canvas.boxes")
    expect(boxes).to_have_attribute("aria-label", "number.png with 2 digits boxed")
    expect(page.locator("#grid .result.not_a_digit .reason")).to_contain_text("blank")
