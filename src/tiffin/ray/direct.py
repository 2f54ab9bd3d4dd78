"""Direct HTTP: an ingress replica that also serves tiffin's app on a port of its own.

Behind Serve's proxy every request is an actor call from the proxy to the ingress replica,
and the replica calls back into the proxy for the body and to hear of a disconnect: on a
2-CPU host that is ~12 ms of CPU per request across the proxy and the replica, against
~1.5 ms for the same request sent to the replica directly (``bench/ray.py``). With
``direct_port`` set (:class:`tiffin.config.RaySettings`, ``tiffin.ray.deployment(...,
direct_port=N)``, ``tiffin serve --backend ray --direct-port N``) each ingress replica runs
uvicorn on ``direct_host:direct_port`` in its own event loop, with tiffin's protocol and the
server settings of ``tiffin serve``; the runners are still Ray deployments called through
their handles. Serve's proxy keeps serving the application as before.

Rules:

* Every ingress replica on a node binds the same address with ``SO_REUSEPORT``
  (:func:`~tiffin.process.listeners.shared_port_socket`): the kernel spreads new
  connections over them; an address a plain socket holds fails the replica's start with the
  address named (Serve then reports the deployment failed). A socket of this user that binds
  with ``SO_REUSEPORT`` too -- another application given the same port, Serve's own proxy --
  would share the port silently: give each application a port of its own
  (``tiffin serve --backend ray`` refuses Serve's HTTP port). Linux only.
* Serve's rolling update stops old replicas before it starts their replacements, a fifth
  of them at a time: with one ingress replica on a node, the direct port is closed for that
  gap; give the ingress two or more replicas per node to keep it open.
* A replica listens once its app has started and stops listening first when Serve stops
  it (a redeploy, a scale-down): its open requests finish (up to ``api_timeout_s``, within
  the deployment's graceful shutdown), idle keep-alive connections close. Connections the
  kernel had queued on the closing socket and not yet handed over are reset: clients that
  must not see one retry a request that never reached a server (or the nodes set
  ``net.ipv4.tcp_migrate_req=1``, Linux 5.14+, and the kernel moves them to a sibling).
* Requests sent directly are not Serve's: its autoscaling of the ingress does not see them
  (give the ingress ``num_replicas``); the runner deployments' calls are Serve's as ever.
* Put a load balancer in front of the nodes' addresses for a cluster; ``direct_host``
  0.0.0.0 listens on every interface, which is the user's choice to make.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from tiffin.config import ServeSettings
from tiffin.exceptions import ServerError
from tiffin.process.listeners import shared_port_socket
from tiffin.process.uvicorn_glue import uvicorn_options

__all__ = ["DirectHTTP"]

logger = logging.getLogger("tiffin.ray")


class _GuestServer(uvicorn.Server):
    """uvicorn inside a process that is not its own: the signals stay the host's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DirectHTTP:
    """tiffin's app on ``host:port`` in the running event loop, beside Serve's own path."""

    def __init__(self, settings: ServeSettings, host: str, port: int) -> None:
        self.settings = settings
        self.host, self.port = host, port
        self._server: _GuestServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: Any) -> None:
        """Listen (the app has started: no lifespan of uvicorn's own); returns once it does."""
        sock = shared_port_socket(self.host, self.port)
        options = uvicorn_options(self.settings)
        options.pop("host"), options.pop("port")
        options["lifespan"] = "off"
        # a request's own deadline is api_timeout_s: a stop waits that long for it
        options["timeout_graceful_shutdown"] = self.settings.api_timeout_s
        self._server = server = _GuestServer(uvicorn.Config(app, **options))
        self._task = task = asyncio.get_running_loop().create_task(
            server.serve(sockets=[sock]), name="tiffin-direct-http"
        )
        while not server.started:
            if task.done():
                sock.close()
                why = None if task.cancelled() else task.exception()
                raise ServerError(f"direct HTTP on {self.host}:{self.port} did not start: "
                                  f"{why or 'uvicorn stopped'}")  # fmt: skip
            await asyncio.sleep(0.005)
        logger.info("direct HTTP on http://%s:%d", self.host, self.port)

    def failed(self) -> bool:
        """Whether the server stopped without being told to (uvicorn's task ended)."""
        server, task = self._server, self._task
        return task is not None and task.done() and not (server and server.should_exit)

    async def stop(self) -> None:
        """Stop listening, let open requests finish, close the connections."""
        server, task = self._server, self._task
        if server is None or task is None:
            return
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for listener in getattr(server, "servers", []):  # closed already, unless cut short
            listener.close()
