"""Accuracy on realistic uploads, measured through a running server's HTTP API.

    python -m evaluation.generated --url http://127.0.0.1:8000 --data-dir MNIST_DIR

Each MNIST test digit is turned into a scan, a phone photo, a canvas export, ... (see
`evaluation.uploads`) and posted to /v1/predict in multi-file requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from evaluation.uploads import KINDS, make_upload

logger = logging.getLogger("evaluation.generated")


def _digits(
    data_dir: Path | None, sample: Path | None, count: int
) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is not None:
        from training.data import load_mnist

        test = load_mnist(data_dir, train=False, download=False)
        rng = np.random.default_rng(1234)
        idx = np.sort(rng.choice(len(test.data), size=min(count, len(test.data)), replace=False))
        return test.data.numpy()[idx], test.targets.numpy()[idx]
    assert sample is not None
    d = np.load(sample)
    return d["images"][:count], d["labels"][:count]


def evaluate_kind(
    client: httpx.Client, kind: str, images: np.ndarray, labels: np.ndarray, batch: int = 16
) -> tuple[int, int]:
    """(correct, total) for one kind of upload."""

    def post(start: int) -> int:
        files = []
        for i in range(start, min(start + batch, len(images))):
            data, name = make_upload(kind, images[i], seed=i)
            files.append(("files", (name, data, "application/octet-stream")))
        r = client.post("/v1/predict", files=files)
        r.raise_for_status()
        digits = [p["digit"] for p in r.json()["predictions"]]
        return sum(int(d == labels[start + j]) for j, d in enumerate(digits))

    with ThreadPoolExecutor(max_workers=4) as pool:
        correct = sum(pool.map(post, range(0, len(images), batch)))
    return correct, len(images)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(prog="python -m evaluation.generated", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--data-dir", type=Path, help="MNIST folder (test split is used)")
    p.add_argument("--sample", type=Path, default=Path("tests/data/mnist_test_sample.npz"))
    p.add_argument("--count", type=int, default=1000, help="digits per kind")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    images, labels = _digits(args.data_dir, args.sample, args.count)
    results = {}
    with httpx.Client(base_url=args.url, timeout=120) as client:
        for kind in tqdm(args.kinds.split(","), desc="kinds", disable=None):
            correct, total = evaluate_kind(client, kind, images, labels)
            results[kind] = {"correct": correct, "total": total, "accuracy": correct / total}
            logger.info("%-9s %5d/%d = %.2f%%", kind, correct, total, 100 * correct / total)
    allc = sum(r["correct"] for r in results.values())
    allt = sum(r["total"] for r in results.values())
    logger.info("%-9s %5d/%d = %.2f%%", "all", allc, allt, 100 * allc / allt)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
