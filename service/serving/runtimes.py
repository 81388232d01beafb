"""Which runtime serves a model version: TorchScript, or a compiled artifact beside it.

`model.pt` (TorchScript) always loads: it is the reference and the fallback. An artifact the
card lists (an ONNX graph run by ONNX Runtime, or an AOTInductor `.pt2` package) serves
instead when it fits this server (torch release for a package, device, batch sizes) and
gives TorchScript's answers on the card's check inputs. `choose` is the policy (pure, no
torch); `load_artifact` and `check_against` do the loading and the check for
`Classifier.load`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from service.serving.card import Artifact, ModelCard

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

Runtime = Literal["auto", "torchscript", "aoti", "onnx"]
RUNTIMES: tuple[Runtime, ...] = ("auto", "torchscript", "aoti", "onnx")
#: The runtimes that serve an artifact (the others: TorchScript, or the policy's pick).
ARTIFACT_RUNTIMES: tuple[Runtime, ...] = ("aoti", "onnx")


#: `auto` serves an artifact only when it was measured at least this much faster than
#: TorchScript: a smaller margin is within the timing noise of a shared machine, and an
#: AOTInductor forward holds the GIL that TorchScript's releases (docs/decisions.md).
AUTO_MIN_SPEEDUP = 1.1


class ArtifactError(Exception):
    """An artifact cannot serve: missing, corrupt, unloadable, or not equal to TorchScript."""


@dataclass(frozen=True)
class Target:
    """What an artifact must match: this process's torch and device, and the batches served."""

    torch_version: str
    device_type: str
    max_batch: int
    half: bool = False


@dataclass(frozen=True)
class Choice:
    """The artifact to try (None: TorchScript), and why, for the log."""

    artifact: Artifact | None
    reason: str


def torch_release(version: str) -> str:
    """`2.14.1+cu130` -> `2.14.1`: the build's local tag (CUDA or CPU wheel) is not part of
    the match, since a CPU artifact calls the same libtorch functions in both wheels."""
    return version.split("+", 1)[0]


def mismatch(artifact: Artifact, target: Target) -> str | None:
    """Why `artifact` cannot serve on `target`, or None when it can. An ONNX graph does
    not depend on the torch release that exported it; a compiled package does."""
    if artifact.format == "aoti" and torch_release(artifact.torch) != torch_release(
        target.torch_version
    ):
        return f"built for torch {artifact.torch}, this server runs {target.torch_version}"
    if artifact.device != target.device_type:
        return f"built for {artifact.device}, this server runs on {target.device_type}"
    if target.half:
        return "half_precision is on and the artifact computes in float32"
    low, high = artifact.batch
    if low > 1 or high < target.max_batch:
        return f"built for batches {low}..{high}, this server runs 1..{target.max_batch}"
    return None


def choose(card: ModelCard, requested: Runtime, target: Target) -> Choice:
    """The artifact to try for `requested` on `target`.

    `torchscript`: none. `aoti` or `onnx`: a matching artifact of that format (the caller
    refuses the model if there is none). `auto`: the matching artifact measured fastest
    against TorchScript when it was built (geometric mean over batch sizes), if by at least
    AUTO_MIN_SPEEDUP.
    """
    if requested == "torchscript":
        return Choice(None, "model_runtime is torchscript")
    artifacts, reasons = card.artifacts()
    usable: list[tuple[float, Artifact]] = []
    for artifact in artifacts:
        if requested != "auto" and artifact.format != requested:
            continue
        why = mismatch(artifact, target)
        if why is not None:
            reasons.append(f"{artifact.file}: {why}")
            continue
        speedup = artifact.speedup()
        if requested == "auto" and (speedup is None or speedup < AUTO_MIN_SPEEDUP):
            measured = "not measured" if speedup is None else f"measured {speedup:.2f}x"
            reasons.append(
                f"{artifact.file}: {measured} TorchScript's images/s when built, auto needs "
                f"{AUTO_MIN_SPEEDUP:g}x"
            )
            continue
        usable.append((speedup or 0.0, artifact))
    if not usable:
        listed = "the card lists no artifact" + ("" if requested == "auto" else f" of {requested}")
        return Choice(None, "; ".join(reasons) or listed)
    speedup, best = max(usable, key=lambda pair: pair[0])
    return Choice(best, f"{best.file} ({best.format}, {speedup:.2f}x TorchScript when built)")


#: The instruction sets an AOTInductor package's metadata names (AOTI_CPU_ISA) -> the CPU
#: flags (/proc/cpuinfo) each needs; any other name needs the flag of its own lower-case name.
#: "AVX512" is inductor's VecAVX512: AVX-512 F, BW, VL and DQ.
_ISA_FLAGS = {"AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"), "AVX2": ("avx2", "fma")}
_CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = _CPUINFO) -> frozenset[str] | None:
    """This CPU's feature flags, or None where /proc/cpuinfo cannot tell."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def missing_isa(isa: str, flags: frozenset[str] | None) -> str | None:
    """Which of the package's instruction sets this CPU lacks (None: it has them all).

    A package's kernels are compiled for the builder's vector instructions; running them on
    a CPU without those dies of SIGILL, a signal no fallback can catch, so check first.
    """
    needed = [name for name in isa.split() if name]
    if not needed:
        return None
    if flags is None:
        return f"it needs {isa} and this CPU's flags cannot be read"
    lacking = [n for n in needed if not flags.issuperset(_ISA_FLAGS.get(n, (n.lower(),)))]
    return f"it needs {' '.join(lacking)}, which this CPU lacks" if lacking else None


def load_aoti(
    path: Path, device: torch.device, classes: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package's forward as one call: [N, 28, 28] model inputs -> [N, classes].

    The C++ loader opens the package's shared library: no compiler runs. (Not
    `torch._inductor.aoti_load_package`: it first probes the CPU's vector instructions by
    compiling a test program, and without a compiler falls back to this same loader with a
    misleading "outdated pt2 file" warning.) The runner's `run` is called directly: the
    package's `__call__` parses its input and output tree specs from JSON on every call.
    NOTE: `run` holds the GIL for the whole forward (measured: docs/decisions.md).
    """
    import torch

    loader_cls = torch._C._aoti.AOTIModelPackageLoader
    try:
        # Not in torch's type stubs, though torch's own package loader calls it.
        read_metadata = loader_cls.load_metadata_from_package  # type: ignore[attr-defined]
        metadata: dict[str, str] = read_metadata(str(path), "model")
        if device.type == "cpu":
            why = missing_isa(metadata.get("AOTI_CPU_ISA", ""), cpu_flags())
            if why is not None:
                raise ArtifactError(f"{path.name} cannot run here: {why}")
        index = device.index if device.index is not None else -1
        run = loader_cls(str(path), "model", False, 1, index).run
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"cannot load {path.name}: {exc}") from exc

    def serve(inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[0] == 0:  # the package's batch dimension starts at 1
            return inputs.new_zeros(0, classes)
        outputs: list[torch.Tensor] = run([inputs.contiguous()])
        return outputs[0]

    return serve


#: Batches up to this size keep ONNX Runtime's arena (the default largest batch); bigger
#: ones (no batching, a larger max_batch_size) return its growth after the run.
ARENA_BATCH = 64


def load_onnx(
    path: Path, device: torch.device, classes: int, threads: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The graph's forward under ONNX Runtime: [N, 28, 28] model inputs -> [N, classes].

    One session, run on the calling thread alone (`threads` intra-op threads, one when the
    server gives each worker one core), with every graph optimisation; the run releases the
    GIL, as TorchScript's forward does. CPU only: the CUDA provider is not installed.
    """
    if device.type != "cpu":
        raise ArtifactError(f"{path.name} runs on CPU only, this server runs on {device.type}")
    try:
        import onnxruntime
    except ImportError as exc:
        raise ArtifactError(f"{path.name} needs onnxruntime, which is not installed") from exc
    import torch

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings are about unused initialisers
    # With several threads, idle ones would spin waiting for work, taking the core from the
    # event loop and the other worker.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The CPU arena keeps the largest batch's buffers for good; a run over ARENA_BATCH
    # gives them back afterwards, so resident memory stays what the memory bound counts
    # (measured: docs/limits.md).
    shrink = onnxruntime.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        (entry,), (exit_,) = session.get_inputs(), session.get_outputs()
    except ValueError as exc:
        raise ArtifactError(f"{path.name} must have one input and one output: {exc}") from exc
    except Exception as exc:
        raise ArtifactError(f"cannot load {path.name}: {exc}") from exc
    run, names, feed = session.run, [exit_.name], entry.name

    def serve(inputs: torch.Tensor) -> torch.Tensor:
        n = inputs.shape[0]
        if n == 0:
            return inputs.new_zeros(0, classes)
        array = inputs.detach().contiguous().numpy()
        return torch.from_numpy(run(names, {feed: array}, shrink if n > ARENA_BATCH else None)[0])

    return serve


def load_artifact(
    artifact: Artifact, path: Path, device: torch.device, classes: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The forward of `artifact` (at `path`) by its format."""
    if artifact.format == "onnx":
        import torch

        return load_onnx(path, device, classes, torch.get_num_threads())
    return load_aoti(path, device, classes)


def check_against(
    reference: Callable[[np.ndarray], torch.Tensor],
    candidate: Callable[[np.ndarray], torch.Tensor],
    inputs: np.ndarray,
    sizes: Sequence[int],
    atol: float,
) -> float:
    """The largest difference between the two on `inputs` at each batch size (inputs are
    repeated to fill a batch); raises ArtifactError past `atol`, or on a differing shape."""
    worst = 0.0
    for size in sizes:
        batch = inputs[np.arange(size) % len(inputs)]
        try:
            got = candidate(batch)
        except Exception as exc:
            raise ArtifactError(f"forward failed at batch {size}: {exc}") from exc
        want = reference(batch)
        if tuple(got.shape) != tuple(want.shape):
            raise ArtifactError(
                f"output shape {tuple(got.shape)} at batch {size}, TorchScript gives "
                f"{tuple(want.shape)}"
            )
        diff = float((got.float() - want.float()).abs().max())
        if not diff <= atol:  # also refuses NaN
            raise ArtifactError(
                f"outputs differ from TorchScript's by {diff:.3g} at batch {size} "
                f"(tolerance {atol:g})"
            )
        worst = max(worst, diff)
    return worst
