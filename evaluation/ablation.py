"""What each stage and rule of the reader earns, on the real-dev validation part.

    python -m evaluation.ablation --real-dev DIR [--model-dir models/mnist-cnn/4]

Runs the reader (`service.vision`) in-process, with the served model, once as shipped and
once per variant: a stage or rule turned off or replaced by its simplest form (a field of
the stage's parameters). Each file is decoded once and its bytes' scan reused by variants
that change only the read stage. Reports, per variant, digit accuracy per kind (and the
two bitmap sets), real digits refused as "not a digit", non-digits refused and numbers
read exactly, with the change against the shipped reader; then, for the shipped reader,
false rejections per source and the reader's CPU time per file (median, p99, worst).

In-process rather than over HTTP: the same `scan` and `read` as the data plane, without
25 server restarts (`python -m evaluation` through the API gives the same counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.errors import ServiceError
from service.serving.model import Classifier
from service.serving.repository import ModelRepository
from service.vision.decode import Decoded, ImageLimits, decode_upload
from service.vision.preprocess import READER, Reader, Scan, scan_decoded
from service.vision.reading import READ, Reading, ReadParams, read
from training.realdev import BITMAP_SOURCES, Item, read_manifest, split

logger = logging.getLogger("evaluation.ablation")

#: Report columns: real-upload kinds, then the bitmap sets.
KINDS = ("photo", "scan", "drawing", "lowres", *BITMAP_SOURCES)


@dataclass(frozen=True)
class Variant:
    """A named change to the reader: its stages' parameters and its read rules."""

    name: str
    what: str
    reader: Reader = READER
    read: ReadParams = READ


def _off(stage: str, *names: str, **values: Any) -> Reader:
    """The shipped reader with `stage`'s bool fields `names` off (and other fields set)."""
    params = getattr(READER, stage)
    return dataclasses.replace(
        READER, **{stage: dataclasses.replace(params, **dict.fromkeys(names, False), **values)}
    )


VARIANTS: tuple[Variant, ...] = (
    Variant("shipped", "the reader as it ships"),
    Variant("ink.lighting", "no lighting fit: one flat background level", _off("ink", "lighting")),
    Variant("ink.hysteresis", "one threshold instead of hysteresis", _off("ink", "hysteresis")),
    Variant("ink.noise", "no texture and speck refusal", _off("ink", "noise")),
    Variant(
        "ink.pass_through", "28x28 MNIST-like images normalised too", _off("ink", "pass_through")
    ),
    Variant(
        "page.all",
        "no page stage at all",
        _off("page", "skew", "rulings", "frames", "cells", "lone_lines", "remnants"),
    ),  # fmt: skip
    Variant("page.skew", "askew pages not turned", _off("page", "skew")),
    Variant("page.rulings", "ruled lines kept", _off("page", "rulings")),
    Variant("page.frames", "frames and grid lines kept", _off("page", "frames")),
    Variant("page.cells", "rows of form cells kept", _off("page", "cells")),
    Variant("page.lone_lines", "underlines kept", _off("page", "lone_lines")),
    Variant("page.mend", "strokes crossing lines not mended", _off("page", "mend")),
    Variant("page.fringe", "frame lines not grown over their edges", _off("page", "fringe")),
    Variant("page.slivers", "slivers beside lines kept", _off("page", "slivers")),
    Variant(
        "page.bold_ring", "a bold 0 filling its crop taken as a frame", _off("page", "bold_ring")
    ),
    Variant("page.remnants", "frame remnants along the edges kept", _off("page", "remnants")),
    Variant("glyphs.edge_lines", "page-edge lines kept as glyphs", _off("glyphs", "edge_lines")),
    Variant("glyphs.merge", "a digit's pieces not merged", _off("glyphs", "merge_stacked")),
    Variant("glyphs.fragments", "cut fragments at the edges kept", _off("glyphs", "cut_fragments")),
    Variant("glyphs.connected", "every row and far blob kept", _off("glyphs", "keep_connected")),
    Variant("glyphs.split", "touching digits not split", _off("glyphs", "split")),
    Variant(
        "numbers.lattice", "numbers by geometry alone: no candidates", _off("numbers", "lattice")
    ),
    Variant("normalise.level", "strokes not levelled to full ink", _off("normalise", "level")),
    Variant("normalise.widen", "thin strokes not widened", _off("normalise", "widen")),
    Variant(
        "read.mostly_rejected",
        "no 'most marks rejected' rule",
        read=dataclasses.replace(READ, mostly_rejected=False),
    ),  # fmt: skip
    Variant(
        "read.tall_letter",
        "no 'tall rejected mark' rule",
        read=dataclasses.replace(READ, tall_letter=False),
    ),  # fmt: skip
)


@dataclass
class Counts:
    """One variant's counts on the validation part."""

    by_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    refused_by_source: dict[str, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )
    real: list[int] = field(default_factory=lambda: [0, 0])
    refused: list[int] = field(default_factory=lambda: [0, 0])
    nondigits: list[int] = field(default_factory=lambda: [0, 0])
    numbers: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, item: Item, answer: Reading | None) -> None:
        """Count one file's answer (None: the file could not be decoded)."""
        kind = answer.kind if answer is not None else "not_a_digit"

        def tally(cell: list[int], ok: bool) -> None:
            cell[0] += int(ok)
            cell[1] += 1

        if item.is_digit:
            ok = answer is not None and kind == "digit" and answer.digit == int(item.label)
            group = item.source if item.source in BITMAP_SOURCES else item.kind
            tally(self.by_kind[group], ok)
            if item.source not in BITMAP_SOURCES:
                tally(self.real, ok)
                tally(self.refused, kind == "not_a_digit")
            tally(self.refused_by_source[item.source], kind == "not_a_digit")
        elif item.is_nondigit:
            tally(self.nondigits, kind == "not_a_digit")
        else:
            want = item.label.split(":", 1)[1]
            got = ((answer.number if answer is not None else None) or "").replace("\n", "")
            tally(self.numbers, kind in ("digit", "number") and got == want)

    def json(self) -> dict[str, Any]:
        return {
            "by_kind": dict(self.by_kind),
            "refused_by_source": dict(self.refused_by_source),
            "real": self.real,
            "refused": self.refused,
            "nondigits": self.nondigits,
            "numbers": self.numbers,
        }


def _predict(clf: Classifier, scans: list[Scan | None]) -> list[list[list[float]]]:
    """The model's probability rows for every glyph of every scan, in batches."""
    pixels = [g.pixels for s in scans if s is not None for g in s.inputs]
    rows: list[list[float]] = []
    for start in range(0, len(pixels), _BATCH):
        rows += clf.predict_pixels(np.stack(pixels[start : start + _BATCH])).tolist()
    out, at = [], 0
    for s in scans:
        n = len(s.inputs) if s is not None else 0
        out.append(rows[at : at + n])
        at += n
    return out


_BATCH = 256


def run(
    items: list[Item],
    decoded: list[Decoded | None],
    clf: Classifier,
    variants: tuple[Variant, ...] = VARIANTS,
    cpu: list[float] | None = None,
) -> dict[str, Counts]:
    """Counts per variant name; `cpu` gets the shipped reader's CPU seconds per file."""
    results: dict[str, Counts] = {}
    cache: dict[Reader, tuple[list[Scan | None], list[list[list[float]]]]] = {}
    for v in variants:
        started = time.process_time()
        if v.reader not in cache:
            scans: list[Scan | None] = []
            for d in decoded:
                t = time.thread_time()
                scans.append(None if d is None else scan_decoded(d, reader=v.reader))
                if cpu is not None and v.reader is READER:
                    cpu.append(time.thread_time() - t)
            cache[v.reader] = (scans, _predict(clf, scans))
        scans, rows = cache[v.reader]
        counts = Counts()
        threshold = clf.reject_threshold
        for item, s, r in zip(items, scans, rows, strict=True):
            counts.add(item, None if s is None else read(s, r, threshold, v.read))
        results[v.name] = counts
        logger.info("%-22s %5.1f s CPU", v.name, time.process_time() - started)
    return results


def _rate(cell: list[int] | None) -> str:
    if not cell or not cell[1]:
        return "–"
    return f"{100 * cell[0] / cell[1]:.1f}"


def markdown(results: dict[str, Counts], variants: tuple[Variant, ...] = VARIANTS) -> str:
    """The ablation table: % per column, and the change in files against "shipped"."""
    base = results["shipped"]
    cols: list[tuple[str, Callable[[Counts], list[int] | None], int]] = [
        *((k, (lambda c, k=k: c.by_kind.get(k)), 1) for k in KINDS),
        ("real digits", lambda c: c.real, 1),
        ("refused (lower is better)", lambda c: c.refused, -1),
        ("non-digits refused", lambda c: c.nondigits, 1),
        ("numbers exact", lambda c: c.numbers, 1),
    ]
    head = "| variant | what | " + " | ".join(name for name, _, _ in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for v in variants:
        c = results[v.name]
        cells = []
        for _, get, _sign in cols:
            now, was = get(c), get(base)
            text = _rate(now)
            delta = (now or [0])[0] - (was or [0])[0]
            if v.name != "shipped" and delta:
                text += f" ({delta:+d})"
            cells.append(text)
        lines.append(f"| {v.name} | {v.what} | " + " | ".join(cells) + " |")
    lines += ["", "Real digits refused as \"not a digit\", shipped reader, by source "
              "(sources with any):", "", "| source | refused |", "|---|---:|"]  # fmt: skip
    for src, (n, total) in sorted(base.refused_by_source.items()):
        if n:
            lines.append(f"| {src} | {n} of {total} |")
    return "\n".join(lines) + "\n"


def cost(cpu: list[float]) -> str:
    ms = np.array(cpu) * 1000
    return (
        f"Reader CPU per file (thread time, decode included, {len(ms)} files): "
        f"median {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"worst {ms.max():.1f} ms\n"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m evaluation.ablation", description=__doc__)
    p.add_argument("--real-dev", type=Path, required=True, help="real-upload set folder")
    p.add_argument("--model-dir", type=Path, help="a model version folder (default: served)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--only", nargs="*", help="variant names to run (shipped always runs)")
    p.add_argument("--all", action="store_true", help="the whole set, not the validation part")
    p.add_argument("--json", type=Path, help="also write the counts here")
    args = p.parse_args(argv)
    settings = Settings(device="cpu")
    if args.model_dir is not None:
        from service.serving.model import resolve_device

        clf = Classifier.load(args.model_dir, resolve_device("cpu"), warmup_batch_sizes=(1,))
    else:
        clf = ModelRepository(settings).load()
    items = read_manifest(args.real_dev)
    if not args.all:
        val = split(items, seed=args.seed)
        items = [it for it, v in zip(items, val, strict=True) if v]
    limits = ImageLimits.from_settings(settings)
    decoded: list[Decoded | None] = []
    decode_cpu: list[float] = []
    for it in items:
        data = (args.real_dev / it.path).read_bytes()
        started = time.thread_time()
        try:
            decoded.append(decode_upload(data, limits))
        except ServiceError:
            decoded.append(None)
        decode_cpu.append(time.thread_time() - started)
    variants = tuple(v for v in VARIANTS if not args.only or v.name in {"shipped", *args.only})
    logger.info("model %s v%s, %d files", clf.name, clf.version, len(items))
    cpu: list[float] = []
    results = run(items, decoded, clf, variants, cpu)
    total = [a + b for a, b in zip(decode_cpu, cpu, strict=True)]
    sys.stdout.write(markdown(results, variants) + "\n" + cost(total))
    if args.json:
        body = {name: c.json() for name, c in results.items()}
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
