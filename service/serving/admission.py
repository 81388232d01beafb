"""Admission: whether a worker takes more work, judged by the wait it would cause.

Work-conserving by design. A request is refused (503 `overloaded`) only when

- the wait the queued work already implies, plus this request's own, would pass the
  request deadline (a request admitted past that point would time out anyway), or the hard
  memory bound on images held (`max_queue_size`) would be passed; or
- other clients are waiting, the queue is near that limit, and this client already holds
  more than its fair share of it: room is kept for the others.

A lone client (one address behind a proxy, a load balancer, a test harness) can therefore
use the whole queue. The wait is estimated from measured costs: seconds per image of
preprocessing and of the forward pass, each averaged over the last images (weighted by
images, not by requests), so the bound follows the machine and the model rather than a
fixed image count, and one slow outlier (a 12-megapixel photo, a stalled thread) cannot
make the worker refuse the small uploads behind it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
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
    #: Images the cost averages span: older measurements fade as newer images arrive.
    horizon_images: int = 1024
    #: Images measured before the averages are trusted (the first decodes and the first
    #: forward at a new batch size are slow once); until then only `max_images` applies.
    min_images: int = 32
    #: Retry-After bounds, in seconds.
    min_retry_s: int = 1
    max_retry_s: int = 30

    @classmethod
    def for_deadline(cls, max_images: int, deadline_s: float) -> AdmissionPolicy:
        # A margin under the deadline: the estimate is an average, the deadline is not.
        return cls(max_images=max_images, max_wait_s=0.8 * deadline_s)


class _CostPerImage:
    """Seconds per image over roughly the last `horizon` images.

    Weighted by images: a request of one image moves the mean by one image's worth, so a
    single huge upload (seconds of decoding) shifts it by a fraction, where a mean of
    per-request samples let it set the worker's limit for the next few dozen requests.
    """

    __slots__ = ("_seconds", "_images", "_horizon", "_seen", "_min")

    def __init__(self, horizon: int, min_images: int) -> None:
        self._seconds = 0.0
        self._images = 0.0
        self._horizon = horizon
        self._seen = 0
        self._min = min_images

    def add(self, images: int, seconds: float) -> None:
        keep = max(0.0, 1.0 - images / self._horizon)
        self._seconds = self._seconds * keep + seconds
        self._images = self._images * keep + images
        self._seen += images

    @property
    def value(self) -> float:
        return self._seconds / self._images if self._seen >= self._min else 0.0


class Admission:
    """Decides admission for one worker's batcher; knows nothing of HTTP."""

    def __init__(self, policy: AdmissionPolicy) -> None:
        self.policy = policy
        self._decode = _CostPerImage(policy.horizon_images, policy.min_images)
        self._forward = _CostPerImage(policy.horizon_images, policy.min_images)

    # ------------------------------------------------------------------ measurements

    def observe_forward(self, images: int, seconds: float) -> None:
        if images > 0:
            self._forward.add(images, seconds)

    def observe_decode(self, images: int, seconds: float) -> None:
        if images > 0:
            self._decode.add(images, seconds)

    @property
    def seconds_per_image(self) -> float:
        """Measured cost of one image from upload to probabilities (0 before any)."""
        return self._decode.value + self._forward.value

    def expected_wait_s(self, images: int) -> float:
        return images * self.seconds_per_image

    # ------------------------------------------------------------------ the decision

    def limit(self) -> int:
        """Images this worker may hold: the memory bound, or what fits the deadline."""
        per = self.seconds_per_image
        if per <= 0:
            return self.policy.max_images
        return max(1, min(self.policy.max_images, int(self.policy.max_wait_s / per)))

    def check(self, images: int, client: Hashable, pending: int, by_client: Counter) -> None:
        """Raise Overloaded (with Retry-After from the expected wait) or return."""
        limit = self.limit()
        if pending + images > limit and pending > 0:
            raise Overloaded(
                f"server is at capacity ({pending} images pending, about "
                f"{self.expected_wait_s(pending):.1f} s of work); retry shortly",
                retry_after_s=self.retry_after(pending + images - limit),
            )
        mine = by_client.get(client, 0)
        others = len(by_client) - (1 if mine else 0)
        if not mine or not others:
            return  # a newcomer, or a client alone: no one to keep room for
        share = limit // (others + 1)
        if mine + images > share and pending + images > limit * (1 - self.policy.headroom):
            raise Overloaded(
                f"this client already has {mine} images pending while {others} other "
                f"client{'s are' if others > 1 else ' is'} waiting; retry shortly",
                retry_after_s=self.retry_after(mine),
            )

    def retry_after(self, images: int) -> int:
        """Whole seconds until the queue should have room for `images` more."""
        wait = math.ceil(self.expected_wait_s(images))
        return max(self.policy.min_retry_s, min(self.policy.max_retry_s, wait))
