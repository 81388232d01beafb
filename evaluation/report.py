"""Accuracy of a running server on real uploads, through its HTTP API.

    python -m evaluation --url http://127.0.0.1:8000 --real-dev DIR --mnist-dir DIR

Reports, on the real-upload development set (its validation split and all of it):
digit accuracy per kind and per source, non-digits rejected, real digits wrongly rejected,
multi-digit numbers read exactly; then the naive-resize baseline (the whole image resized
to 28x28 and sent to the V2 `input` tensor path of the same model), generated uploads
(MNIST test digits re-rendered as scans, photos, ...: plumbing, not real handwriting) and
MNIST test accuracy (28x28 PNGs through /v1/predict).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from evaluation.client import Answer, naive_pixels, predict_files, predict_tensors, served_model
from evaluation.uploads import KINDS, make_upload
from training.realdev import BITMAP_SOURCES, Item, read_manifest, split

logger = logging.getLogger("evaluation")

REAL_KINDS = ("photo", "scan", "drawing", "lowres")


@dataclass
class Tally:
    correct: int = 0
    total: int = 0

    def add(self, ok: bool) -> None:
        self.correct += int(ok)
        self.total += 1

    @property
    def rate(self) -> float | None:
        return self.correct / self.total if self.total else None

    def json(self) -> dict[str, Any]:
        return {"correct": self.correct, "total": self.total, "rate": self.rate}


@dataclass
class RealDevResult:
    """Counts for one part (validation or all) of the development set."""

    by_kind: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    by_source: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    real_digits: Tally = field(default_factory=Tally)
    false_rejection: Tally = field(default_factory=Tally)
    nondigit_rejection: Tally = field(default_factory=Tally)
    numbers_exact: Tally = field(default_factory=Tally)
    baseline_by_kind: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    baseline_real_digits: Tally = field(default_factory=Tally)

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in vars(self).items():
            if isinstance(value, Tally):
                out[name] = value.json()
            else:
                out[name] = {k: t.json() for k, t in sorted(value.items())}
        return out


def group_of(item: Item) -> str:
    """The report's row for a digit: its kind, or the bitmap set it comes from."""
    return item.source if item.source in BITMAP_SOURCES else item.kind


def score_real_dev(
    items: list[Item], answers: list[Answer], baseline: np.ndarray, mask: np.ndarray
) -> RealDevResult:
    res = RealDevResult()
    digit_rows = [i for i, it in enumerate(items) if it.is_digit]
    base = dict(zip(digit_rows, baseline.tolist(), strict=True))
    for i, (item, answer) in enumerate(zip(items, answers, strict=True)):
        if not mask[i]:
            continue
        if item.is_digit:
            ok = answer.kind == "digit" and answer.digit == int(item.label)
            res.by_kind[group_of(item)].add(ok)
            res.by_source[item.source].add(ok)
            res.baseline_by_kind[group_of(item)].add(base[i] == int(item.label))
            if item.source not in BITMAP_SOURCES:
                res.real_digits.add(ok)
                res.false_rejection.add(answer.kind == "not_a_digit")
                res.baseline_real_digits.add(base[i] == int(item.label))
        elif item.is_nondigit:
            res.nondigit_rejection.add(answer.kind == "not_a_digit")
        else:
            expected = item.label.split(":", 1)[1]
            got = (answer.number or "").replace("\n", "")
            res.numbers_exact.add(answer.kind in ("number", "digit") and got == expected)
    return res


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def mnist_test(data_dir: Path, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_mnist

    test = load_mnist(data_dir, train=False, download=False)
    images, labels = test.data.numpy(), test.targets.numpy()
    if count is not None and count < len(images):
        idx = np.sort(np.random.default_rng(1234).choice(len(images), count, replace=False))
        images, labels = images[idx], labels[idx]
    return images, labels


def evaluate(
    client: httpx.Client,
    real_dev: Path | None,
    mnist_dir: Path | None,
    *,
    sample: Path | None = None,
    generated_count: int = 200,
    mnist_count: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    name, version = served_model(client)
    result: dict[str, Any] = {"model": {"name": name, "version": version}}
    if real_dev is not None:
        items = read_manifest(real_dev)
        files = [(Path(it.path).name, (real_dev / it.path).read_bytes()) for it in items]
        logger.info("real dev: %d files", len(files))
        answers = predict_files(client, files)
        digits = [data for it, (_, data) in zip(items, files, strict=True) if it.is_digit]
        baseline = predict_tensors(client, name, np.stack([naive_pixels(d) for d in digits]))
        val = split(items, seed=seed)
        result["real_dev"] = {
            "validation": score_real_dev(items, answers, baseline, val).json(),
            "all": score_real_dev(items, answers, baseline, np.ones(len(items), bool)).json(),
        }
    if mnist_dir is not None or sample is not None:
        if mnist_dir is not None:
            images, labels = mnist_test(mnist_dir, mnist_count)
        else:
            assert sample is not None
            d = np.load(sample)
            images, labels = d["images"], d["labels"]
        answers = predict_files(client, [(f"{i}.png", png(im)) for i, im in enumerate(images)])
        tally = Tally()
        for answer, label in zip(answers, labels.tolist(), strict=True):
            tally.add(answer.kind == "digit" and answer.digit == label)
        result["mnist_test"] = tally.json()
        gen: dict[str, Any] = {}
        k = min(generated_count, len(images))
        for kind in KINDS:
            uploads = [make_upload(kind, images[i], seed=i) for i in range(k)]
            answers = predict_files(client, [(n, d) for d, n in uploads])
            t = Tally()
            for answer, label in zip(answers, labels[:k].tolist(), strict=True):
                t.add(answer.kind == "digit" and answer.digit == label)
            gen[kind] = t.json()
        result["generated_uploads"] = gen
    return result


def _pct(t: dict[str, Any] | None) -> str:
    if not t or t["rate"] is None:
        return "–"
    return f"{100 * t['rate']:.1f} % ({t['correct']}/{t['total']})"


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables (what docs/accuracy.md shows)."""
    m = result["model"]
    lines = [f"Model: {m['name']} version {m['version']}", ""]
    if "real_dev" in result:
        val, full = result["real_dev"]["validation"], result["real_dev"]["all"]
        lines += [
            "| real dev | validation | all | naive resize (validation) |",
            "|---|---|---|---|",
        ]
        rows = [k for k in (*REAL_KINDS, *BITMAP_SOURCES) if k in full["by_kind"]]
        for k in rows:
            lines.append(
                f"| digits: {k} | {_pct(val['by_kind'].get(k))} | {_pct(full['by_kind'].get(k))}"
                f" | {_pct(val['baseline_by_kind'].get(k))} |"
            )
        lines += [
            f"| real digits, all kinds | {_pct(val['real_digits'])} | "
            f"{_pct(full['real_digits'])} | {_pct(val['baseline_real_digits'])} |",
            f"| real digits rejected (lower is better) | {_pct(val['false_rejection'])} | "
            f"{_pct(full['false_rejection'])} | – |",
            f"| non-digits rejected | {_pct(val['nondigit_rejection'])} | "
            f"{_pct(full['nondigit_rejection'])} | – |",
            f"| numbers read exactly | {_pct(val['numbers_exact'])} | "
            f"{_pct(full['numbers_exact'])} | – |",
            "",
            "| real dev source | validation | all |",
            "|---|---|---|",
        ]
        for src in sorted(full["by_source"]):
            lines.append(
                f"| {src} | {_pct(val['by_source'].get(src))} | {_pct(full['by_source'][src])} |"
            )
        lines.append("")
    if "mnist_test" in result:
        lines += ["| other | accuracy |", "|---|---|"]
        lines.append(f"| MNIST test (28x28 PNGs via /v1/predict) | {_pct(result['mnist_test'])} |")
        for kind, t in result["generated_uploads"].items():
            lines.append(f"| generated uploads: {kind} (re-rendered MNIST) | {_pct(t)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--api-key", default=None, help="sent as X-API-Key when given")
    p.add_argument("--real-dev", type=Path, help="real-upload set folder (manifest.csv)")
    p.add_argument("--mnist-dir", type=Path, help="MNIST folder (test split is used)")
    p.add_argument("--mnist-count", type=int, default=None, help="MNIST test digits (all)")
    p.add_argument("--sample", type=Path, help="an .npz of images/labels instead of MNIST")
    p.add_argument("--generated-count", type=int, default=200, help="uploads per kind")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.real_dev is None and args.mnist_dir is None and args.sample is None:
        p.error("give --real-dev, --mnist-dir or --sample")
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.url, timeout=300, headers=headers) as client:
            result = evaluate(
                client, args.real_dev, args.mnist_dir, sample=args.sample,
                generated_count=args.generated_count, mnist_count=args.mnist_count,
                seed=args.seed,
            )  # fmt: skip
    except httpx.HTTPError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(markdown(result) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0
