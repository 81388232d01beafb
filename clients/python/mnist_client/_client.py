"""`Client` and `AsyncClient`: /v1/predict with auth, timeouts and polite retries."""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import httpx

from mnist_client._bulk import DEFAULT_LIMITS, FileResult, expand, run_all
from mnist_client._inputs import ImageLike, to_files
from mnist_client._types import ClientError, FeedbackResult, Prediction, PredictResult

DEFAULT_URL = "http://127.0.0.1:8000"
#: Statuses worth another try: the server said it is busy (503) or ran out of time (504).
RETRY_STATUSES = (503, 504)


class _Base:
    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        max_wait_s: float = 10.0,
    ) -> None:
        self.url = (url or os.environ.get("MNIST_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("MNIST_API_KEY")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_wait_s = max_wait_s

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before another try, or None to give up."""
        if attempt >= self.retries:
            return None
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        delay = self.backoff_s * 2**attempt
        if response is not None:
            delay = _retry_after(response.headers.get("retry-after"), delay)
        return min(delay, self.max_wait_s)

    @staticmethod
    def _params(top_k: int | None, one_digit: bool, version: str | int | None) -> dict[str, Any]:
        params: dict[str, Any] = {"top_k": top_k} if top_k else {}
        if one_digit:
            params["one_digit"] = "true"
        if version is not None:
            params["version"] = str(version)
        return params

    @staticmethod
    def _multipart(files: list[tuple[str, bytes]]) -> list[tuple[str, tuple[str, bytes]]]:
        return [("files", (name, data)) for name, data in files]


def _retry_after(value: str | None, default: float) -> float:
    """Retry-After as seconds or an HTTP date (RFC 9110 10.2.3); `default` when absent."""
    if not value:
        return default
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _result(response: httpx.Response) -> PredictResult:
    if response.status_code == 200:
        return PredictResult.from_json(response.json())
    raise _error(response)


def _feedback_result(response: httpx.Response) -> FeedbackResult:
    if response.status_code == 200:
        return FeedbackResult.from_json(response.json())
    raise _error(response)


def _error(response: httpx.Response) -> ClientError:
    try:
        body: Mapping[str, Any] = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, Mapping):
        body = {}
    message = str(body.get("error") or f"HTTP {response.status_code}")
    code = str(body.get("code") or f"http_{response.status_code}")
    return ClientError(message, code=code, status=response.status_code, details=body.get("details"))


def _connection_error(url: str, exc: httpx.TransportError) -> ClientError:
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return ClientError(f"{url}: {exc or type(exc).__name__}", code=kind)


class Client(_Base):
    """Blocking client. `with Client(url, api_key=...) as c: c.predict("seven.png")`."""

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.Client(base_url=self.url, timeout=self.timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self,
        *images: ImageLike,
        top_k: int | None = None,
        one_digit: bool = False,
        version: str | int | None = None,
    ) -> PredictResult:
        """One prediction per image (paths, bytes, open files, PIL images or arrays): a digit,
        a number or not a digit (see `Prediction.kind`). `one_digit=True` reads each image as
        exactly one digit (a form cell), never as a number. `version`: the model version to
        answer with, one the server serves (default: its default version; another is a
        ClientError with code "version_not_served")."""
        files = to_files(images)
        return _result(self._send(files, self._params(top_k, one_digit, version)))

    def feedback(self, request_id: str, truth: int | str, index: int = 0) -> FeedbackResult:
        """Tell the server what file `index` of answer `request_id` really shows: a digit
        (0-9), a number as a string of digits, or `NOT_A_DIGIT`. Giving it again replaces
        it. ClientError 404 ("prediction_not_found") for an unknown or expired answer."""
        body = {"request_id": request_id, "index": index, "truth": truth}
        try:
            response = self._http.post("/v1/feedback", json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise _connection_error(self.url, exc) from exc
        return _feedback_result(response)

    def limits(self) -> dict[str, Any]:
        """The server's request limits (`GET /v1/models`): max_files, max_file_bytes,
        max_request_bytes; the documented defaults where the server does not say."""
        try:
            response = self._http.get("/v1/models", headers=self._headers())
        except httpx.TransportError as exc:
            raise _connection_error(self.url, exc) from exc
        if response.status_code == 401:
            raise _error(response)
        body = response.json() if response.status_code == 200 else {}
        return {**DEFAULT_LIMITS, **(body.get("limits") or {})}

    def predict_many(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        recursive: bool = False,
        glob: str | None = None,
        top_k: int | None = None,
        one_digit: bool = False,
        concurrency: int = 4,
        version: str | int | None = None,
    ) -> Iterator[FileResult]:
        """One `FileResult` per file, in order, as they arrive: folders are expanded (their
        image files, or those matching `glob`; `recursive` for subfolders), the files are
        sent in requests cut to the server's limits, `concurrency` at a time, each retried
        as `predict` is. A file that cannot be read is a result of kind "error"; a refusal
        of every request (a wrong key, no server, a version not served) raises
        ClientError. `version` as for `predict`."""
        files = expand(paths, recursive, glob)
        params = self._params(top_k, one_digit, version)

        def send(chunk: list[tuple[str, bytes]]) -> list[Prediction]:
            return _result(self._send(chunk, params)).predictions

        return run_all(send, files, self.limits(), concurrency)

    def _send(self, files: list[tuple[str, bytes]], params: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.post(
                    "/v1/predict",
                    files=self._multipart(files),
                    params=params,
                    headers=self._headers(),
                )
            except httpx.TransportError as exc:
                delay = self._delay(attempt, None)
                if delay is None:
                    raise _connection_error(self.url, exc) from exc
            else:
                delay = self._delay(attempt, response)
                if delay is None:
                    return response
            time.sleep(delay)
            attempt += 1


class AsyncClient(_Base):
    """asyncio client with the same behaviour as `Client`."""

    def __init__(self, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self._http = httpx.AsyncClient(base_url=self.url, timeout=self.timeout_s)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(
        self,
        *images: ImageLike,
        top_k: int | None = None,
        one_digit: bool = False,
        version: str | int | None = None,
    ) -> PredictResult:
        """One prediction per image (paths, bytes, open files, PIL images or arrays): a digit,
        a number or not a digit (see `Prediction.kind`). `one_digit=True` reads each image as
        exactly one digit (a form cell), never as a number. `version`: the model version to
        answer with, one the server serves (default: its default version; another is a
        ClientError with code "version_not_served")."""
        files = to_files(images)
        return _result(await self._send(files, self._params(top_k, one_digit, version)))

    async def feedback(self, request_id: str, truth: int | str, index: int = 0) -> FeedbackResult:
        """See `Client.feedback`."""
        body = {"request_id": request_id, "index": index, "truth": truth}
        try:
            response = await self._http.post("/v1/feedback", json=body, headers=self._headers())
        except httpx.TransportError as exc:
            raise _connection_error(self.url, exc) from exc
        return _feedback_result(response)

    async def _send(self, files: list[tuple[str, bytes]], params: dict[str, Any]) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = await self._http.post(
                    "/v1/predict",
                    files=self._multipart(files),
                    params=params,
                    headers=self._headers(),
                )
            except httpx.TransportError as exc:
                delay = self._delay(attempt, None)
                if delay is None:
                    raise _connection_error(self.url, exc) from exc
            else:
                delay = self._delay(attempt, response)
                if delay is None:
                    return response
            await asyncio.sleep(delay)
            attempt += 1
