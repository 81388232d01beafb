"""Streaming multipart reader that enforces file-count and byte limits as the body arrives.

Starlette's `request.form()` buffers every part (spooling to disk past 1 MB) before a route
sees it and has no per-file byte cap. This reader drives python-multipart's low-level parser
directly, so an oversized upload is refused with 413 after at most one chunk past the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType


@dataclass
class Upload:
    index: int
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class UploadLimits:
    max_files: int
    max_file_bytes: int
    max_request_bytes: int
    field: str = "files"


class _Collector:
    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self.uploads: list[Upload] = []
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._name = ""
        self._filename: str | None = None

    def on_part_begin(self) -> None:
        self._headers, self._chunks, self._size = {}, [], 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        raw = options.get(b"filename")
        self._filename = raw.decode("utf-8", "replace") if raw is not None else None
        if self._name == self.limits.field and len(self.uploads) >= self.limits.max_files:
            raise PayloadTooLarge(f"too many files: at most {self.limits.max_files} per request")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._name == self.limits.field:
            if self._size > self.limits.max_file_bytes:
                raise PayloadTooLarge(
                    f"file {len(self.uploads)} ({self._filename or 'unnamed'}) exceeds "
                    f"{self.limits.max_file_bytes} bytes",
                )
            self._chunks.append(data[start:end])
        elif self._size > 64 * 1024:
            raise PayloadTooLarge(f"form field {self._name!r} is too large")

    def on_part_end(self) -> None:
        if self._name != self.limits.field:
            return  # other fields are ignored, as the API documents
        content_type = self._headers.get(b"content-type", b"application/octet-stream")
        self.uploads.append(
            Upload(
                index=len(self.uploads),
                filename=self._filename or f"file{len(self.uploads)}",
                content_type=content_type.decode("latin-1"),
                data=b"".join(self._chunks),
            )
        )


async def read_multipart(
    content_type: str | None,
    content_length: str | None,
    stream: AsyncIterator[bytes],
    limits: UploadLimits,
) -> list[Upload]:
    """Parse a multipart/form-data body into the uploads of the `files` field, in order."""
    media, options = parse_options_header(content_type or "")
    if media != b"multipart/form-data":
        raise UnsupportedMediaType("request body must be multipart/form-data with 'files' parts")
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart body has no boundary")
    if (
        content_length
        and content_length.isdigit()
        and int(content_length) > limits.max_request_bytes
    ):
        raise PayloadTooLarge(f"request body exceeds {limits.max_request_bytes} bytes")
    collector = _Collector(limits)
    callbacks = {
        name: getattr(collector, name)
        for name in (
            "on_part_begin", "on_part_data", "on_part_end", "on_header_field",
            "on_header_value", "on_header_end", "on_headers_finished",
        )
    }  # fmt: skip
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in stream:
            received += len(chunk)
            if received > limits.max_request_bytes:
                raise PayloadTooLarge(f"request body exceeds {limits.max_request_bytes} bytes")
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    if not collector.uploads:
        raise InvalidInput("no files: send one or more parts named 'files'")
    return collector.uploads
