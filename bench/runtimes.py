"""Forward images/s of each runtime of one model version, in one run.

    python -m bench.runtimes                         # the newest shipped version
    python -m bench.runtimes --version-dir DIR --rounds 5 --variants

Each runtime forwards zeros at batch 1, 8 and 64 on one intra-op thread; rounds take turns
(every runtime at every batch size, then again) and the table gives each cell's median of
thread CPU time, so that other load on a shared machine moves it less than a wall-clock rate.
Runtimes: TorchScript as loaded (`optimize=False`), TorchScript as served (frozen, oneDNN),
the version's ONNX graph under ONNX Runtime and its AOTInductor package, as served.
`--variants` also compiles (a compiler is needed) a package with a static batch of 64
(smaller batches padded to it) and one with AVX2 kernels, for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from service.serving.card import ModelCard, list_versions, quiet_torchscript
from service.serving.model import Classifier
from service.serving.runtimes import load_aoti
from training.artifacts import BuildSpec, ServingHead, compare, network_of

ROOT = Path(__file__).resolve().parent.parent


def _newest() -> Path:
    models = ROOT / "models"
    return models / "mnist-cnn" / str(list_versions(models, "mnist-cnn")[-1])


def _variant(
    folder: Path, scratch: Path, name: str, static: bool, configs: dict[str, object]
) -> Callable[[np.ndarray], torch.Tensor]:
    import torch._inductor

    card = ModelCard.read(folder)
    with quiet_torchscript():
        scripted = torch.jit.load(str(folder / "model.pt"), map_location="cpu")
    head = ServingHead(network_of(scripted), card.output.temperature, True).eval()
    path = scratch / f"{name}.pt2"
    example = torch.zeros(64, 28, 28)
    dims = None if static else {"inputs": {0: torch.export.Dim("batch", min=1, max=4096)}}
    with torch.no_grad():
        program = torch.export.export(head, (example,), dynamic_shapes=dims)
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs={"freezing": True, **configs}
        )
    serve = load_aoti(path, torch.device("cpu"), card.output.classes)
    norm = card.input.normalization

    def forward(pixels: np.ndarray) -> torch.Tensor:
        n = len(pixels)
        if static:  # a smaller batch pads to the compiled 64: what a batch-size bucket costs
            pixels = np.concatenate([pixels, np.zeros((64 - n, 28, 28), np.float32)])
        with torch.inference_mode():
            return serve(torch.as_tensor((pixels - norm.mean) / norm.std))[:n]

    return forward


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.runtimes", description=__doc__)
    p.add_argument("--version-dir", type=Path, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--variants", action="store_true", help="also compile two other packages")
    args = p.parse_args(argv)
    folder = args.version_dir or _newest()
    cpu = torch.device("cpu")
    runtimes: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
        "TorchScript as loaded": Classifier.load(
            folder, cpu, optimize=False, runtime="torchscript"
        ).predict_batch,
        "TorchScript as served": Classifier.load(folder, cpu, runtime="torchscript").predict_batch,
        "ONNX Runtime, model.onnx": Classifier.load(folder, cpu, runtime="onnx").predict_batch,
        "AOTInductor .pt2 (dynamic batch)": Classifier.load(
            folder, cpu, runtime="aoti"
        ).predict_batch,
    }
    with tempfile.TemporaryDirectory() as scratch:
        if args.variants:
            runtimes["AOTInductor, static batch 64"] = _variant(
                folder, Path(scratch), "static", True, {}
            )
            runtimes["AOTInductor, dynamic, AVX2 kernels"] = _variant(
                folder, Path(scratch), "avx2", False, {"cpp.simdlen": 256}
            )
        spec = BuildSpec(rounds=args.rounds)
        rates = compare(runtimes, spec)
    sizes = [str(b) for b in spec.timed_batches]
    served = rates["TorchScript as served"]
    print(f"{folder}, torch {torch.__version__}, {spec.rounds} rounds, 1 thread")
    print(
        "| runtime | "
        + " | ".join(f"batch {b} img/s" for b in sizes)
        + " | batch 1 / 64 vs served TS |"
    )
    print("|---|" + "---:|" * (len(sizes) + 1))
    for name, per in rates.items():
        cells = " | ".join(f"{per[b]:,.0f}" for b in sizes)
        ratios = f"{per['1'] / served['1']:.2f}x / {per['64'] / served['64']:.2f}x"
        print(f"| {name} | {cells} | {ratios} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
