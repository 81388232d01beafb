"""One listening socket per worker process, so the kernel spreads connections evenly.

uvicorn's multi-process mode binds one socket in the supervisor and every worker accepts
from it. Whichever worker wakes first accepts every pending connection, so a burst of
connections can land on one process: 64 keep-alive connections from wrk were split 61/3,
17/47 and 31/33 between two workers in three runs, and the busy worker's core capped the
whole server. With SO_REUSEPORT each worker binds the same address with its own accept
queue and Linux assigns each new connection to one of them by a hash of its addresses.

uvicorn (0.54) has no option for this, so each worker gets an event loop whose
`create_server` sets `reuse_port`; uvicorn calls it with the configured host and port
when the supervisor hands the worker no socket.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvicorn
import uvloop
from uvicorn.supervisors import Multiprocess

#: The loop factory workers use (uvicorn's `loop` option takes an import string).
LOOP_FACTORY = "service.listeners:new_event_loop"


def available(port: int) -> bool:
    """Linux balances SO_REUSEPORT listeners; elsewhere the flag means something else.

    Port 0 would give every worker a different ephemeral port.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT") and port != 0


class ReusePortLoop(uvloop.Loop):
    """uvloop (what uvicorn picks when installed), except that a server bound by host and
    port joins the port's SO_REUSEPORT group."""

    async def create_server(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("sock") is None:
            kwargs["reuse_port"] = True
        return await super().create_server(*args, **kwargs)


def new_event_loop() -> asyncio.AbstractEventLoop:
    return ReusePortLoop()


def run_workers(config: uvicorn.Config) -> None:
    """uvicorn's supervisor (restarts, signals, graceful drain), each worker binding itself."""
    # NOTE: every process of the same user that sets SO_REUSEPORT may join the port, even
    # a second copy of this server started by mistake, which would then take half of the
    # connections. A plain bind first fails (exit 3, as uvicorn's own) when anything
    # already listens there.
    config.bind_socket().close()
    config.loop = LOOP_FACTORY
    # With no socket from the supervisor, uvicorn's Server binds host:port itself.
    Multiprocess(config, sockets=None).run()  # type: ignore[arg-type]
