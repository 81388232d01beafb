"""Wrap an existing TorchScript MNIST model into a versioned model repository with a card.

    python -m training.package --model mnist_cnn.pt --name reference \\
        --output-kind log_probabilities --mean 0.1307 --std 0.3081 [--data-dir DIR]

Used to serve models trained elsewhere (e.g. the peer benchmark's reference CNN) with
exactly the same checks as our own: checksum, shapes, and, given MNIST, a measured accuracy.
"""

from __future__ import annotations

import argparse
import logging
import platform
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from service.serving.card import (
    MODEL_FILE,
    InputSpec,
    Metrics,
    ModelCard,
    Normalization,
    OutputSpec,
)
from service.serving.card import sha256_file as _sha256
from training.data import DataError, load_mnist
from training.train import TrainingError, _prepare_out, load_scripted, staged_version

logger = logging.getLogger("training.package")


def package(args: argparse.Namespace) -> Path:
    model_root, version = _prepare_out(args.out, args.name, args.version)
    try:
        module = load_scripted(args.model, torch.device("cpu")).eval()
    except Exception as exc:
        raise TrainingError(f"{args.model} is not a loadable TorchScript file: {exc}") from exc
    with torch.inference_mode():
        out = module(torch.zeros(2, 1, 28, 28))
    if tuple(out.shape) != (2, 10):
        raise TrainingError(f"model output shape is {tuple(out.shape)}, expected (N, 10)")
    norm = Normalization(mean=args.mean, std=args.std)
    metrics = None
    if args.data_dir:
        test = load_mnist(args.data_dir, train=False, download=False)
        x = (test.data.float().div(255).unsqueeze(1) - norm.mean) / norm.std
        with torch.inference_mode():
            logits = torch.cat([module(x[i : i + 1000]) for i in range(0, len(x), 1000)])
        log_probs = logits if args.output_kind != "logits" else F.log_softmax(logits, 1)
        correct = int((logits.argmax(1) == test.targets).sum())
        metrics = Metrics(
            accuracy=correct / len(test.targets),
            nll=round(float(F.nll_loss(log_probs, test.targets)), 5),
            test_size=len(test.targets),
        )
    final = model_root / str(version)
    with staged_version(model_root, version) as scratch:
        shutil.copyfile(args.model, scratch / MODEL_FILE)
        card = ModelCard(
            name=args.name,
            version=str(version),
            created_at=datetime.now(UTC),
            description=args.description or f"packaged from {Path(args.model).name}",
            versions={
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "python": platform.python_version(),
            },  # fmt: skip
            input=InputSpec(normalization=norm),
            output=OutputSpec(kind=args.output_kind),
            metrics=metrics,
            parameters=sum(p.numel() for p in module.parameters()),
            export={"format": "external TorchScript", "source": Path(args.model).name},
            sha256=_sha256(scratch / MODEL_FILE),
        )
        card.write(scratch)
    logger.info("wrote %s (accuracy %s)", final, metrics.accuracy if metrics else "not measured")
    return final


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="python -m training.package", description=__doc__)
    p.add_argument("--model", type=Path, required=True, help="TorchScript file")
    p.add_argument("--out", type=Path, default=Path("models"))
    p.add_argument("--name", required=True)
    p.add_argument("--version", type=int)
    p.add_argument(
        "--output-kind", choices=["logits", "log_probabilities", "probabilities"], required=True
    )
    p.add_argument("--mean", type=float, required=True)
    p.add_argument("--std", type=float, required=True)
    p.add_argument("--data-dir", type=Path, help="MNIST folder: measure test accuracy")
    p.add_argument("--description", default="")
    args = p.parse_args(argv)
    try:
        package(args)
    except (TrainingError, DataError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
