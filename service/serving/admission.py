"""Admission: whether a worker takes more work, judged by the wait it would cause.

Work-conserving by design. A request is refused (503 `overloaded`) only when

- the wait the work already admitted implies, plus this request's own, would pass the
  request deadline (a request admitted past that point would time out anyway), or the hard
  memory bound on images held (`max_queue_size`) would be passed; or
- other clients are waiting, the queue is near that limit, and this client already holds
  more than its fair share of it: room is kept for the others.

A lone client (one address behind a proxy, a load balancer, a test harness) can therefore
use the whole queue. The wait is estimated from measured costs, so the bound follows the
machine and the model rather than a fixed image count: seconds per image of the forward
pass, and of decoding for small files, and seconds per byte of decoding for big ones (a
photo of megabytes costs a thousand times a 28x28 PNG: one mean per image of both let a few
photos make the worker refuse a burst of small uploads it could read in a second). Images
already decoded and queued cost only their forward. Each mean spans the last images (or
bytes) measured, weighted by them, not by requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from service.errors import Overloaded


@dataclass(frozen=True)
class AdmissionPolicy:
    #: Hard bound on images announced or queued per worker (memory, not time).
    max_images: int
    #: Longest expected wait a request may be admitted into (its deadline, less a margin).
    max_wait_s: float
    #: Share of the limit kept free for other clients while they are waiting.
    headroom: float = 0.25
    #: Files up to this size are costed per image, bigger ones per byte of the upload.
    small_file_bytes: int = 64 * 1024
    #: A small file that took longer than this to decode is far bigger in pixels than in
    #: bytes (a megapixel PNG of blank paper): it says nothing about the cost of the other
    #: small files, and is left out of their mean (docs/limits.md).
    small_file_max_s: float = 0.005
    #: Images (and bytes of big files) the cost means span: older ones fade as newer come.
    horizon_images: int = 1024
    horizon_bytes: int = 64 * 1024 * 1024
    #: Images (bytes) measured before a mean is trusted (the first decodes and the first
    #: forward at a new batch size are slow once); until then it counts as nothing.
    min_images: int = 32
    min_bytes: int = 1024 * 1024
    #: Retry-After bounds, in seconds.
    min_retry_s: int = 1
    max_retry_s: int = 30

    @classmethod
    def for_deadline(cls, max_images: int, deadline_s: float) -> AdmissionPolicy:
        # A margin under the deadline: the estimate is an average, the deadline is not.
        return cls(max_images=max_images, max_wait_s=0.8 * deadline_s)


class _Cost:
    """Seconds per unit (an image, a byte) over roughly the last `horizon` units, weighted
    by units: one huge sample moves the mean by its share of the horizon, not by one
    request's worth."""

    __slots__ = ("_seconds", "_units", "_horizon", "_seen", "_min")

    def __init__(self, horizon: int, minimum: int) -> None:
        self._seconds = 0.0
        self._units = 0.0
        self._horizon = horizon
        self._seen = 0
        self._min = minimum

    def add(self, units: int, seconds: float) -> None:
        keep = max(0.0, 1.0 - units / self._horizon)
        self._seconds = self._seconds * keep + seconds
        self._units = self._units * keep + units
        self._seen += units

    @property
    def value(self) -> float:
        return self._seconds / self._units if self._seen >= self._min else 0.0


class Admission:
    """Decides admission for one worker's batcher; knows nothing of HTTP."""

    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self._decode = _Cost(policy.horizon_images, policy.min_images)
        self._decode_byte = _Cost(policy.horizon_bytes, policy.min_bytes)
        self._forward = _Cost(policy.horizon_images, policy.min_images)

    # ------------------------------------------------------------------ measurements

    def observe_forward(self, images: int, seconds: float) -> None:
        if images > 0:
            self._forward.add(images, seconds)

    def observe_decode(self, files: Iterable[tuple[int, float]]) -> None:
        """Each decoded file's size in bytes and its decoding's CPU seconds."""
        small = big = 0
        small_s = big_s = 0.0
        limit = self.policy.small_file_bytes
        for size, seconds in files:
            if size <= limit:
                if seconds <= self.policy.small_file_max_s:
                    small, small_s = small + 1, small_s + seconds
            else:
                big, big_s = big + size, big_s + seconds
        if small:
            self._decode.add(small, small_s)
        if big:
            self._decode_byte.add(big, big_s)

    def big_bytes(self, sizes: Sequence[int]) -> int:
        """The bytes of the files among `sizes` that are costed by size."""
        limit = self.policy.small_file_bytes
        return sum(s for s in sizes if s > limit)

    @property
    def seconds_per_image(self) -> float:
        """Measured cost of one small image from upload to probabilities (0 before any)."""
        return self._decode.value + self._forward.value

    def expected_wait_s(
        self, images: int, decoding: int | None = None, big_bytes: int = 0
    ) -> float:
        """Seconds of work in `images` of which `decoding` (default: all) are still to be
        decoded, `big_bytes` of them in big files."""
        decoding = images if decoding is None else decoding
        return (
            images * self._forward.value
            + decoding * self._decode.value
            + big_bytes * self._decode_byte.value
        )

    # ------------------------------------------------------------------ the decision

    def limit(self) -> int:
        """Small images this worker may hold: the memory bound, or what fits the deadline."""
        per = self.seconds_per_image
        if per <= 0:
            return self.policy.max_images
        fits = int(self.policy.max_wait_s / per + 1e-9)  # 1e-9: a mean of equal samples
        return max(1, min(self.policy.max_images, fits))

    def check(
        self,
        images: int,
        client: Hashable,
        pending: int,
        by_client: Counter,
        *,
        decoding: int | None = None,
        pending_big_bytes: int = 0,
        big_bytes: int = 0,
    ) -> None:
        """Raise Overloaded (with Retry-After from the expected wait) or return.

        `pending` images are held (`decoding` of them, default all, not decoded yet, with
        `pending_big_bytes` in big files); this request brings `images` (`big_bytes`)."""
        if pending > 0:
            ahead = self.expected_wait_s(pending, decoding, pending_big_bytes)
            wait = ahead + self.expected_wait_s(images, images, big_bytes)
            # NOTE: 1 ns of slack: sums of float means of equal costs land on either side.
            over = wait > self.policy.max_wait_s + 1e-9
            if over or pending + images > self.policy.max_images:
                excess = max(wait - self.policy.max_wait_s, 0.0)
                raise Overloaded(
                    f"server is at capacity ({pending} images pending, about {ahead:.1f} s "
                    "of work); retry shortly",
                    retry_after_s=self._retry_after_s(excess),
                )
        mine = by_client.get(client, 0)
        others = len(by_client) - (1 if mine else 0)
        if not mine or not others:
            return  # a newcomer, or a client alone: no one to keep room for
        limit = self.limit()
        share = limit // (others + 1)
        if mine + images > share and pending + images > limit * (1 - self.policy.headroom):
            raise Overloaded(
                f"this client already has {mine} images pending while {others} other "
                f"client{'s are' if others > 1 else ' is'} waiting; retry shortly",
                retry_after_s=self.retry_after(mine),
            )

    def retry_after(self, images: int) -> int:
        """Whole seconds until the queue should have room for `images` more."""
        return self._retry_after_s(self.expected_wait_s(images))

    def _retry_after_s(self, seconds: float) -> int:
        wait = math.ceil(seconds)
        return max(self.policy.min_retry_s, min(self.policy.max_retry_s, wait))
