"""Decoding's memory budget: costs bound the real peak, the budget queues and refuses, and
a rejected upload leaves nothing behind for the garbage collector."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.errors import InvalidImage, Overloaded, PayloadTooLarge
from service.serving.dataplane import DataPlane, NamedFile
from service.vision.decode import DecodeBudget, ImageLimits, cheap_to_decode, decode, decode_gray
from service.vision.preprocess import Scan

LIMITS = ImageLimits.from_settings(Settings())


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


# Each measured in a fresh process: the peak resident memory of one decode (VmHWM, reset
# through /proc/self/clear_refs) must stay under what the budget reserved for it.
_PEAK_SCRIPT = textwrap.dedent(
    """
    import io, json, sys
    import numpy as np
    from PIL import Image
    from service.config import Settings
    from service.vision.decode import ImageLimits, decode, decode_cost
    from service.vision.preprocess import preprocess

    LIMITS = ImageLimits.from_settings(Settings())

    def enc(img, fmt, **kw):
        buf = io.BytesIO(); img.save(buf, format=fmt, **kw); return buf.getvalue()

    side = int(sys.argv[2])
    cases = {
        "webp": lambda: enc(Image.new("L", (side, side), 255), "WEBP", lossless=True),
        "palette+alpha": lambda: enc(Image.new("P", (side, side), 0), "PNG", transparency=0),
        "1-bit": lambda: enc(Image.new("1", (side, side), 1), "PNG"),
        "rgba": lambda: enc(Image.new("RGBA", (side, side), (9, 9, 9, 200)), "PNG"),
        "float-tiff": lambda: enc(
            Image.fromarray(np.zeros((side, side), np.float32), "F"), "TIFF",
            compression="tiff_deflate"),
    }
    data = cases[sys.argv[1]]()
    cost = decode_cost(*decode(data, LIMITS).size)
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    # Warm up (first-use allocations of numpy, scipy and Pillow are not the decode's).
    try:
        preprocess(enc(Image.new("L", (1500, 1500), 200), "PNG"), LIMITS)
    except Exception:
        pass
    open("/proc/self/clear_refs", "w").write("5")
    before = status("VmRSS")
    try:
        preprocess(data, LIMITS)
    except Exception:
        pass
    print(json.dumps({"peak": status("VmHWM") - before, "cost": cost, "bytes": len(data)}))
    """
)


@pytest.mark.parametrize("kind", ["webp", "palette+alpha", "1-bit", "rgba", "float-tiff"])
def test_a_decode_stays_within_the_memory_it_reserved(kind: str) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, kind, "4000"],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["bytes"] < 100_000  # a small file...
    assert figures["peak"] > 8 << 20  # ...that really costs memory to decode,
    assert figures["peak"] <= figures["cost"]  # and no more than its reservation


def test_small_files_with_huge_headers_are_refused_before_decoding() -> None:
    limits = LIMITS
    for data in (
        encode(Image.new("1", (40_000_000, 1)), "PNG"),  # 5 KB
        encode(Image.new("L", (6000, 6000), 255), "WEBP", lossless=True),  # 1.4 KB
    ):
        assert len(data) < 8192
        with pytest.raises(PayloadTooLarge):
            decode(data, limits)


def test_long_thin_images_are_refused_but_small_ones_pass() -> None:
    with pytest.raises(PayloadTooLarge, match="times apart"):
        decode(encode(Image.new("L", (40_000, 100)), "PNG"), LIMITS)
    assert decode(encode(Image.new("L", (40, 1)), "PNG"), LIMITS).size == (40, 1)


def test_only_small_plain_pngs_count_as_cheap() -> None:
    assert cheap_to_decode(encode(Image.new("L", (28, 28)), "PNG"))
    assert not cheap_to_decode(encode(Image.new("L", (1000, 1000)), "PNG"))  # tiny file
    assert not cheap_to_decode(encode(Image.new("L", (28, 28)), "WEBP", lossless=True))
    assert not cheap_to_decode(encode(Image.new("L", (28, 28)), "PNG") + b"\0" * 5000)


def test_budget_makes_big_decodes_wait_for_each_other() -> None:
    budget = DecodeBudget(100, wait_s=5)
    inside, peak = 0, 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal inside, peak
        with budget.reserve(60):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.05)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=job) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 1
    assert budget.used == 0


def test_budget_refuses_what_can_never_fit_and_times_out_when_full() -> None:
    budget = DecodeBudget(100, wait_s=0.05)
    with pytest.raises(PayloadTooLarge, match="MiB to decode"):
        budget.reserve(101).__enter__()
    with budget.reserve(80), pytest.raises(Overloaded):
        budget.reserve(30).__enter__()
    assert budget.used == 0


def test_a_request_decodes_a_bounded_number_of_pixels_in_all() -> None:
    request = DecodeBudget(1 << 30).for_request(max_pixels=25_000)
    image = encode(Image.new("L", (100, 100), 9), "PNG")
    decode_gray(image, LIMITS, request)
    decode_gray(image, LIMITS, request)
    with pytest.raises(PayloadTooLarge, match="25000 pixels in all"):
        decode_gray(image, LIMITS, request)


def test_budget_too_small_for_the_pixel_limit_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="decode_memory_mib must be at least"):
        Settings(max_image_pixels=100_000_000)


def test_rejected_uploads_leave_no_garbage_holding_their_pixels() -> None:
    """A refused image's error must not keep its arrays alive through a reference cycle:
    the server's tuned GC would only free them much later (a leak in practice)."""
    plane = DataPlane.__new__(DataPlane)  # only the decode path: no model, no batcher
    plane.settings = Settings()
    plane.limits = LIMITS
    plane.decode_budget = DecodeBudget(1 << 30)
    from concurrent.futures import ThreadPoolExecutor

    plane._pool = ThreadPoolExecutor(2)
    # A truncated photo: its pixels are decoded before the damage is found. (A blank page
    # is no longer refused: it is a "not_a_digit" answer.)
    photo = encode(Image.effect_noise((1500, 1500), 40).convert("RGB"), "JPEG")
    blank = photo[: len(photo) // 2]
    files = [NamedFile("cut.jpg", blank)]
    many = [NamedFile(f"{i}.jpg", blank) for i in range(3)]

    async def reject(batch: list[NamedFile]) -> None:
        with pytest.raises(InvalidImage):
            await plane.decode_images(batch)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(5):
            asyncio.run(reject(files))
            asyncio.run(reject(many))
        gc.collect()
        # Arrays and bytes are not tracked by the GC themselves: look at what the garbage
        # (frames, tracebacks, lists) holds.
        held = [r for o in gc.garbage for r in gc.get_referents(o)]
        big = [
            r
            for r in held
            if (isinstance(r, np.ndarray) and r.nbytes > 100_000)
            or (isinstance(r, bytes) and len(r) > 1000)
        ]
        assert big == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        plane._pool.shutdown()


def test_decode_gray_keeps_the_working_copy_small() -> None:
    gray = decode_gray(encode(Image.new("1", (5000, 3000), 1), "PNG"), LIMITS)
    assert max(gray.shape) == 1024
    assert gray.dtype == np.float32


def test_an_abandoned_request_stops_decoding_its_remaining_files() -> None:
    """A client that hangs up (or a deadline) cancels the request: files not yet started
    are never decoded, so the CPU goes to requests someone still waits for."""
    from concurrent.futures import ThreadPoolExecutor

    decoded: list[int] = []
    gate = threading.Event()

    plane = DataPlane.__new__(DataPlane)
    plane.settings = Settings(preprocess_threads=1)
    plane.limits = LIMITS
    plane.decode_budget = DecodeBudget(1 << 30)
    plane._pool = ThreadPoolExecutor(1)

    def slow_decode(data: bytes, one_digit: bool = False, budget: object = None) -> Scan:
        gate.wait(5)
        decoded.append(len(data))
        return Scan((), "blank")

    plane._decode_one = slow_decode  # type: ignore[method-assign]
    files = [NamedFile(f"{i}.png", b"x" * (i + 1)) for i in range(64)]

    async def hang_up() -> None:
        task = asyncio.create_task(plane.decode_images(files))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gate.set()  # the file being decoded finishes; no other starts

    asyncio.run(hang_up())
    plane._pool.shutdown(wait=True)
    assert 1 <= len(decoded) <= 2, len(decoded)
