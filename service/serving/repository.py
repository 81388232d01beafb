"""ModelRepository: the one owner of the served model, and of the version policy.

It lists the version folders, resolves a version (pinned or newest), loads one beside the
current model and switches to it atomically. Everything else asks it which model is served:
the batcher per batch, the data plane, and metrics through `subscribe`. Importing it does
not import torch (the multi-worker parent resolves versions with it).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from service.config import Settings
from service.serving.card import CardError, ModelCard, ModelLoadError, is_version, list_versions

if TYPE_CHECKING:
    from service.serving.model import Classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: `current is previous` when that version was already served."""

    previous: Classifier
    current: Classifier

    @property
    def switched(self) -> bool:
        return self.current is not self.previous


class ModelRepository:
    """The `<root>/<name>/<version>/` folders of one model and the version being served.

    The folder name is the version: a card that names another version is refused.
    """

    def __init__(self, settings: Settings) -> None:
        self.root = Path(settings.model_repository)
        self.name = settings.model_name
        self.pinned = settings.model_version
        self._settings = settings
        self._current: Classifier | None = None
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

    def serve(self, clf: Classifier) -> None:
        """Make `clf` the served model and tell the observers."""
        self._current = clf
        for observer in self._observers:
            observer(clf)

    @property
    def loaded(self) -> bool:
        return self._current is not None

    @property
    def current(self) -> Classifier:
        """The served model. A batch reads it once and keeps it, so a switch never splits one."""
        if self._current is None:
            raise ModelLoadError("no model loaded yet")
        return self._current

    def subscribe(self, observer: Callable[[Classifier], None]) -> None:
        """Call `observer` with the served model now (if any) and after every switch."""
        self._observers.append(observer)
        if self._current is not None:
            observer(self._current)

    async def reload(self, version: str | None = None) -> Reloaded:
        """Load and warm a version beside the current one, then switch atomically.

        In-flight batches finish on the old model; a version that fails to resolve, load,
        verify or warm up raises ModelLoadError and the current one keeps serving. The
        version already served (same card sha256) is not loaded again.
        """
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()  # created in the loop that uses it
        async with self._reload_lock:
            previous = self.current
            try:
                folder = self.resolve(version)
                card = self.read_card(folder)
                # The same card (version and checksum) is the same model: loading it again
                # would cost a load, a freeze and a warm-up for nothing.
                if (card.name, card.version, card.sha256) == (
                    previous.name, previous.version, previous.card.sha256,
                ):  # fmt: skip
                    logger.info("reload: already serving %s v%s", card.name, card.version)
                    return Reloaded(previous, previous)
                new = await asyncio.to_thread(self.load, card.version)
            except ModelLoadError as exc:
                logger.warning("reload refused, still serving v%s: %s", previous.version, exc)
                raise
            self.serve(new)
            logger.info("now serving %s v%s (was v%s)", new.name, new.version, previous.version)
            return Reloaded(previous, new)


def warmup_sizes(settings: Settings) -> tuple[int, ...]:
    """Batch sizes a freshly loaded model is run at before it serves."""
    sizes = {1, settings.max_batch_size}
    if settings.max_batch_size >= 8:
        sizes.add(8)
    return tuple(sorted(sizes))
