"""Streaming multipart reader that enforces file-count and byte limits as the body arrives.

Starlette's `request.form()` buffers every part (spooling to disk past 1 MB) before a route
sees it and has no per-file byte cap. This reader feeds the body to `multipart`'s push
parser chunk by chunk, so an oversized upload is refused with 413 after at most one chunk
past the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from multipart import (
    MultipartError,
    MultipartSegment,
    ParserLimitReached,
    PushMultipartParser,
    parse_options_header,
)

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

# NOTE: `multipart` (Bottle's parser) rather than python-multipart, which FastAPI uses:
# python-multipart walks part headers byte by byte in Python (measured: docs/decisions.md).


@dataclass
class Upload:
    filename: str
    data: bytes


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_file_bytes: int
    max_request_bytes: int
    field: str = "files"


class _Collector:
    """Turns the parser's events into `Upload`s, refusing a part as soon as it is too big."""

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self._segment: MultipartSegment | None = None
        self._chunks: list[bytes] = []

    def event(self, event: MultipartSegment | bytes | None) -> None:
        if isinstance(event, MultipartSegment):
            self._begin(event)
        elif event is None:
            self._end()
        else:
            self._data(event)

    def _begin(self, segment: MultipartSegment) -> None:
        # A strict request: a misspelt field name is an error, not a silently empty request
        # (the options are query parameters; see docs/integration.md).
        if segment.name != self.limits.field:
            raise InvalidInput(
                f"unknown form field: {segment.name[:40]}; send each file as a part named "
                f"{self.limits.field!r}"
            )
        self._segment, self._chunks = segment, []
        if len(self.uploads) >= self.limits.max_files:
            raise PayloadTooLarge(f"too many files: at most {self.limits.max_files} per request")

    def _data(self, chunk: bytes) -> None:
        segment = self._segment
        assert segment is not None
        if segment.bytes_received > self.limits.max_file_bytes:
            raise PayloadTooLarge(
                f"file {len(self.uploads)} ({segment.filename or 'unnamed'}) exceeds "
                f"{self.limits.max_file_bytes} bytes",
            )
        self._chunks.append(chunk)

    def _end(self) -> None:
        segment = self._segment
        assert segment is not None
        index = len(self.uploads)
        self.uploads.append(Upload(segment.filename or f"file{index}", b"".join(self._chunks)))
        self._segment, self._chunks = None, []


async def read_multipart(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    limits: UploadLimits,
) -> list[Upload]:
    """Parse a multipart/form-data body into the uploads of the `files` field, in order."""
    media, options = parse_options_header(content_type or "")
    if media != "multipart/form-data":
        raise UnsupportedMediaType("request body must be multipart/form-data with 'files' parts")
    boundary = options.get("boundary")
    if not boundary:
        raise InvalidInput("multipart body has no boundary")
    if (
        content_length
        and content_length.isdigit()
        and int(content_length) > limits.max_request_bytes
    ):
        raise PayloadTooLarge(f"request body exceeds {limits.max_request_bytes} bytes")
    collector = _Collector(limits)
    received = 0
    try:
        parser = PushMultipartParser(boundary)
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise PayloadTooLarge(f"request body exceeds {limits.max_request_bytes} bytes")
            if chunk:
                for event in parser.parse(chunk):
                    collector.event(event)
        parser.close()
    except ParserLimitReached as exc:
        raise PayloadTooLarge(f"multipart body exceeds a parser limit: {exc}") from exc
    except MultipartError as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    if not collector.uploads:
        raise InvalidInput("no files: send one or more parts named 'files'")
    return collector.uploads
