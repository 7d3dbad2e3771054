"""The one library entry: serve a config until a stop signal, in one process or several.

As uvicorn's ``run()``: :func:`run` builds a :class:`~udpchat.server.Server`, or with
``config.processes`` above 1 a :class:`~udpchat.supervisor.Supervisor` of that many server
processes, runs it on a new event loop, turns SIGINT, SIGTERM and SIGHUP into a drain (a second
one forces) and returns how serving ended. The ``serve`` command is this call and nothing more.

(The module is not named ``run``: importing a submodule of that name would replace the
package's ``udpchat.run`` function with the module.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import BinaryIO, TextIO

from udpchat.eventloop import LoopChoice, run_coroutine
from udpchat.handlers import BatchHandler, Handler
from udpchat.server import Server, ServerConfig, ServeResult, Service
from udpchat.signals import stop_on_signals
from udpchat.supervisor import Supervisor
from udpchat.tuning import tune_for_throughput

logger = logging.getLogger("udpchat.run")

OnStarted = Callable[[Service], AbstractContextManager[object] | None]
"""Called once the service receives, before it serves: what it returns (a live view, say) is
entered for as long as the service serves. An exception it raises (a banner that cannot be
written) stops the service as a failed output does: with a drain, and in the result's
``error``, so that the counts of the run are not lost with it."""


def run(
    config: ServerConfig,
    handler: Handler | BatchHandler | None = None,
    *,
    output: TextIO | None = None,
    loop: LoopChoice = LoopChoice.AUTO,
    on_started: OnStarted | None = None,
) -> ServeResult:
    """Serve ``config`` until a stop signal; returns the final counters of each process.

    ``handler`` handles each message (one process only: it cannot cross to children); without
    one, ``config.output_format`` lines go to ``output`` (stdout by default). Start-up errors
    (the port, the metrics endpoint, NATS, the event loop) are raised; what ends serving later
    (output that can no longer be written, a child that died) is in the result.
    """
    if handler is not None and config.processes > 1:
        raise ValueError("a handler serves one process: give output_format for several")
    tune_for_throughput()
    service: Service
    if config.processes == 1:
        service = Server(config, handler, output=output)
    else:
        stream = output or sys.stdout
        stream.flush()
        buffer: BinaryIO = stream.buffer  # the children's lines are bytes
        service = Supervisor(config, loop, buffer)
    return run_coroutine(serve_until_signalled(service, on_started), loop)


async def serve_until_signalled(
    service: Service, on_started: OnStarted | None = None
) -> ServeResult:
    """Start, call ``on_started``, serve until a stop signal; a second signal forces."""

    stop = stop_on_signals(service, logger)
    with stop.installed(), contextlib.ExitStack() as shown:
        await service.start()
        try:
            view = on_started(service) if on_started is not None else None
            if view is not None:
                shown.enter_context(view)
        except Exception as error:
            service.fail(error)
        result = await service.serve_until_stopped()
    # A second signal only forced anything if it cut the drain short.
    return dataclasses.replace(
        result, forced=stop.forced and not result.drained, signalled=stop.requested.is_set()
    )
