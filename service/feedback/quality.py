"""Quality: live accuracy, rejection precision and recall, and calibration (ECE) per model
version, computed from the store's tallies and exposed to Prometheus as gauges."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.feedback.store import Agreement, Tally


@dataclass(frozen=True)
class VersionQuality:
    """What the feedback of a window says about one version's answers (`role` "served" for
    what clients got, "shadow" for a candidate's answers that nobody saw)."""

    version: str
    role: str
    labelled: int
    accuracy: float | None
    rejection_precision: float | None
    rejection_recall: float | None
    ece: float | None

    @classmethod
    def of(cls, t: Tally) -> VersionQuality:
        with_confidence = sum(n for n, _, _ in t.bins.values())
        # Expected calibration error: per bin, |right answers - summed confidence|, over all.
        gap = sum(abs(right - conf) for _, right, conf in t.bins.values())
        return cls(
            t.version,
            t.role,
            t.labelled,
            _ratio(t.correct, t.labelled),
            _ratio(t.rejected_right, t.rejected),
            _ratio(t.rejected_right, t.not_digits),
            _ratio(gap, with_confidence),
        )


@dataclass(frozen=True)
class ShadowAgreement:
    """A shadow version beside the served one on the same files: how often they agree, and
    of the files with feedback, each one's accuracy (a fair comparison: the same sample)."""

    version: str
    compared: int
    agreement: float | None
    labelled: int
    served_accuracy: float | None
    shadow_accuracy: float | None

    @classmethod
    def of(cls, a: Agreement) -> ShadowAgreement:
        return cls(
            a.version,
            a.compared,
            _ratio(a.agreed, a.compared),
            a.labelled,
            _ratio(a.served_right, a.labelled),
            _ratio(a.shadow_right, a.labelled),
        )


@dataclass(frozen=True)
class QualitySnapshot:
    """The window's figures at one moment (`at`, epoch seconds; 0 before the first)."""

    window_s: float
    at: float = 0.0
    versions: list[VersionQuality] = field(default_factory=list)
    shadows: list[ShadowAgreement] = field(default_factory=list)


def snapshot_of(
    tallies: list[Tally], agreements: list[Agreement], window_s: float, at: float
) -> QualitySnapshot:
    return QualitySnapshot(
        window_s,
        at,
        [VersionQuality.of(t) for t in tallies],
        [ShadowAgreement.of(a) for a in agreements],
    )


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


class QualityCollector(Collector):
    """The latest snapshot as gauges, read at scrape time. Every worker computes its
    snapshot from the same store, so whichever worker answers a scrape gives the same
    figures (up to one refresh)."""

    def __init__(self, latest: object) -> None:
        self._latest = latest  # a callable returning the QualitySnapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap: QualitySnapshot = self._latest()  # type: ignore[operator]
        labels = ["version", "role"]
        families = {
            "labelled": GaugeMetricFamily(
                "mnist_feedback_labelled", "Answers with feedback in the window", labels=labels
            ),
            "accuracy": GaugeMetricFamily(
                "mnist_feedback_accuracy", "Share of labelled answers that were right",
                labels=labels,
            ),
            "rejection_precision": GaugeMetricFamily(
                "mnist_feedback_rejection_precision",
                "Of the 'not a digit' answers, the share truly not a digit", labels=labels,
            ),
            "rejection_recall": GaugeMetricFamily(
                "mnist_feedback_rejection_recall",
                "Of the truly not-a-digit uploads, the share answered 'not a digit'",
                labels=labels,
            ),
            "ece": GaugeMetricFamily(
                "mnist_feedback_calibration_error",
                "Expected calibration error (10 bins) of the answers' confidence", labels=labels,
            ),
        }  # fmt: skip
        for q in snap.versions:
            key = [q.version, q.role]
            families["labelled"].add_metric(key, q.labelled)
            for name in ("accuracy", "rejection_precision", "rejection_recall", "ece"):
                value = getattr(q, name)
                if value is not None:
                    families[name].add_metric(key, value)
        yield from families.values()
        agreement = GaugeMetricFamily(
            "mnist_shadow_agreement",
            "Share of a shadow version's answers equal to the served ones",
            labels=["version"],
        )
        compared = GaugeMetricFamily(
            "mnist_shadow_compared", "Shadow answers compared in the window", labels=["version"]
        )
        for s in snap.shadows:
            compared.add_metric([s.version], s.compared)
            if s.agreement is not None:
                agreement.add_metric([s.version], s.agreement)
        yield agreement
        yield compared
        window = GaugeMetricFamily(
            "mnist_feedback_window_seconds", "The sliding window the feedback figures cover"
        )
        window.add_metric([], snap.window_s)
        yield window
