"""ModelRepository: the one owner of the served versions, and of the version policy.

It lists the version folders, applies the version policy (which versions are served at
once, within a memory bound), loads them beside the served ones and switches to the new
set atomically. Everything else asks it which model serves a request: the batcher per batch
(the default version, or the one a request named), the data plane, and metrics through
`subscribe`. Importing it does not import torch (the multi-worker parent resolves versions
with it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from service.config import Settings
from service.errors import VersionNotServed
from service.serving.card import (
    MODEL_FILE,
    ONNX_FILE,
    CardError,
    ModelCard,
    ModelLoadError,
    is_version,
    list_versions,
)

if TYPE_CHECKING:
    from service.serving.model import Classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions are served at once, as Triton's `version_policy`.

    `latest:N`: the N newest versions (with a pinned default, the N newest up to and
    including it, so that pinning an older version is a rollback); `all`: every version on
    disk; `specific:1,3`: those versions, each of which must exist.
    """

    kind: Literal["latest", "all", "specific"]
    count: int = 1
    versions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> VersionPolicy:
        """`latest:N`, `all` or `specific:V[,V...]` (ValueError naming what is wrong)."""
        raw = (text or "latest:1").strip().lower()
        kind, _, arg = raw.partition(":")
        if kind == "all" and not arg:
            return cls("all")
        if kind == "latest" and arg.isascii() and arg.isdigit() and 1 <= int(arg) <= 1000:
            return cls("latest", count=int(arg))
        if kind == "specific":
            versions = [v.strip() for v in arg.split(",") if v.strip()]
            if versions and all(is_version(v) for v in versions):
                unique = sorted({str(int(v)) for v in versions}, key=int)
                return cls("specific", versions=tuple(unique))
        raise ValueError(
            f"version policy must be latest:N (N from 1 to 1000), all, or specific:V[,V...] "
            f"with versions of 1 to 18 digits; got {raw[:60]!r}"
        )

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.count}"
        if self.kind == "specific":
            return "specific:" + ",".join(self.versions)
        return "all"

    def select(self, available: list[str], pinned: str | None) -> list[str]:
        """The versions to serve, oldest first, out of `available` (oldest first)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "specific":
            missing = [v for v in self.versions if v not in available]
            if missing:
                raise ModelLoadError(
                    f"version policy {self} names version {', '.join(missing)}, not found "
                    f"(available: {', '.join(available) or 'none'})"
                )
            return list(self.versions)
        upto = available if pinned is None else [v for v in available if int(v) <= int(pinned)]
        return upto[-self.count :]


@dataclass(frozen=True)
class MemoryEstimate:
    """What one loaded version is assumed to hold, from its model file's size.

    Measured on CPU (docs/limits.md): a version of the shipped 0.3 MB file adds 2 to 7 MiB of
    resident memory once torch is warm (weights, the frozen and optimised graphs, oneDNN
    layouts and warm-up buffers), so each file byte counts `per_file_byte` times and each
    version `fixed_mib` more, which overestimates on purpose. A version with an ONNX graph
    may be served by an ONNX Runtime session too, which holds its weights and an arena sized
    by the largest batch (measured: docs/limits.md): `onnx_mib` more.
    """

    per_file_byte: int = 8
    fixed_mib: int = 4
    onnx_mib: int = 12

    def mib(self, folder: Path) -> int:
        size = (folder / MODEL_FILE).stat().st_size
        onnx = self.onnx_mib if (folder / ONNX_FILE).is_file() else 0
        return self.fixed_mib + onnx + -(-size * self.per_file_byte // (1 << 20))


MEMORY = MemoryEstimate()


@dataclass(frozen=True)
class Plan:
    """What a policy serves now: the versions (oldest first) with their estimated MiB, and
    the default one (the pinned version, else the newest of them)."""

    default: str
    estimates: Mapping[str, int]

    @property
    def versions(self) -> list[str]:
        return list(self.estimates)


@dataclass(frozen=True)
class Served:
    """The versions being served, switched as one: `default` answers requests that name no
    version."""

    default: Classifier
    models: Mapping[str, Classifier] = field(default_factory=dict)

    @classmethod
    def of(cls, clf: Classifier) -> Served:
        return cls(clf, {clf.version: clf})


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: `current is previous` (and nothing added or removed) when the
    policy's versions were already served."""

    previous: Classifier
    current: Classifier
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()

    @property
    def switched(self) -> bool:
        return self.current is not self.previous or bool(self.added or self.removed)


class ModelRepository:
    """The `<root>/<name>/<version>/` folders of one model and the versions being served.

    The folder name is the version: a card that names another version is refused.
    """

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.model_repository)
        self.name = settings.model_name
        self.pinned = settings.model_version
        self.policy = VersionPolicy.parse(settings.version_policy)
        self.max_memory_mib = settings.max_model_memory_mib
        self._settings = settings
        self._served: Served | None = None
        self._observers: list[Callable[[Classifier], None]] = []
        self._reload_lock: asyncio.Lock | None = None

    # ---------------------------------------------------------------- versions

    def versions(self) -> list[str]:
        """Version folders holding a card, oldest first (raises ModelLoadError)."""
        try:
            return [str(v) for v in list_versions(self.root, self.name)]
        except CardError as exc:
            raise ModelLoadError(str(exc)) from exc

    def resolve(self, version: str | None = None) -> Path:
        """The folder of `version`, else of the pinned one, else of the newest."""
        version = version or self.pinned
        available = self.versions()
        if version is None:
            if not available:
                raise ModelLoadError(f"no versions of model {self.name!r} found under {self.root}")
            return self.root / self.name / available[-1]
        if not is_version(version):
            raise ModelLoadError(
                f"model version must be 1 to 18 ASCII digits, got {version[:40]!r}"
            )
        if str(int(version)) not in available:
            raise ModelLoadError(
                f"model {self.name!r} version {version} not found under {self.root} "
                f"(available: {', '.join(available) or 'none'})"
            )
        return self.root / self.name / str(int(version))

    def plan(self, pinned: str | None = None) -> Plan:
        """The versions the policy serves with `pinned` (default: the configured pin) as the
        default, checked against the memory bound; ModelLoadError when it cannot be served."""
        pinned = pinned or self.pinned
        default = self.resolve(pinned).name  # the pin exists, or there is a newest version
        chosen = self.policy.select(self.versions(), pinned and default)
        if pinned is None:
            default = chosen[-1]
        elif default not in chosen:
            raise ModelLoadError(
                f"version {default} is not one the version policy {self.policy} serves "
                f"({', '.join(chosen) or 'none'})"
            )
        estimates = {v: MEMORY.mib(self.root / self.name / v) for v in chosen}
        total = sum(estimates.values())
        if total > self.max_memory_mib:
            raise ModelLoadError(
                f"version policy {self.policy} serves versions {', '.join(chosen)}, an "
                f"estimated {total} MiB, over max_model_memory_mib ({self.max_memory_mib}): "
                "serve fewer versions or raise MNIST_MAX_MODEL_MEMORY_MIB"
            )
        return Plan(default, estimates)

    @staticmethod
    def read_card(folder: Path) -> ModelCard:
        """The folder's card, refused unless it names the folder's version."""
        try:
            card = ModelCard.read(folder)
        except CardError as exc:
            raise ModelLoadError(str(exc)) from exc
        if card.version != folder.name:
            raise ModelLoadError(
                f"version folder {folder} holds a card for version {card.version}: the folder "
                "name is the version; rename the folder or fix the card"
            )
        return card

    # ---------------------------------------------------------------- loading

    def load(self, version: str | None = None) -> Classifier:
        """Load and warm up `version` (default: pinned, else newest) without serving it."""
        from service.serving.model import Classifier, resolve_device

        folder = self.resolve(version)
        self.read_card(folder)
        clf = Classifier.load(
            folder,
            resolve_device(self._settings.device),
            half=self._settings.half_precision,
            optimize=self._settings.optimize,
            runtime=self._settings.model_runtime,
            warmup_batch_sizes=warmup_sizes(self._settings),
        )
        # NOTE: the intermediate script modules of a load (as loaded, frozen, optimised) sit
        # in reference cycles inside torch.jit, holding weights and graphs. The tuned GC
        # (gc.freeze, high thresholds) seldom runs the full collection that frees them, so
        # free them now: the reload leak described in docs/operations.md.
        gc.collect()
        return clf

    def load_plan(self, plan: Plan) -> Served:
        """Every version of `plan` loaded and warmed, reusing those already served with the
        same card (version and checksum): loading one again would cost a load, a freeze and
        a warm-up for nothing."""
        have = self._served.models if self._served is not None else {}
        models: dict[str, Classifier] = {}
        for version in plan.versions:
            card = self.read_card(self.root / self.name / version)
            old = have.get(version)
            if old is not None and (old.name, old.card.sha256) == (card.name, card.sha256):
                models[version] = old
            else:
                models[version] = self.load(version)
        return Served(models[plan.default], models)

    def start(self, pinned: str | None = None) -> None:
        """Load and serve what the policy serves (start-up, on this thread)."""
        self.serve(self.load_plan(self.plan(pinned)))

    def serve(self, served: Served | Classifier) -> None:
        """Make `served` (a set of versions, or one model alone) the served versions, and tell
        the observers about the default one."""
        if not isinstance(served, Served):
            served = Served.of(served)
        self._served = served
        for observer in self._observers:
            observer(served.default)

    @property
    def loaded(self) -> bool:
        return self._served is not None

    @property
    def current(self) -> Classifier:
        """The default version. A batch reads it once and keeps it, so a switch never splits
        one."""
        if self._served is None:
            raise ModelLoadError("no model loaded yet")
        return self._served.default

    @property
    def served(self) -> Served:
        if self._served is None:
            raise ModelLoadError("no model loaded yet")
        return self._served

    def lookup(self, version: str | None) -> Classifier:
        """The served model of `version` (the default for None), else 404 version_not_served."""
        served = self.served
        if not version:
            return served.default
        clf = served.models.get(version)
        if clf is None:
            clf = served.models.get(str(int(version))) if is_version(version) else None
        if clf is None:
            raise self.not_served(version)
        return clf

    def not_served(self, version: str) -> VersionNotServed:
        served = ", ".join(self.served.models)
        try:
            on_disk = self.versions()
        except ModelLoadError:
            on_disk = []
        where = (
            f"on disk but not served by the version policy {self.policy}"
            if is_version(version) and str(int(version)) in on_disk
            else "not found"
        )
        return VersionNotServed(
            f"model {self.name!r} version {version[:40]!r} is {where}; served versions: {served}"
        )

    def subscribe(self, observer: Callable[[Classifier], None]) -> None:
        """Call `observer` with the default model now (if any) and after every switch."""
        self._observers.append(observer)
        if self._served is not None:
            observer(self._served.default)

    async def reload(self, version: str | None = None) -> Reloaded:
        """Apply the policy again (with `version` as the default), loading and warming the
        versions it adds beside the served ones, then switch atomically.

        In-flight batches finish on the models they started on; a version that fails to
        resolve, load, verify or warm up, or a set over the memory bound, raises
        ModelLoadError and the served versions keep serving. Versions already served (same
        card sha256) are not loaded again.
        """
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()  # created in the loop that uses it
        async with self._reload_lock:
            before = self.served
            previous = before.default
            try:
                plan = self.plan(version)
                for v in plan.versions:
                    self.read_card(self.root / self.name / v)  # refuse before loading any
                unchanged = plan.versions == list(before.models) and all(
                    self.read_card(self.root / self.name / v).sha256 == before.models[v].card.sha256
                    for v in plan.versions
                )
                if unchanged and plan.default == previous.version:
                    logger.info("reload: already serving %s v%s", self.name, previous.version)
                    return Reloaded(previous, previous, versions=tuple(plan.versions))
                new = await asyncio.to_thread(self.load_plan, plan)
            except ModelLoadError as exc:
                logger.warning("reload refused, still serving v%s: %s", previous.version, exc)
                raise
            self.serve(new)
            added = tuple(v for v, m in new.models.items() if before.models.get(v) is not m)
            removed = tuple(v for v in before.models if v not in new.models)
            logger.info(
                "now serving %s v%s (was v%s); versions %s",
                self.name, new.default.version, previous.version, ", ".join(new.models),
            )  # fmt: skip
            return Reloaded(previous, new.default, added, removed, tuple(new.models))


def warmup_sizes(settings: Settings) -> tuple[int, ...]:
    """Batch sizes a freshly loaded model is run at before it serves."""
    sizes = {1, settings.max_batch_size}
    if settings.max_batch_size >= 8:
        sizes.add(8)
    return tuple(sorted(sizes))
