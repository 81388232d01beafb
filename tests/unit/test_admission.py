"""Admission: refusals follow the expected wait, and the fair share binds only under contention."""

from __future__ import annotations

from collections import Counter

import pytest

from service.errors import Overloaded
from service.serving.admission import Admission, AdmissionPolicy


def admission(max_images: int = 10_000, max_wait_s: float = 1.0) -> Admission:
    return Admission(AdmissionPolicy(max_images=max_images, max_wait_s=max_wait_s))


def test_before_any_measurement_only_the_memory_bound_applies() -> None:
    a = admission(max_images=100)
    assert a.limit() == 100
    a.check(64, "a", 36, Counter(a=36))
    with pytest.raises(Overloaded, match="at capacity"):
        a.check(65, "a", 36, Counter(a=36))


def test_the_limit_is_what_fits_the_deadline() -> None:
    a = admission(max_wait_s=1.0)
    a.observe_decode([(300, 0.001)] * 100)  # 1 ms per image
    a.observe_forward(100, 0.1)  # 1 ms per image
    assert a.seconds_per_image == pytest.approx(0.002)
    assert a.limit() == 500  # 1 s / 2 ms
    a.check(64, "a", 436, Counter(a=436))
    with pytest.raises(Overloaded) as info:
        a.check(64, "a", 440, Counter(a=440))
    # Retry-After: the excess (4 images) would be worked off in well under a second.
    assert info.value.headers["Retry-After"] == "1"


def test_big_photos_do_not_make_the_worker_refuse_small_uploads() -> None:
    # Seen in CI: a few big photos, each a large share of a second of decoding, made a mean
    # per image say 10-25 ms, and the worker refused a 1,024-image burst of 28x28 PNGs.
    a = admission(max_images=100_000, max_wait_s=8.0)
    for _ in range(64):
        a.observe_decode([(300, 0.0002)] * 16)  # 0.2 ms a small image
        a.observe_forward(16, 16 * 0.0001)
    before = a.limit()
    a.observe_decode([(3_000_000, 0.3)] * 8)  # eight 3 MB photos, 0.3 s each
    assert a.limit() == before  # small images are costed by small images
    a.check(64, "a", 1024, Counter(a=1024))
    # A photo still to decode is costed by its bytes: 40 of them (12 s of work) are refused.
    photos = 40 * 3_000_000
    with pytest.raises(Overloaded, match="at capacity") as info:
        a.check(1, "a", 40, Counter(a=40), pending_big_bytes=photos, big_bytes=3_000_000)
    assert info.value.headers["Retry-After"] == "5"  # (41 x 0.3 s - 8 s), rounded up
    # Decoded and queued, the same 40 images cost only their forward.
    a.check(1, "a", 40, Counter(a=40), decoding=0)
    # A worker that really became slow (every image costs more) is judged by it, quickly.
    for _ in range(64):
        a.observe_forward(16, 16 * 0.01)
    assert a.limit() < before / 10


def test_a_small_file_that_decodes_slowly_is_left_out_of_the_small_mean() -> None:
    # Seen in CI: synthetic photos of blank paper are megapixels in a few KB; costed as
    # small files they made a 28x28 PNG look 5 ms, and 1,536 pending images 7.9 s of work.
    a = admission(max_images=100_000, max_wait_s=8.0)
    a.observe_decode([(300, 0.0001)] * 64)
    a.observe_forward(64, 64 * 0.0001)
    before = a.limit()
    a.observe_decode([(23_000, 0.4)] * 20)  # 16-megapixel PNGs of 23 KB
    assert a.limit() == before
    a.check(64, "a", 1536, Counter(a=1536))


def test_retry_after_grows_with_the_work_ahead() -> None:
    a = admission(max_images=100_000, max_wait_s=0.5)
    a.observe_forward(100, 1.0)  # 10 ms per image: 50 images fit
    with pytest.raises(Overloaded) as info:
        a.check(64, "b", 450, Counter(a=450))
    assert info.value.headers["Retry-After"] == str(5)  # (450 + 64 - 50) x 10 ms, rounded up
    assert a.retry_after(100_000) == 30  # bounded


def test_the_first_images_measured_do_not_set_the_limit_alone() -> None:
    a = admission(max_images=1000, max_wait_s=1.0)
    a.observe_decode([(300, 0.5)])  # the first decode in a process: imports, caches
    a.observe_forward(12, 0.2)  # the first forward at a batch size warm-up did not run
    assert a.limit() == 1000
    a.observe_forward(64, 64 * 0.01)
    assert a.limit() < 1000


def test_an_idle_worker_admits_even_a_request_over_the_limit() -> None:
    a = admission(max_wait_s=0.01)
    a.observe_forward(100, 1.0)
    a.check(64, "a", 0, Counter())  # refusing it would leave the model idle


def test_a_lone_client_is_never_held_to_a_share() -> None:
    a = admission(max_images=100)
    a.check(10, "a", 90, Counter(a=90))


def test_the_share_binds_only_while_others_wait_and_the_queue_is_near_full() -> None:
    a = admission(max_images=100)
    waiting = Counter(a=70, b=5)
    with pytest.raises(Overloaded, match="1 other client is waiting"):
        a.check(10, "a", 75, waiting)  # 85 > 75 % of 100, and a holds more than half
    a.check(10, "b", 75, waiting)  # b is within its share
    a.check(1, "a", 40, Counter(a=35, b=5))  # plenty of room left: no refusal
    a.check(10, "c", 75, waiting)  # a newcomer is never refused below the limit
