"""Recalibrate a shipped 11-class model's "not a digit" threshold without retraining.

    python -m training.calibrate --model-dir models/mnist-cnn/4 --real-dev DIR \\
        [--reject-budget 0.01 | --threshold 0.5]

Reruns the real-dev validation part through the current `service.vision.preprocess` (the cache is
keyed by its source, so changed preprocessing is picked up), then rewrites the card's
`output.reject_threshold` and `metrics.real_dev`. The weights and their sha256 are untouched.
Use it whenever preprocessing changes: what the model sees changes, and so do its scores.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from service.serving.card import CardError, ModelCard
from training.data import DataError, _default_cache
from training.realdev import NOT_A_DIGIT, load_realdev
from training.train import (
    RealSplit,
    TrainingError,
    evaluate,
    load_scripted,
    real_metrics,
    reject_threshold,
)

logger = logging.getLogger("training.calibrate")


def calibrate(args: argparse.Namespace) -> ModelCard:
    try:
        card = ModelCard.read(args.model_dir)
        model_path = card.verify(args.model_dir)
    except CardError as exc:
        raise TrainingError(str(exc)) from exc
    if card.output.classes != 11:
        raise TrainingError(f"{args.model_dir} has no not_a_digit class to calibrate")
    dev = load_realdev(args.real_dev, args.cache_dir or _default_cache(), seed=args.seed)
    split = RealSplit.of(dev, dev.val)
    model = load_scripted(model_path, torch.device("cpu"))
    logits = evaluate(
        model, split.images, split.targets, card.input.normalization, torch.device("cpu")
    ).logits
    probs = F.softmax(logits / card.output.temperature, dim=1)
    if args.threshold is not None:
        threshold = args.threshold
    else:
        threshold = reject_threshold(
            probs[:, NOT_A_DIGIT], split.is_digit, split.is_bitmap, args.reject_budget
        )
    metrics = real_metrics(probs, split, threshold)
    assert card.metrics is not None
    kept = {k: v for k, v in card.metrics.real_dev.items() if k.startswith("mnist_")}
    card.output.reject_threshold = threshold
    card.metrics.real_dev = {**metrics, **kept}
    card.training["reject_rule"] = (
        f"fixed threshold {args.threshold}"
        if args.threshold is not None
        else f"lowest threshold within a {args.reject_budget} false-rejection budget"
    )
    card.write(args.model_dir)
    logger.info("threshold %s: %s", threshold, metrics)
    return card


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m training.calibrate", description=__doc__)
    p.add_argument("--model-dir", type=Path, required=True, help="a version folder")
    p.add_argument("--real-dev", type=Path, required=True)
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--reject-budget", type=float, default=0.005)
    rule.add_argument("--threshold", type=float, default=None, help="use this threshold")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0 < args.threshold <= 1:
        p.error("--threshold must be in (0, 1]")
    try:
        calibrate(args)
    except (TrainingError, DataError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
