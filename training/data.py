"""MNIST through torchvision, from either folder layout, with one clear error when absent."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from torchvision.datasets import MNIST
from torchvision.datasets.utils import extract_archive

logger = logging.getLogger(__name__)

#: The four original files and their published MD5s (torchvision's own list).
FILES: dict[str, str] = dict(MNIST.resources)


class DataError(Exception):
    """The data set is missing, corrupt or cannot be fetched."""


class _StagedMNIST(MNIST):
    """torchvision's MNIST reading its raw files from an explicit folder."""

    def __init__(self, raw_dir: Path, train: bool) -> None:
        self._raw_dir = str(raw_dir)
        super().__init__(root=str(raw_dir), train=train, download=False)

    @property
    def raw_folder(self) -> str:
        return self._raw_dir


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnist-serving"


def _stage_flat(data_dir: Path, cache_dir: Path) -> Path:
    """Extract a flat folder of the four .gz files into a cache (the source may be read-only)."""
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    raw = cache_dir / f"raw-{key}"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FILES:
        src = data_dir / gz
        dst = raw / gz.removesuffix(".gz")
        stamp = raw / (gz + ".md5")
        digest = _md5(src)
        if dst.is_file() and stamp.is_file() and stamp.read_text() == digest:
            continue
        try:
            extract_archive(str(src), str(raw))
        except Exception as exc:  # gzip raises several types for a damaged file
            raise DataError(f"corrupt MNIST file {src}: {exc}") from exc
        stamp.write_text(digest)
    return raw


def file_checksums(folder: Path) -> dict[str, dict[str, object]]:
    """MD5 of each original file found in `folder`, and whether it is the published one."""
    out: dict[str, dict[str, object]] = {}
    for name, official in FILES.items():
        for candidate in (folder / name, folder / "MNIST" / "raw" / name):
            if candidate.is_file():
                digest = _md5(candidate)
                out[name] = {"md5": digest, "official": digest == official}
                break
    return out


def load_mnist(
    data_dir: Path, *, train: bool, cache_dir: Path | None = None, download: bool = True
) -> MNIST:
    """Return torchvision's MNIST split from `data_dir`.

    Accepts torchvision's layout (`data_dir/MNIST/raw/...`) or a folder that directly holds
    the four `.gz` files; downloads through torchvision only when neither is present.
    """
    data_dir = Path(data_dir)
    flat = all((data_dir / name).is_file() for name in FILES)
    try:
        if flat:
            raw = _stage_flat(data_dir, Path(cache_dir) if cache_dir else _default_cache())
            return _StagedMNIST(raw, train=train)
        probe = MNIST.__new__(MNIST)
        probe.root = str(data_dir)
        if not probe._check_exists():
            if not download:
                raise DataError(_missing_message(data_dir))
            logger.info("MNIST not found in %s: downloading through torchvision", data_dir)
            try:
                MNIST(root=str(data_dir), train=train, download=True)
            except Exception as exc:  # URLError, RuntimeError from every mirror, OSError
                raise DataError(_missing_message(data_dir) + f" (download failed: {exc})") from exc
        return MNIST(root=str(data_dir), train=train, download=False)
    except DataError:
        raise
    except Exception as exc:  # torchvision asserts on a malformed IDX header
        raise DataError(f"corrupt MNIST data in {data_dir}: {exc!r}") from exc


def _missing_message(data_dir: Path) -> str:
    names = ", ".join(FILES)
    return (
        f"MNIST files not found in {data_dir}: put {names} there "
        f"(or in {data_dir}/MNIST/raw/), or run once with network access"
    )
