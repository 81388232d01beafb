"""Connection-level limits: uvicorn's httptools protocol with caps and timeouts on the wire.

uvicorn (httptools) accepts headers of any size, waits forever for headers and bodies, and
accepts connections until the process runs out of file descriptors. `GuardedHttpProtocol`
adds, per connection and with one timer handle and a few counters (no task):

- a cap on the request head (URL + header bytes, header count): 414 or 431;
- a header timeout from connection open (or the first byte of a later request) to the end
  of the head: a silent connection is closed, a begun request gets 408;
- a body timeout between body chunks while the app reads: 408, and the app sees a
  disconnect instead of waiting for bytes that never come;
- a cap on open connections per worker, below RLIMIT_NOFILE: 503 and close.

uvicorn's own `timeout_keep_alive` closes idle keep-alive connections. Every refusal is a
JSON error body {"error", "code"} with `Connection: close`, and is tallied into one
rate-limited log line.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

if TYPE_CHECKING:
    from service.config import Settings

logger = logging.getLogger(__name__)

#: File descriptors kept free beside the connections: model files, logs, the metrics files
#: of several workers, the event loop's own descriptors, a reload's second model.
FD_RESERVE = 64

#: How long a refused connection may keep sending (discarded) after its error response, so
#: the client reads the response instead of a reset (a short form of nginx's lingering close).
LINGER_S = 2.0

#: How often the refusal tally is logged (the first refusal after a quiet spell at once).
LOG_EVERY_S = 10.0

#: The tally's kind for connections refused at the cap (logged as a warning).
AT_CAP = "at cap"

# Parser states, tracked from the parser callbacks.
_IDLE, _HEAD, _BODY = 0, 1, 2


@dataclass(frozen=True)
class ConnectionLimits:
    """What one worker enforces; frozen and picklable, since uvicorn pickles its config
    into every worker process. The defaults live in Settings."""

    max_header_bytes: int
    max_header_count: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int
    send_timeout_s: float = 30.0
    #: RLIMIT_NOFILE when it lowered `max_connections`, for the log line; None otherwise.
    fd_limit: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ConnectionLimits:
        """The limits of `settings` (and `overrides`), with a connection cap that leaves
        FD_RESERVE descriptors free under RLIMIT_NOFILE."""
        fields = {
            "max_header_bytes": settings.max_header_bytes,
            "max_header_count": settings.max_header_count,
            "header_timeout_s": settings.header_timeout_s,
            "body_timeout_s": settings.body_timeout_s,
            "max_connections": settings.max_connections,
            "send_timeout_s": settings.send_timeout_s,
            **overrides,
        }
        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= fields["max_connections"]:
            return cls(**fields)
        fields["max_connections"] = max(1, soft - FD_RESERVE)
        return cls(**fields, fd_limit=soft)

    def describe_cap(self) -> str:
        if self.fd_limit is None:
            return f"cap {self.max_connections} per worker"
        return (
            f"cap {self.max_connections} per worker (RLIMIT_NOFILE {self.fd_limit} "
            f"minus {FD_RESERVE} reserved)"
        )


def protocol_factory(limits: ConnectionLimits) -> functools.partial[GuardedHttpProtocol]:
    """The `http=` argument for uvicorn: a partial (of a module-level class and a frozen
    dataclass) pickles, so `--workers N` hands the same limits to every worker."""
    return functools.partial(GuardedHttpProtocol, limits=limits)


def _error_response(status: int, code: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": message, "code": code}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _Refused(Exception):
    """Raised from a parser callback; caught in data_received, which answers it."""

    def __init__(self, status: int, code: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.kind = status, code, message, kind


class _Tally:
    """Refusals by kind, logged as one line per LOG_EVERY_S in each worker process."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last_logged = -LOG_EVERY_S
        self.scheduled = False
        self.cap = ""

    def note(self, kind: str, loop: asyncio.AbstractEventLoop) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.scheduled:
            return
        wait = self.last_logged + LOG_EVERY_S - time.monotonic()
        if wait <= 0:
            self.flush()
        else:
            self.scheduled = True
            loop.call_later(wait, self.flush)

    def flush(self) -> None:
        self.scheduled = False
        self.last_logged = time.monotonic()
        counts, self.counts = self.counts, {}
        refused = counts.pop(AT_CAP, 0)
        others = ", ".join(f"{n} x {kind}" for kind, n in sorted(counts.items()))
        if refused:
            logger.warning(
                "refused %d connection(s) in the last %.0f s: connection %s reached%s",
                refused,
                LOG_EVERY_S,
                self.cap,
                f"; also {others}" if others else "",
            )
        elif others:
            logger.info("connection limits in the last %.0f s: %s", LOG_EVERY_S, others)


_tally = _Tally()


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with caps and timeouts (see the module docstring)."""

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._state = _IDLE
        self._head_raw = 0  # bytes received since the current head began
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._deadline = 0.0
        self._waiting_head = False  # the deadline is a header deadline
        self._app_was_not_reading = False  # at the last body deadline
        self._closing = False  # refused: discard input, close soon
        self._send_stalled: asyncio.TimerHandle | None = None

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            # NOTE: refused without joining server_state.connections, so the cap counts only
            # connections that are served; the socket is closed at once to free its fd.
            self.transport = transport
            self._closing = True
            _tally.cap = self.limits.describe_cap()
            _tally.note(AT_CAP, self.loop)
            transport.write(self._REFUSED_AT_CAP)
            transport.close()
            return
        super().connection_made(transport)
        self._waiting_head = True
        self._set_deadline(self.loop.time() + self.limits.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._send_stalled is not None:
            self._send_stalled.cancel()
            self._send_stalled = None
        if self.flow is None:  # refused in connection_made: nothing was set up
            return
        super().connection_lost(exc)

    _REFUSED_AT_CAP = _error_response(
        503,
        "too_many_connections",
        "the server has too many open connections; retry shortly",
        b"retry-after: 1\r\n",
    )

    # Input

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after an error response: discard
        self._unset_keepalive_if_required()
        if self._state != _BODY:
            self._head_raw += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse(refused.status, refused.code, refused.message, refused.kind)
            else:
                message = f"malformed HTTP request: {exc}"
                if self.cycle is not None and not self.cycle.response_complete:
                    # Bytes past a whole request arrived before its answer.
                    message += " (after a complete request: Content-Length shorter than the body?)"
                self._refuse(400, "bad_request", message, "400 malformed request")
            return
        state = self._state
        if state == _BODY:
            self._waiting_head = False
            self._set_deadline(self.loop.time() + self.limits.body_timeout_s)
        elif state == _HEAD or self.cycle is None or self.cycle.response_complete:
            if self._head_raw > self.limits.max_header_bytes:
                # Still in the request line when the URL is (nearly) all that came.
                url_at_fault = state == _HEAD and len(self.url) + 32 >= self._head_raw
                refused = self._head_too_large(url_at_fault)
                self._refuse(refused.status, refused.code, refused.message, refused.kind)
            elif not self._waiting_head:
                self._waiting_head = True
                self._set_deadline(self.loop.time() + self.limits.header_timeout_s)
        else:  # a whole request is in: the app's deadlines apply
            self._waiting_head = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._state = _HEAD

    def on_headers_complete(self) -> None:
        # NOTE: no per-header callback of ours: the count is one len(), and the raw count
        # (which includes any body sharing the head's last read) is summed exactly only
        # when it is over the cap, so a typical request pays two comparisons.
        limits = self.limits
        if len(self.headers) > limits.max_header_count or (
            self._head_raw > limits.max_header_bytes
            and len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            > limits.max_header_bytes
        ):
            raise self._head_too_large(len(self.url) > limits.max_header_bytes)
        self._state = _BODY
        self._head_raw = 0
        self._app_was_not_reading = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._state = _IDLE
        super().on_message_complete()

    # Refusals and timers

    def _head_too_large(self, url_at_fault: bool) -> _Refused:
        if self.headers:
            self.headers.clear()  # at once: one read can hold thousands of them
        limits = self.limits
        if url_at_fault:
            message = f"request URL over {limits.max_header_bytes} bytes"
            return _Refused(414, "uri_too_long", message, "414 URL too long")
        message = (
            f"request headers over {limits.max_header_bytes} bytes "
            f"or {limits.max_header_count} fields"
        )
        return _Refused(431, "headers_too_large", message, "431 headers too large")

    def _refuse(self, status: int, code: str, message: str, kind: str) -> None:
        """Answer with a JSON error unless a response has begun, and close the connection
        once the client stops sending (or after LINGER_S)."""
        _tally.note(kind, self.loop)
        self._closing = True
        cycle = self.cycle
        started = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app's receive() returns http.disconnect, and anything it sends is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if started:
            transport.close()
            return
        transport.write(_error_response(status, code, message, self._default_headers()))
        if transport.can_write_eof():
            transport.write_eof()
        if self.flow is not None:
            self.flow.resume_reading()
        self._waiting_head = False
        self._set_deadline(self.loop.time() + LINGER_S, reset=True)

    # A client that stops reading its answers (say, pipelining requests for big answers into
    # a tiny receive window) holds the connection while the server waits to write; none of
    # the read-side timeouts runs then, so the send side has its own.

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_stalled is None:
            self._send_stalled = self.loop.call_later(
                self.limits.send_timeout_s, self._on_send_timeout
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_stalled is not None:
            self._send_stalled.cancel()
            self._send_stalled = None

    def _on_send_timeout(self) -> None:
        self._send_stalled = None
        if not self.transport.is_closing():
            _tally.note("connection closed: answer unread for the send timeout", self.loop)
            self.transport.abort()

    def _default_headers(self) -> bytes:
        return b"".join(n + b": " + v + b"\r\n" for n, v in self.server_state.default_headers)

    def _set_deadline(self, deadline: float, reset: bool = False) -> None:
        self._deadline = deadline
        if self._timer is not None:
            if self._timer_at <= deadline and not reset:
                return  # the timer fires first and re-arms itself for the later deadline
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline, self._on_deadline)

    def _on_deadline(self) -> None:
        self._timer = None
        transport = self.transport
        if transport.is_closing():
            return
        now = self.loop.time()
        if now < self._deadline:
            self._set_deadline(self._deadline)
            return
        if self._closing:
            transport.close()
            return
        cycle = self.cycle
        if self._waiting_head:
            if cycle is not None and not cycle.response_complete:
                # A pipelined head waits behind a response in progress: its clock starts
                # once that response is out.
                self._set_deadline(now + self.limits.header_timeout_s)
                return
            if self._state == _IDLE and self._head_raw == 0:
                # Silent since the connection opened: nobody to answer.
                _tally.note("silent connection closed at the header timeout", self.loop)
                transport.close()
            else:
                timeout = self.limits.header_timeout_s
                self._refuse(
                    408,
                    "request_timeout",
                    f"request headers not received within {timeout:g} s",
                    "408 header timeout",
                )
            return
        if self._state == _BODY and cycle is not None:
            app_not_reading = self.flow.read_paused or cycle.waiting_for_100_continue
            if app_not_reading or self._app_was_not_reading:
                # The app is not reading (or has not asked for the body): not the client's
                # fault. The clock restarts, and once more after the app starts reading, so
                # the client always gets a whole period from then.
                self._app_was_not_reading = app_not_reading
                self._set_deadline(now + self.limits.body_timeout_s)
                return
            timeout = self.limits.body_timeout_s
            self._refuse(
                408,
                "request_timeout",
                f"no request body bytes for {timeout:g} s (Content-Length larger than the body?)",
                "408 body timeout",
            )
