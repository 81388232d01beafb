"""Train the MNIST CNN, export TorchScript, verify the reloaded file, and write its card."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from tqdm import tqdm

from service.card import (
    MODEL_FILE,
    InputSpec,
    Metrics,
    ModelCard,
    Normalization,
    OutputSpec,
    list_versions,
    sha256_file,
)
from service.model import quiet_torchscript
from training.augment import augment
from training.data import DataError, file_checksums, load_mnist
from training.net import Net, count_mflops, count_parameters

logger = logging.getLogger("training")


class TrainingError(Exception):
    """A user-facing problem: reported as one line, exit code 2."""


@dataclass
class EvalResult:
    accuracy: float
    nll: float
    logits: torch.Tensor
    targets: torch.Tensor


# ----------------------------------------------------------------------------- training


def _batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield images[idx], labels[idx]


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    norm: Normalization,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    desc: str,
) -> tuple[float, float]:
    """One shuffled, augmented pass; returns (mean loss, accuracy) on the augmented data."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    steps = math.ceil(len(images) / batch_size)
    bar = tqdm(
        _batches(images, labels, batch_size, generator),
        total=steps,
        desc=desc,
        leave=False,
        dynamic_ncols=True,
        disable=None,  # no bar when stderr is not a terminal (CI logs stay readable)
    )
    for x_u8, y in bar:
        x = augment(x_u8.float().div_(255).unsqueeze(1), generator)
        x = ((x - norm.mean) / norm.std).to(device)
        y = y.to(device)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.4f}")
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()  # not inference_mode: the logits feed temperature fitting
def evaluate(
    model: nn.Module | torch.jit.ScriptModule,
    images: torch.Tensor,
    labels: torch.Tensor,
    norm: Normalization,
    device: torch.device,
    batch_size: int = 1000,
) -> EvalResult:
    """Logits for every image (no augmentation), with accuracy and NLL at temperature 1."""
    model.eval()
    chunks = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float().div(255).unsqueeze(1)
        x = ((x - norm.mean) / norm.std).to(device)
        chunks.append(model(x).float().cpu())
    logits = torch.cat(chunks) if chunks else torch.zeros(0, 10)
    acc = int((logits.argmax(1) == labels).sum()) / len(labels) if len(labels) else 0.0
    nll = float(F.cross_entropy(logits, labels)) if len(labels) else 0.0
    return EvalResult(acc, nll, logits, labels)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature that minimises validation NLL (Guo et al., 2017)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    conf, pred = probs.max(1)
    correct = (pred == labels).float()
    ece = torch.zeros(())
    edges = torch.linspace(0, 1, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.float().mean() * (conf[mask].mean() - correct[mask].mean()).abs()
    return float(ece)


# ----------------------------------------------------------------------------- export


def export(model: nn.Module, out_dir: Path) -> Path:
    """Script the eval-mode model and save it as `out_dir/model.pt`."""
    model = model.cpu().eval()
    with quiet_torchscript():
        scripted = torch.jit.script(model)
        path = out_dir / MODEL_FILE
        torch.jit.save(scripted, str(path))
    return path


@contextlib.contextmanager
def staged_version(model_root: Path, version: int) -> Iterator[Path]:
    """A scratch folder that becomes `model_root/version` only if the block succeeds.

    Never a half-written version, never an overwrite: the rename is the commit.
    """
    scratch = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=model_root))
    try:
        yield scratch
        scratch.chmod(0o755)
        scratch.rename(model_root / str(version))
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def load_scripted(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    with quiet_torchscript():
        return torch.jit.load(str(path), map_location=device)


# ----------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    p.add_argument("--data-dir", type=Path, default=Path("data"), help="MNIST folder")
    p.add_argument("--out", type=Path, default=Path("models"), help="model repository root")
    p.add_argument("--name", default="mnist-cnn", help="model name (folder under --out)")
    p.add_argument("--version", type=int, default=None, help="default: next free number")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=4e-3, help="peak learning rate (one-cycle)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--val-size", type=int, default=5000, help="held out of the training set")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--limit", type=int, default=None, help="use only N images per split")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--no-download", action="store_true", help="never download MNIST")
    return p.parse_args(argv)


def _resolve_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was requested but CUDA is not available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _prepare_out(out: Path, name: str, version: int | None) -> tuple[Path, int]:
    model_root = out / name
    try:
        model_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create output folder {model_root}: {exc.strerror}") from exc
    if not os.access(model_root, os.W_OK):
        raise TrainingError(f"output folder {model_root} is not writable")
    if version is None:
        existing = [int(p.name) for p in model_root.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
    if version < 1:
        raise TrainingError(f"--version must be >= 1, got {version}")
    if (model_root / str(version)).exists():
        raise TrainingError(f"version {version} already exists at {model_root / str(version)}")
    return model_root, version


def run(args: argparse.Namespace) -> Path:
    """Train, export and verify; returns the new version folder."""
    started = time.perf_counter()
    device = _resolve_device(args.device)
    model_root, version = _prepare_out(args.out, args.name, args.version)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    train_set = load_mnist(args.data_dir, train=True, download=not args.no_download)
    test_set = load_mnist(args.data_dir, train=False, download=not args.no_download)
    images, labels = train_set.data, train_set.targets
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    val_size = min(args.val_size, len(images) // 6)
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    test_images, test_labels = test_set.data, test_set.targets
    if args.limit:
        train_idx, val_idx = train_idx[: args.limit], val_idx[: max(args.limit // 5, 1)]
        test_images, test_labels = test_images[: args.limit], test_labels[: args.limit]
    x_train, y_train = images[train_idx], labels[train_idx]
    x_val, y_val = images[val_idx], labels[val_idx]
    norm = Normalization(
        mean=round(float(x_train.float().mean() / 255), 4),
        std=round(float(x_train.float().std() / 255), 4),
    )
    logger.info(
        "train %d, validation %d, test %d images on %s (%d threads); normalisation %s",
        len(x_train), len(x_val), len(test_images), device, torch.get_num_threads(), norm,
    )  # fmt: skip

    model = Net().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = math.ceil(len(x_train) / args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.epochs * steps, pct_start=0.2
    )
    best_acc, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        loss, train_acc = train_one_epoch(
            model, x_train, y_train, optimizer, scheduler, norm, args.batch_size, gen, device,
            desc=f"epoch {epoch}/{args.epochs}",
        )  # fmt: skip
        val = evaluate(model, x_val, y_val, norm, device)
        logger.info(
            "epoch %d/%d: loss %.4f, train acc %.4f, val acc %.4f, val nll %.4f, %.1f s",
            epoch, args.epochs, loss, train_acc, val.accuracy, val.nll, time.perf_counter() - t0,
        )  # fmt: skip
        # Later epochs win ties: the one-cycle schedule ends on its best-annealed weights.
        if val.accuracy >= best_acc:
            best_acc, best_epoch = val.accuracy, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    train_seconds = time.perf_counter() - started

    val = evaluate(model, x_val, y_val, norm, device)
    temperature = fit_temperature(val.logits, val.targets) if len(y_val) else 1.0
    calibrated_nll = float(F.cross_entropy(val.logits / temperature, val.targets))
    if not calibrated_nll < val.nll:
        temperature = 1.0
    logger.info("best epoch %d (val acc %.4f); temperature %.3f", best_epoch, best_acc, temperature)

    final = model_root / str(version)
    with staged_version(model_root, version) as scratch:
        eager_model = model.cpu().eval()
        model_path = export(eager_model, scratch)
        reloaded = load_scripted(model_path, torch.device("cpu"))
        probe = ((test_images[:256].float().div(255).unsqueeze(1)) - norm.mean) / norm.std
        with torch.inference_mode():
            max_abs_diff = float((reloaded(probe) - eager_model(probe)).abs().max())
        test = evaluate(reloaded, test_images, test_labels, norm, torch.device("cpu"))
        probs = F.softmax(test.logits / temperature, dim=1)
        confusion = torch.zeros(10, 10, dtype=torch.long)
        for t, p in zip(test.targets.tolist(), test.logits.argmax(1).tolist(), strict=True):
            confusion[t, p] += 1
        per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1)).tolist()
        card = ModelCard(
            name=args.name,
            version=str(version),
            created_at=datetime.now(UTC),
            description="Compact CNN (3 conv-BN-ReLU stages + linear) trained on augmented MNIST",
            versions={
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "python": platform.python_version(),
            },
            input=InputSpec(normalization=norm),
            output=OutputSpec(kind="logits", temperature=round(temperature, 4)),
            metrics=Metrics(
                accuracy=test.accuracy,
                per_class_accuracy=[round(a, 4) for a in per_class],
                confusion_matrix=confusion.tolist(),
                nll=round(float(F.nll_loss(probs.clamp_min(1e-12).log(), test.targets)), 5),
                ece=round(expected_calibration_error(probs, test.targets), 5),
                ece_uncalibrated=round(
                    expected_calibration_error(F.softmax(test.logits, 1), test.targets), 5
                ),
                validation_accuracy=best_acc,
                test_size=len(test_labels),
            ),
            training={
                "seed": args.seed,
                "epochs": args.epochs,
                "best_epoch": best_epoch,
                "batch_size": args.batch_size,
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "optimizer": "AdamW + OneCycleLR",
                "augmentation": "per-image affine (rot 12deg, scale 0.85-1.12, shift 2px, "
                "shear 8deg) + stroke thickening/thinning",
                "train_size": len(x_train),
                "val_size": len(x_val),
                "limit": args.limit,
                "wall_time_s": round(train_seconds, 1),
                "device": str(device),
                "hardware": _hardware(device),
                "threads": torch.get_num_threads(),
            },
            dataset={"name": "MNIST", "files": file_checksums(Path(args.data_dir))},
            parameters=count_parameters(eager_model),
            mflops=round(count_mflops(eager_model), 3),
            export={"format": "torch.jit.script", "max_abs_diff_vs_eager": max_abs_diff},
            sha256=sha256_file(model_path),
        )
        card.write(scratch)
    logger.info(
        "wrote %s: test accuracy %.4f, ece %.4f, max |eager - scripted| %.2e, %.1f s total",
        final, test.accuracy, card.metrics.ece if card.metrics else float("nan"), max_abs_diff,
        time.perf_counter() - started,
    )  # fmt: skip
    assert list_versions(args.out, args.name)[-1] >= version
    return final


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _parse_args(argv)
    try:
        run(args)
    except (TrainingError, DataError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    return 0
