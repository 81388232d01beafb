"""listeners: the event loop that makes each worker's listening socket join SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from service import listeners

T = TypeVar("T")


def _reuse_port(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=listeners.new_event_loop) as runner:
        return runner.run(coro)


def _serve(sock: socket.socket | None = None, port: int = 0) -> list[tuple[int, int]]:
    """(port, SO_REUSEPORT) of each socket of one or two servers on a ReusePortLoop."""

    async def main() -> list[tuple[int, int]]:
        loop = asyncio.get_running_loop()
        if sock is not None:
            servers = [await loop.create_server(asyncio.Protocol, sock=sock)]
        else:
            first = await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
            bound = first.sockets[0].getsockname()[1]
            # A second server on the same port: what another worker process does.
            servers = [first, await loop.create_server(asyncio.Protocol, "127.0.0.1", bound)]
        found = [(s.getsockname()[1], _reuse_port(s)) for srv in servers for s in srv.sockets]
        for srv in servers:
            srv.close()
            await srv.wait_closed()
        return found

    return _run(main())


def test_servers_bound_by_host_and_port_share_the_port() -> None:
    found = _serve()
    assert len(found) == 2
    assert found[0][0] == found[1][0], "both listeners on one port"
    assert all(flag for _, flag in found), "both joined the SO_REUSEPORT group"


def test_a_socket_handed_in_is_used_as_it_is() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    [(_, flag)] = _serve(sock=sock)
    assert flag == 0


def test_a_plain_bind_on_a_shared_port_is_refused() -> None:
    """What run_workers' first bind relies on to refuse a second server on the port."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        plain = socket.socket()
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            with pytest.raises(OSError, match="in use"):
                plain.bind(("127.0.0.1", port))
        finally:
            plain.close()
            srv.close()
            await srv.wait_closed()

    _run(main())


def test_available_only_for_a_fixed_port() -> None:
    assert listeners.available(8000)
    assert not listeners.available(0), "each worker would get its own ephemeral port"
