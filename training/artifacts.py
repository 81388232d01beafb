"""Build a version folder's compiled artifacts beside its `model.pt`: an ONNX graph
(`model.onnx`, run by ONNX Runtime) and an AOTInductor package (`model.pt2`).

    python -m training artifacts models/mnist-cnn/4 [--format onnx] [--max-batch 4096]

Each is made from a `torch.export` of the same network and the same serving head as
TorchScript's serving method (softmax at the card's temperature), with a dynamic batch
dimension; it is checked against TorchScript on the card's check inputs, timed against it
in the same run, and listed in the card's `export.artifacts` with its sha256, torch release
and device. The package needs a C++ compiler to build; serving either needs none.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from service.serving.card import (
    AOTI_FILE,
    ONNX_FILE,
    Artifact,
    CardError,
    CheckSpec,
    ModelCard,
    check_inputs,
    quiet_torchscript,
    sha256_file,
)
from service.serving.model import Classifier
from service.serving.runtimes import check_against, load_aoti, load_onnx
from training.net import Net

logger = logging.getLogger("training.artifacts")


class ArtifactBuildError(Exception):
    """The package cannot be built for this version: reported as one line, exit code 2."""


@dataclass(frozen=True)
class BuildSpec:
    """How the package is built and timed."""

    #: The batch dimension's upper bound: Settings.max_batch_size's, so any server fits.
    max_batch: int = 4096
    #: Inductor freezing folds BatchNorm and the weights into the graph (constants).
    inductor_configs: tuple[tuple[str, object], ...] = (("freezing", True),)
    #: Batch sizes timed, and images per timing (per round) at each.
    timed_batches: tuple[int, ...] = (1, 8, 64)
    images_per_timing: int = 4096
    rounds: int = 3
    #: Timings run on one intra-op thread, as one worker per core serves.
    threads: int = 1
    #: The ONNX operator set the graph is written in (ONNX Runtime 1.20 reads up to 21).
    onnx_opset: int = 18


class ServingHead(nn.Module):
    """What TorchScript's serving method computes (service/serving/model.py), as a module:
    [N, 28, 28] model inputs -> probabilities at the card's temperature (or the raw output
    of a model whose output already is probabilities)."""

    def __init__(self, net: nn.Module, temperature: float, softmax: bool) -> None:
        super().__init__()
        self.net = net
        self.temperature = temperature
        self.softmax = softmax

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.net(inputs.unsqueeze(1)).float()
        return torch.softmax(out / self.temperature, dim=1) if self.softmax else out


def network_of(scripted: torch.jit.ScriptModule) -> Net:
    """The eager `training.net.Net` with a TorchScript file's weights (widths and classes
    read from the weights' shapes); refused for a network of another shape."""
    state = scripted.state_dict()
    try:
        widths = (
            int(state["features.0.weight"].shape[0]),
            int(state["features.4.weight"].shape[0]),
            int(state["features.8.weight"].shape[0]),
        )
        net = Net(widths=widths, classes=int(state["classifier.2.weight"].shape[0]))
        net.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ArtifactBuildError(
            f"model.pt is not a training.net.Net, so it cannot be re-exported: {exc}"
        ) from exc
    return net.eval()


def compile_package(head: nn.Module, path: Path, spec: BuildSpec) -> None:
    """torch.export with a dynamic batch, then AOTInductor into the package at `path`."""
    import torch._inductor

    batch = torch.export.Dim("batch", min=1, max=spec.max_batch)
    example = torch.zeros(8, 28, 28)
    with torch.no_grad():
        program = torch.export.export(head, (example,), dynamic_shapes={"inputs": {0: batch}})
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs=dict(spec.inductor_configs)
        )


def export_onnx(head: nn.Module, path: Path, spec: BuildSpec) -> None:
    """torch.export with a dynamic batch, written as one ONNX file at `path` (the weights
    inside it, not beside it)."""
    batch = torch.export.Dim("batch", min=1, max=spec.max_batch)
    example = torch.zeros(8, 28, 28)
    with torch.no_grad():
        program = torch.onnx.export(
            head, (example,), dynamo=True, dynamic_shapes={"inputs": {0: batch}},
            input_names=["inputs"], output_names=["outputs"], opset_version=spec.onnx_opset,
            external_data=False, verbose=False,
        )  # fmt: skip
    if program is None:
        raise ArtifactBuildError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


@dataclass(frozen=True)
class Format:
    """How one artifact format is made from the serving head, and loaded to be checked."""

    name: Literal["aoti", "onnx"]
    file: str
    make: Callable[[nn.Module, Path, BuildSpec], None]
    load: Callable[[Path, int, BuildSpec], Callable[[torch.Tensor], torch.Tensor]]
    extra: Callable[[BuildSpec], dict[str, object]]


FORMATS: dict[str, Format] = {
    "onnx": Format(
        "onnx", ONNX_FILE, export_onnx,
        lambda path, classes, spec: load_onnx(path, torch.device("cpu"), classes, spec.threads),
        lambda spec: {"opset": spec.onnx_opset},
    ),
    "aoti": Format(
        "aoti", AOTI_FILE, compile_package,
        lambda path, classes, spec: load_aoti(path, torch.device("cpu"), classes),
        lambda spec: {"inductor_configs": dict(spec.inductor_configs)},
    ),
}  # fmt: skip


def images_per_s(forward: Callable[[np.ndarray], torch.Tensor], batch: int, images: int) -> float:
    """Forward images per second of thread CPU time at one batch size."""
    x = np.zeros((batch, 28, 28), dtype=np.float32)
    calls = max(images // batch, 1)
    forward(x)
    started = time.thread_time()
    for _ in range(calls):
        forward(x)
    return calls * batch / max(time.thread_time() - started, 1e-9)


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compare(
    runtimes: dict[str, Callable[[np.ndarray], torch.Tensor]], spec: BuildSpec
) -> dict[str, dict[str, float]]:
    """Images/s of each runtime at each batch size: medians of interleaved rounds."""
    samples: dict[str, dict[int, list[float]]] = {n: {} for n in runtimes}
    with threads(spec.threads):
        for _ in range(spec.rounds):
            for batch in spec.timed_batches:
                for name, forward in runtimes.items():
                    rate = images_per_s(forward, batch, spec.images_per_timing)
                    samples[name].setdefault(batch, []).append(rate)
    return {
        name: {str(b): round(statistics.median(r)) for b, r in per.items()}
        for name, per in samples.items()
    }


def build(
    version_dir: Path, spec: BuildSpec | None = None, fmt: Format = FORMATS["aoti"]
) -> Artifact:
    """Make, check, time and list the artifact of `fmt` in `version_dir`; return its card
    entry."""
    spec = spec or BuildSpec()
    version_dir = Path(version_dir)
    try:
        card = ModelCard.read(version_dir)
        model_path = card.verify(version_dir)
    except CardError as exc:
        raise ArtifactBuildError(str(exc)) from exc
    with quiet_torchscript():
        scripted = torch.jit.load(str(model_path), map_location="cpu")
    out = card.output
    softmax = out.kind != "probabilities"
    head = ServingHead(network_of(scripted), out.temperature, softmax).eval()
    reference = Classifier.load(version_dir, torch.device("cpu"), runtime="torchscript")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=f".{fmt.name}-") as scratch:
        staged = Path(scratch) / fmt.file
        with threads(spec.threads):
            fmt.make(head, staged, spec)
            compile_s = time.perf_counter() - started
            fast = fmt.load(staged, out.classes, spec)
        made = Classifier(card, reference.module, reference.device, False, artifact_serve=fast)
        check = card.check_spec() if "check" in card.export else CheckSpec()
        diff = check_against(
            reference.predict_pixels, made.predict_pixels, check_inputs(check),
            (1, 8, check.count, spec.max_batch), check.atol,
        )  # fmt: skip
        timed: dict[str, Callable[[np.ndarray], torch.Tensor]] = {
            "torchscript": reference.predict_batch,
            fmt.name: made.predict_batch,
        }
        rates = compare(timed, spec)
        artifact = Artifact(
            format=fmt.name,
            file=fmt.file,
            sha256=sha256_file(staged),
            torch=torch.__version__,
            device="cpu",
            batch=(1, spec.max_batch),
            temperature=out.temperature if softmax else None,
            images_per_s=rates[fmt.name],
            torchscript_images_per_s=rates["torchscript"],
            check_max_abs_diff=float(f"{diff:.3g}"),
        )
        staged.replace(version_dir / fmt.file)
    listed = card.export.get("artifacts")
    others = [
        a for a in (listed if isinstance(listed, list) else [])
        if not (isinstance(a, dict) and a.get("file") == fmt.file)
    ]  # fmt: skip
    card.export = {
        **card.export,
        "check": check.model_dump(),
        "artifacts": [
            *others,
            {
                **artifact.model_dump(mode="json"),
                "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "compile_s": round(compile_s, 1),
                **fmt.extra(spec),
            },
        ],
    }
    card.write(version_dir)
    logger.info(
        "wrote %s (%.1f MB, made in %.0f s): max |%s - torchscript| %.2g; images/s "
        "%s %s, torchscript %s (batch: rate, thread CPU time, %d thread)",
        version_dir / fmt.file, (version_dir / fmt.file).stat().st_size / 1e6, compile_s,
        fmt.name, diff, fmt.name, artifact.images_per_s, artifact.torchscript_images_per_s,
        spec.threads,
    )  # fmt: skip
    return artifact


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # a line per rewrite pass
    p = argparse.ArgumentParser(prog="python -m training artifacts", description=__doc__)
    p.add_argument("version_dirs", type=Path, nargs="+", help="version folders, e.g. models/x/4")
    p.add_argument("--max-batch", type=int, default=BuildSpec.max_batch)
    p.add_argument("--rounds", type=int, default=BuildSpec.rounds, help="timing rounds")
    p.add_argument(
        "--format", choices=sorted(FORMATS), action="append",
        help="only this format (repeatable; default: onnx and aoti)",
    )  # fmt: skip
    args = p.parse_args(argv)
    spec = BuildSpec(max_batch=args.max_batch, rounds=args.rounds)
    try:
        for folder in args.version_dirs:
            for name in args.format or list(FORMATS):
                build(folder, spec, FORMATS[name])
    except ArtifactBuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
