"""Process-wide tuning and signal handling of a server process (one worker)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable

from service.config import Settings
from service.runtime.cpus import available_cpus

logger = logging.getLogger(__name__)

#: How long a worker of several goes on accepting after SIGTERM/SIGINT (see `on_stop_signals`).
WORKER_STOP_DELAY_S = 0.25


def tune(settings: Settings) -> Callable[[], None]:
    """Set torch's threads and the GIL switch interval; returns what undoes the latter."""
    import torch

    # Intra-op threads: explicit, or the CPUs shared out between the worker processes
    # (more torch threads than cores measured slower: docs/decisions.md). The CPUs
    # are the container's quota, not the node's cores a pod limited to 2 would oversubscribe.
    threads = settings.torch_threads or max(1, available_cpus() // max(1, settings.workers))
    torch.set_num_threads(threads)
    # NOTE: the inference thread hands the GIL back and forth with the event loop; at
    # Python's default switch interval each hand-over can stall a batch that long
    # (docs/decisions.md).
    previous_interval = sys.getswitchinterval()
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    return lambda: sys.setswitchinterval(previous_interval)


def freeze_startup_objects() -> None:
    """Keep what start-up allocated out of the cyclic GC, and collect the young less often."""
    # Everything allocated so far (torch, the model, FastAPI) lives as long as the process:
    # keep it out of the cyclic GC's scans, which otherwise cause multi-ms pauses.
    gc.collect()
    gc.freeze()
    # Fewer young-generation collections: a request allocates a few hundred objects.
    gc.set_threshold(50_000, 20, 20)


def on_hangup(loop: asyncio.AbstractEventLoop, reload: Callable[[], None]) -> Callable[[], None]:
    """Call `reload` on SIGHUP; returns what removes the handler (a no-op where signals
    cannot be handled: not the main thread, e.g. TestClient, or not a Unix loop)."""
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(signal.SIGHUP)

    return remove


def on_stop_signals(
    loop: asyncio.AbstractEventLoop, stopping: Callable[[], None], stop_delay_s: float = 0.0
) -> None:
    """Call `stopping` the moment SIGTERM/SIGINT arrives (readiness turns 503), before
    uvicorn drains.

    With `stop_delay_s`, uvicorn hears of the signal that much later: the worker goes on
    accepting and reading for a moment before it closes its listener and idle connections.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: object, previous: object = previous) -> None:
            stopping()
            if not callable(previous):
                return
            if stop_delay_s:
                # From a signal handler only the thread-safe entry point is safe to use.
                loop.call_soon_threadsafe(loop.call_later, stop_delay_s, previous, signum, frame)
            else:
                previous(signum, frame)

        signal.signal(sig, handler)
