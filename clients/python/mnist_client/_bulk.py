"""Many files: folders expanded, chunks cut to the server's limits, sent concurrently, one
result per file in order, a file that cannot be read answered in its place."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mnist_client._types import ClientError, Prediction

#: What a folder contributes without --glob: the image files the server reads.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: Multipart framing per file (boundary, headers), counted against max_request_bytes.
PART_OVERHEAD_BYTES = 512
#: Where /v1/models cannot be read (an older server): the server's documented defaults.
DEFAULT_LIMITS = {"max_files": 64, "max_file_bytes": 10 << 20, "max_request_bytes": 32 << 20}
#: The request as a whole was refused: no other chunk would fare better.
FATAL_CODES = frozenset(
    {"unauthorized", "connection_error", "timeout", "not_found", "version_not_served"}
)


@dataclass(frozen=True)
class FileResult:
    """One file's answer: `prediction.kind` is "error" (with `code` and `error`) where the
    file could not be read, by the client or by the server."""

    path: str
    prediction: Prediction


def expand(paths: Iterable[str | os.PathLike[str]], recursive: bool = False,
           glob: str | None = None) -> list[str]:  # fmt: skip
    """Files as given; for a folder, its image files (or those matching `glob`), sorted, and
    with `recursive` those of its subfolders too."""
    out: list[str] = []
    for given in paths:
        path = Path(given)
        if not path.is_dir():
            out.append(str(given))
            continue
        pattern = glob or "*"
        found = path.rglob(pattern) if recursive else path.glob(pattern)
        out.extend(
            str(p)
            for p in sorted(found)
            if p.is_file() and (glob is not None or p.suffix.lower() in IMAGE_SUFFIXES)
        )
    return out


def failed(index: int, path: str, code: str, message: str) -> FileResult:
    p = Prediction(index, Path(path).name, None, None, kind="error", code=code, error=message)
    return FileResult(path, p)


Entry = tuple[int, str] | FileResult


def chunks(paths: Sequence[str], limits: dict[str, Any]) -> Iterator[list[Entry]]:
    """Lists of (index, path) that fit one request each; a file refused before sending
    (missing, unreadable, over max_file_bytes) is its result, kept in its place."""
    max_files = max(1, int(limits["max_files"]))
    max_file = int(limits["max_file_bytes"])
    max_request = int(limits["max_request_bytes"])
    chunk: list[Entry] = []
    size = 0
    for index, path in enumerate(paths):
        try:
            length = os.stat(path).st_size
        except OSError as exc:
            chunk.append(failed(index, path, "unreadable", f"cannot read {path}: {exc.strerror}"))
            continue
        if length > max_file:
            message = f"{length} bytes; the server takes at most {max_file} per file"
            chunk.append(failed(index, path, "payload_too_large", message))
            continue
        cost = length + PART_OVERHEAD_BYTES + len(path)
        sendable = sum(not isinstance(e, FileResult) for e in chunk)
        if sendable and (sendable >= max_files or size + cost > max_request):
            yield chunk
            chunk, size = [], 0
        chunk.append((index, path))
        size += cost
    if chunk:
        yield chunk


#: Sends one chunk of (filename, bytes) and returns its predictions (or raises ClientError).
SendChunk = Callable[[list[tuple[str, bytes]]], list[Prediction]]


def run_chunk(send: SendChunk, chunk: list[Entry]) -> list[FileResult]:
    """The chunk's results; a chunk the server refuses as a whole for its content is split
    until each file has its own answer."""
    files: list[tuple[str, bytes]] = []
    results: dict[int, FileResult] = {}
    kept: list[tuple[int, str]] = []
    for entry in chunk:
        if isinstance(entry, FileResult):
            results[entry.prediction.index] = entry
            continue
        index, path = entry
        try:
            files.append((Path(path).name, Path(path).read_bytes()))
            kept.append((index, path))
        except OSError as exc:
            results[index] = failed(index, path, "unreadable", f"cannot read {path}: {exc}")
    if kept:
        try:
            answers = send(files)
        except ClientError as exc:
            if exc.code in FATAL_CODES or exc.status is None or exc.status >= 500:
                raise
            if len(kept) == 1:
                index, path = kept[0]
                results[index] = failed(index, path, exc.code, exc.message)
            else:
                half = len(kept) // 2
                parts: tuple[list[Entry], list[Entry]] = (list(kept[:half]), list(kept[half:]))
                for part in parts:
                    for r in run_chunk(send, part):
                        results[r.prediction.index] = r
        else:
            for (index, path), p in zip(kept, answers, strict=True):
                results[index] = FileResult(path, _reindexed(p, index))
    return [results[i] for i in sorted(results)]


def _reindexed(p: Prediction, index: int) -> Prediction:
    return replace(p, index=index)


def run_all(send: SendChunk, paths: Sequence[str], limits: dict[str, Any],
            concurrency: int) -> Iterator[FileResult]:  # fmt: skip
    """Every file's result in input order, at most `concurrency` requests in flight."""
    window: deque[Future[list[FileResult]]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        try:
            for chunk in chunks(paths, limits):
                window.append(pool.submit(run_chunk, send, chunk))
                while len(window) > 2 * concurrency:
                    yield from window.popleft().result()
            while window:
                yield from window.popleft().result()
        finally:
            for future in window:
                future.cancel()
