"""Turn what a caller has (paths, bytes, files, PIL images, arrays) into named image files."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from mnist_client._types import ClientError

#: What `predict` accepts, one image each (a 3-D array is N images).
ImageLike = Any


def to_files(images: tuple[ImageLike, ...]) -> list[tuple[str, bytes]]:
    """(filename, encoded bytes) per image, in order."""
    if not images:
        raise ClientError("no images given", code="invalid_input")
    files: list[tuple[str, bytes]] = []
    for i, image in enumerate(images):
        files.extend(_one(i, image))
    return files


def _one(index: int, image: ImageLike) -> list[tuple[str, bytes]]:
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            return [(path.name, path.read_bytes())]
        except OSError as exc:
            raise ClientError(f"cannot read {path}: {exc.strerror}", code="invalid_input") from exc
    if isinstance(image, bytes | bytearray | memoryview):
        return [(f"image{index}", bytes(image))]
    if hasattr(image, "read"):  # an open binary file
        name = Path(str(getattr(image, "name", f"image{index}"))).name
        return [(name, image.read())]
    module = type(image).__module__
    if module.startswith("PIL."):
        return [(f"image{index}.png", _png(image))]
    if module == "numpy":
        return _arrays(index, image)
    raise ClientError(
        f"image {index}: cannot send a {type(image).__name__}; pass a path, bytes, an open "
        "file, a PIL image or a numpy array",
        code="invalid_input",
    )


def _png(pil_image: Any) -> bytes:
    buf = io.BytesIO()
    pil_image.save(buf, format="PNG")
    return buf.getvalue()


def _arrays(index: int, array: Any) -> list[tuple[str, bytes]]:
    """A [H,W] array is one grayscale image, [N,H,W] is N; floats are read as 0..1."""
    import numpy as np

    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ClientError("sending arrays needs Pillow", code="invalid_input") from exc
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ClientError(
            f"image {index}: an array must be [H,W] or [N,H,W], got {list(array.shape)}",
            code="invalid_input",
        )
    if array.dtype.kind == "f":
        array = np.clip(array * 255.0, 0, 255).round()
    pixels = array.astype(np.uint8)
    return [(f"image{index}_{n}.png", _png(Image.fromarray(p))) for n, p in enumerate(pixels)]
