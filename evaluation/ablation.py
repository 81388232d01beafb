"""What each stage and rule of the reader earns, on the real-dev validation part.

    python -m evaluation.ablation --real-dev DIR [--part train] [--model-dir models/mnist-cnn/4]
    python -m evaluation.ablation --uploads MNIST_DIR [--count 200]

Runs the reader (`service.vision`) in-process, with the served model, once as shipped and
once per variant: a stage or rule turned off or replaced by its simplest form (a field of
the stage's parameters). Each file is decoded once and its bytes' scan reused by variants
that change only the read stage. Reports, per variant, digit accuracy per kind (and the
two bitmap sets), real digits refused as "not a digit", non-digits refused and numbers
read exactly, with the change against the shipped reader; then, for the shipped reader,
false rejections per source and the reader's CPU time per file (median, p99, worst).

A second set to confirm a verdict on: `--part train` (or `all`) runs on the training part of
real-dev instead, and `--uploads` on generated uploads (`evaluation.uploads`, and each digit
as a plain 28x28 PNG) of the MNIST training digits the served model's training held out
(its card's seed and validation size), never the MNIST test set.

In-process rather than over HTTP: the same `scan` and `read` as the data plane, without
25 server restarts (`python -m evaluation` through the API gives the same counts).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
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
from PIL import Image

from evaluation.uploads import KINDS as UPLOAD_MAKERS
from evaluation.uploads import Maker
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
#: Parts of real-dev the ablation runs on (the split's validation side, the other, both).
PARTS = ("validation", "train", "all")


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
    Variant("page.slivers", "slivers beside lines kept", _off("page", "slivers")),
    Variant(
        "page.bold_ring", "a bold 0 filling its crop taken as a frame", _off("page", "bold_ring")
    ),
    Variant("page.remnants", "frame remnants along the edges kept", _off("page", "remnants")),
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


def markdown(
    results: dict[str, Counts],
    variants: tuple[Variant, ...] = VARIANTS,
    kinds: tuple[str, ...] = KINDS,
    digits: str = "real digits",
) -> str:
    """The ablation table: % per column, and the change in files against "shipped"; then
    the shipped reader's false rejections per source, and those a variant changes."""
    base = results["shipped"]
    cols: list[tuple[str, Callable[[Counts], list[int] | None]]] = [
        *((k, (lambda c, k=k: c.by_kind.get(k))) for k in kinds),
        (digits, lambda c: c.real),
        ("refused (lower is better)", lambda c: c.refused),
        ("non-digits refused", lambda c: c.nondigits),
        ("numbers exact", lambda c: c.numbers),
    ]
    # A column the set holds nothing for (generated uploads have no non-digits) is left out.
    cols = [(name, get) for name, get in cols if (get(base) or [0, 0])[1]]
    head = "| variant | what | " + " | ".join(name for name, _ in cols) + " |"
    lines = [head, "|---|---|" + "---:|" * len(cols)]
    for v in variants:
        c = results[v.name]
        cells = []
        for _, get in cols:
            now, was = get(c), get(base)
            text = _rate(now)
            delta = (now or [0])[0] - (was or [0])[0]
            if v.name != "shipped" and delta:
                text += f" ({delta:+d})"
            cells.append(text)
        lines.append(f"| {v.name} | {v.what} | " + " | ".join(cells) + " |")
    lines += ["", f"{digits.capitalize()} refused as \"not a digit\", shipped reader, by "
              "source (sources with any):", "", "| source | refused |", "|---|---:|"]  # fmt: skip
    for src, (n, total) in sorted(base.refused_by_source.items()):
        if n:
            lines.append(f"| {src} | {n} of {total} |")
    changes = _refusal_changes(results, variants)
    if changes:
        lines += ["", "False rejections a variant changes, by source (shipped -> variant):", "",
                  "| variant | refused |", "|---|---|", *changes]  # fmt: skip
    return "\n".join(lines) + "\n"


def _refusal_changes(results: dict[str, Counts], variants: tuple[Variant, ...]) -> list[str]:
    """Table rows: per variant, the sources whose digits it refuses more or less often."""
    base = results["shipped"].refused_by_source
    rows = []
    for v in variants:
        now = results[v.name].refused_by_source
        moved = [
            f"{src} {base.get(src, [0])[0]} -> {now.get(src, [0])[0]}"
            for src in sorted(set(base) | set(now))
            if base.get(src, [0])[0] != now.get(src, [0])[0]
        ]
        if v.name != "shipped" and moved:
            rows.append(f"| {v.name} | {', '.join(moved)} |")
    return rows


def cost(cpu: list[float]) -> str:
    ms = np.array(cpu) * 1000
    return (
        f"Reader CPU per file (thread time, decode included, {len(ms)} files): "
        f"median {np.median(ms):.2f} ms, p99 {np.percentile(ms, 99):.1f} ms, "
        f"worst {ms.max():.1f} ms\n"
    )


def _plain(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """The digit as MNIST stores it: a 28x28 PNG, light ink on black (`rng` is unused)."""
    buf = io.BytesIO()
    Image.fromarray(digit.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue(), "plain.png"


#: Kinds of generated upload: the plain 28x28 digit, then `evaluation.uploads`' makers.
UPLOADS: dict[str, Maker] = {"plain": _plain, **UPLOAD_MAKERS}


def real_dev_files(root: Path, part: str, seed: int) -> list[tuple[Item, bytes]]:
    """The items of one part of real-dev (see `PARTS`) and their files' bytes."""
    items = read_manifest(root)
    if part != "all":
        val = split(items, seed=seed)
        items = [it for it, v in zip(items, val, strict=True) if v == (part == "validation")]
    return [(it, (root / it.path).read_bytes()) for it in items]


def held_out_mnist(data_dir: Path, training: dict[str, Any], count: int) -> tuple[np.ndarray, ...]:
    """(images, labels, indices) of `count` MNIST training digits that the model's training
    held out for validation: the first `val_size` of its seeded permutation (training.train)."""
    import torch

    from training.data import load_mnist

    size = int(str(training.get("val_size", 0)))
    if size <= 0:
        raise SystemExit("the model's card names no validation size: no held-out digits")
    data = load_mnist(data_dir, train=True, download=False)
    gen = torch.Generator().manual_seed(int(str(training.get("seed", 0))))
    perm = torch.randperm(len(data.data), generator=gen)
    idx = np.sort(perm[: min(size, len(data.data) // 6)][:count].numpy())
    return data.data.numpy()[idx], data.targets.numpy()[idx], idx


def upload_files(
    images: np.ndarray, labels: np.ndarray, indices: np.ndarray
) -> list[tuple[Item, bytes]]:
    """Every digit as every kind of generated upload, seeded by its position (as
    `python -m evaluation.generated` makes them); the kind is its item's source and kind."""
    out = []
    for kind, maker in UPLOADS.items():
        for i, (digit, label, at) in enumerate(zip(images, labels, indices, strict=True)):
            data, name = maker(digit, np.random.default_rng(i))
            out.append(
                (Item(f"{kind}/{i}-{name}", str(int(label)), kind, kind, f"mnist#{at}"), data)
            )
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m evaluation.ablation", description=__doc__)
    p.add_argument("--real-dev", type=Path, help="real-upload set folder")
    p.add_argument("--part", choices=PARTS, default="validation", help="part of real-dev")
    p.add_argument("--uploads", type=Path, metavar="MNIST_DIR",
                   help="instead: uploads made of held-out MNIST training digits")  # fmt: skip
    p.add_argument("--count", type=int, default=200, help="digits per kind of generated upload")
    p.add_argument("--model-dir", type=Path, help="a model version folder (default: served)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--only", nargs="*", help="variant names to run (shipped always runs)")
    p.add_argument("--json", type=Path, help="also write the counts here")
    args = p.parse_args(argv)
    if (args.real_dev is None) == (args.uploads is None):
        p.error("give one of --real-dev and --uploads")
    settings = Settings(device="cpu")
    if args.model_dir is not None:
        from service.serving.model import resolve_device

        clf = Classifier.load(args.model_dir, resolve_device("cpu"), warmup_batch_sizes=(1,))
    else:
        clf = ModelRepository(settings).load()
    if args.uploads is not None:
        files = upload_files(*held_out_mnist(args.uploads, clf.card.training, args.count))
        kinds, digits = tuple(UPLOADS), "digits"
    else:
        files = real_dev_files(args.real_dev, args.part, args.seed)
        kinds, digits = KINDS, "real digits"
    items = [it for it, _ in files]
    limits = ImageLimits.from_settings(settings)
    decoded: list[Decoded | None] = []
    decode_cpu: list[float] = []
    for _, data in files:
        started = time.thread_time()
        try:
            decoded.append(decode_upload(data, limits))
        except ServiceError:
            decoded.append(None)
        decode_cpu.append(time.thread_time() - started)
    del files
    variants = tuple(v for v in VARIANTS if not args.only or v.name in {"shipped", *args.only})
    logger.info("model %s v%s, %d files", clf.name, clf.version, len(items))
    cpu: list[float] = []
    results = run(items, decoded, clf, variants, cpu)
    total = [a + b for a, b in zip(decode_cpu, cpu, strict=True)]
    sys.stdout.write(markdown(results, variants, kinds, digits) + "\n" + cost(total))
    if args.json:
        body = {name: c.json() for name, c in results.items()}
        args.json.write_text(json.dumps(body, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
