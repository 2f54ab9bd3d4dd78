"""Where ``--workers N`` API workers accept connections.

On Linux each API worker gets a listening socket of its own, all bound to the same address
with ``SO_REUSEPORT``: the kernel spreads new connections over the workers' sockets by a
hash of their addresses (with one shared socket, whichever worker wakes first would accept
a whole burst of connections and then serve their requests alone). A worker's socket
closes with it (it died, or it is draining after SIGTERM), and the kernel stops sending it
new connections at once; connections still waiting in that socket's queue are reset.

Elsewhere (``SO_REUSEPORT`` does not spread connections on macOS or the BSDs) the workers
share one socket.

The supervisor checks the address first with a plain bind, which fails with a clear message
when anything else has it (another tiffin server included), then keeps it with a
``SO_REUSEPORT`` socket that stays bound but never listens. That socket also has
``SO_REUSEADDR`` (without it a restart fails for a minute while the last run's connections
sit in TIME_WAIT), so until a worker listens another ``SO_REUSEADDR`` server can still bind
the port: a server that then listens makes this one fail to start (its workers cannot bind),
and two tiffin servers started at once on one port both pass the check. Once a worker
listens, the port is taken for everyone else.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from tiffin.exceptions import AddressInUse

__all__ = [
    "BACKLOG",
    "SPREADS_CONNECTIONS",
    "Listeners",
    "shared_port_socket",
]

SPREADS_CONNECTIONS = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
BACKLOG = 2048


class Listeners:
    """The address of one server and a listening socket for each API worker start."""

    def __init__(self, host: str, port: int, *, spread: bool = SPREADS_CONNECTIONS) -> None:
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.spread = spread
        where = f"{host}:{port}"
        probe = _bound(self.family, (host, port), reuse_port=False, where=where)
        if not spread:
            probe.listen(BACKLOG)
            self.held = probe  # the one socket every worker accepts from
        else:
            self.address = probe.getsockname()  # the port the system chose, for port 0
            probe.close()
            # never listens: it only keeps the port (taken in between: AddressInUse)
            self.held = _bound(self.family, self.address, reuse_port=True, where=where)
        self.port: int = self.held.getsockname()[1]

    def _socket(self, *, reuse_port: bool) -> socket.socket:
        return _new_socket(self.family, reuse_port=reuse_port)

    def for_worker(self) -> socket.socket:
        """A socket for one API worker process; the caller closes its copy once the process
        has started, so that the socket lives exactly as long as the worker.

        Spreading, the socket is bound but not listening: the worker's server listens once
        the worker is ready (asyncio and uvloop both call ``listen`` when they start serving
        a socket), and until then the kernel gives new connections to the other workers.
        """
        if not self.spread:
            sock = self.held.dup()
        else:
            sock = self._socket(reuse_port=True)
            try:
                sock.bind(self.address)
            except OSError:
                sock.close()
                raise
        sock.set_inheritable(True)
        return sock

    def close(self) -> None:
        self.held.close()


def _new_socket(family: socket.AddressFamily, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def shared_port_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT``, not yet listening: every process
    of this user that binds the same address this way shares it (the kernel spreads new
    connections over them), and anything else that has the address makes this fail with
    :class:`AddressInUse`. For servers that come and go on their own (Ray ingress replicas),
    with no supervisor to keep the port."""
    if not SPREADS_CONNECTIONS:
        raise AddressInUse(f"cannot share {host}:{port}: this system has no SO_REUSEPORT that "
                           "spreads connections (Linux only)")  # fmt: skip
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _bound(family, (host, port), reuse_port=True, where=f"{host}:{port}")


def _bound(
    family: socket.AddressFamily, address: Any, *, reuse_port: bool, where: str
) -> socket.socket:
    """A new socket bound to ``address``; AddressInUse naming ``where`` if it cannot be."""
    sock = _new_socket(family, reuse_port=reuse_port)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise AddressInUse(f"cannot listen on {where}: {exc.strerror}") from exc
    return sock
