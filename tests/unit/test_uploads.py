"""read_multipart on its own: bodies encoded by httpx, fed in arbitrary chunks, and bad ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InvalidInput, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.http.uploads import UploadLimits, read_multipart

LIMITS = UploadLimits(max_files=4, max_file_bytes=1000, max_request_bytes=10_000)
BOUNDARY = "b0und"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def _encode(
    files: list[tuple[str, bytes]], data: dict[str, str] | None = None
) -> tuple[str, bytes]:
    """A body exactly as a real client (httpx) writes it, with its Content-Type."""
    request = httpx.Request(
        "POST",
        "http://x/v1/predict",
        files=[("files", (name, blob, "image/png")) for name, blob in files],
        data=data,
    )
    return request.headers["content-type"], request.read()


def _raw(*parts: bytes) -> bytes:
    return b"".join(parts)


class _Stream:
    """An ASGI-like body stream that records how much of the body was consumed."""

    def __init__(self, body: bytes, chunk: int) -> None:
        self.chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] + [b""]
        self.consumed = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            self.consumed += len(c)
            yield c


async def _read(
    body: bytes,
    content_type: str = CONTENT_TYPE,
    limits: UploadLimits = LIMITS,
    chunk: int = 1 << 16,
    content_length: str | None = None,
) -> list[tuple[str, bytes]]:
    uploads = await read_multipart(
        content_type, content_length, _Stream(body, chunk).__aiter__(), limits
    )
    return [(u.filename, u.data) for u in uploads]


_names = st.text(
    alphabet=st.characters(
        codec="utf-8", exclude_categories=["Cc", "Cs"], exclude_characters='"\\%'
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(
    files=st.lists(st.tuples(_names, st.binary(max_size=300)), min_size=1, max_size=4),
    chunk=st.integers(min_value=1, max_value=700),
)
async def test_any_chunking_yields_the_files_in_order(
    files: list[tuple[str, bytes]], chunk: int
) -> None:
    content_type, body = _encode(files)
    got = await _read(body, content_type, chunk=chunk)
    assert got == files


async def test_unnamed_files_get_a_name() -> None:
    body = _raw(
        b'--b0und\r\nContent-Disposition: form-data; name="files"\r\n\r\nABC\r\n',
        b"--b0und--\r\n",
    )
    assert await _read(body) == [("file0", b"ABC")]


async def test_another_field_is_refused_by_name_before_its_bytes_are_read() -> None:
    body = _raw(
        b'--b0und\r\nContent-Disposition: form-data; name="files"\r\n\r\nABC\r\n',
        b'--b0und\r\nContent-Disposition: form-data; name="file"\r\n\r\n' + b"x" * 5000,
    )
    with pytest.raises(InvalidInput, match="^unknown form field: file; send each file as a"):
        await _read(body)


@pytest.mark.parametrize(
    ("content_type", "error", "message"),
    [
        ("application/json", UnsupportedMediaType, "must be multipart/form-data"),
        ("", UnsupportedMediaType, "must be multipart/form-data"),
        ("multipart/form-data", InvalidInput, "no boundary"),
    ],
)
async def test_content_type_is_checked_first(
    content_type: str, error: type[ServiceError], message: str
) -> None:
    _, body = _encode([("a.png", b"x")])
    with pytest.raises(error, match=message):
        await _read(body, content_type)


async def test_too_many_files_is_413() -> None:
    content_type, body = _encode([("a.png", b"x")] * 5)
    with pytest.raises(PayloadTooLarge, match="at most 4"):
        await _read(body, content_type)


async def test_an_oversized_file_is_refused_before_the_body_ends() -> None:
    head = b'--b0und\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    stream = _Stream(head + b"\0" * 9000, chunk=500)
    with pytest.raises(PayloadTooLarge, match=r"file 0 \(big.png\) exceeds 1000 bytes"):
        await read_multipart(CONTENT_TYPE, None, stream.__aiter__(), LIMITS)
    assert stream.consumed < 2000


async def test_request_bytes_are_capped_by_header_and_while_streaming() -> None:
    many = UploadLimits(max_files=100, max_file_bytes=1000, max_request_bytes=10_000)
    content_type, body = _encode([("a.png", b"\0" * 900)] * 12)
    with pytest.raises(PayloadTooLarge, match="exceeds 10000 bytes"):
        await _read(body, content_type, limits=many, content_length=str(len(body)))
    with pytest.raises(PayloadTooLarge, match="exceeds 10000 bytes"):
        await _read(
            body, content_type, limits=many, chunk=1000
        )  # no Content-Length: counted as it arrives


async def test_a_huge_part_header_is_413() -> None:
    body = b'--b0und\r\nContent-Disposition: form-data; name="files"; x=' + b"a" * 5000
    with pytest.raises(PayloadTooLarge, match="parser limit"):
        await _read(body, chunk=100)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"--b0und\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nABC",
                     id="no closing boundary"),
        pytest.param(b"--b0und\r\nContent-Type: image/png\r\n\r\nABC\r\n--b0und--\r\n",
                     id="no content-disposition"),
        pytest.param(b"--b0und\r\nContent-Disposition: form-data; name=\"files\"; "
                     b"filename=\"\xff\xfe\"\r\n\r\nABC\r\n--b0und--\r\n",
                     id="header not utf-8"),
        pytest.param(b"--b0und\nContent-Disposition: form-data; name=\"files\"\n\nABC\n--b0und--\n",
                     id="bare LF line breaks"),
        pytest.param(b"--b0und\r\nno colon here\r\n\r\nABC\r\n--b0und--\r\n",
                     id="header without colon"),
        pytest.param(b"", id="empty body"),
    ],
)  # fmt: skip
async def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(InvalidInput, match="malformed multipart body"):
        await _read(body)


async def test_a_body_without_files_parts_is_400() -> None:
    body = b"--b0und--\r\n"
    with pytest.raises(InvalidInput, match="no files"):
        await _read(body)
