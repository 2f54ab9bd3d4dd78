"""tiffin.listeners: each API worker's own listening socket (SO_REUSEPORT on Linux), the port
held meanwhile, and a clear error when the address is taken. Real sockets on loopback; the
spreading ones test Linux's SO_REUSEPORT (what tiffin uses there, and what CI runs)."""

from __future__ import annotations

import select
import socket

import pytest

from tiffin.exceptions import TiffinError
from tiffin.process.listeners import Listeners


def _serving(sock: socket.socket) -> socket.socket:
    """What a worker's server does once it is ready (asyncio and uvloop alike)."""
    sock.listen(128)
    return sock


def _accepted(sockets: list[socket.socket], expected: int) -> list[int]:
    """How many of ``expected`` queued connections each listening socket accepts."""
    counts = [0] * len(sockets)
    for sock in sockets:
        sock.setblocking(False)
    while sum(counts) < expected:
        ready, _, _ = select.select(sockets, [], [], 60)
        assert ready, f"only {sum(counts)} of {expected} connections arrived"
        for sock in ready:
            conn, _ = sock.accept()
            conn.close()
            counts[sockets.index(sock)] += 1
    return counts


def test_each_worker_socket_gets_a_share_of_a_burst_of_connections():
    listeners = Listeners("127.0.0.1", 0, spread=True)
    workers = [_serving(listeners.for_worker()), _serving(listeners.for_worker())]
    clients = []
    try:
        assert {w.getsockname()[1] for w in workers} == {listeners.port}
        for _ in range(64):  # all at once, as a load generator opens its connections
            clients.append(socket.create_connection(("127.0.0.1", listeners.port)))
        counts = _accepted(workers, 64)
        # a hash of the client's port picks the socket: about 32 each (under 8 of 64 on one
        # side has odds of about 1e-9)
        assert min(counts) >= 8, counts
    finally:
        for sock in [*clients, *workers]:
            sock.close()
        listeners.close()


def test_a_closed_worker_socket_gets_no_new_connections():
    listeners = Listeners("127.0.0.1", 0, spread=True)
    stays, goes = _serving(listeners.for_worker()), _serving(listeners.for_worker())
    goes.close()  # its worker died or is draining
    clients = []
    try:
        for _ in range(16):
            clients.append(socket.create_connection(("127.0.0.1", listeners.port)))
        assert _accepted([stays], 16) == [16]
    finally:
        for sock in [*clients, stays]:
            sock.close()
        listeners.close()


def test_a_worker_still_loading_gets_no_connections_until_it_listens():
    listeners = Listeners("127.0.0.1", 0, spread=True)
    ready, loading = _serving(listeners.for_worker()), listeners.for_worker()
    clients = []
    try:
        for _ in range(16):
            clients.append(socket.create_connection(("127.0.0.1", listeners.port)))
        assert _accepted([ready], 16) == [16]
        _serving(loading)  # loaded: from now on it takes its share
        for _ in range(64):
            clients.append(socket.create_connection(("127.0.0.1", listeners.port)))
        assert min(_accepted([ready, loading], 64)) >= 8
    finally:
        for sock in [*clients, ready, loading]:
            sock.close()
        listeners.close()


def test_the_held_port_takes_no_connections_and_no_one_else_can_bind_it():
    listeners = Listeners("127.0.0.1", 0, spread=True)
    try:
        # nothing listens yet (no worker has started): connections are refused, not queued
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listeners.port), timeout=2)
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", listeners.port))
        plain.close()
    finally:
        listeners.close()


@pytest.mark.parametrize("spread", [True, False])
def test_an_address_in_use_is_one_clear_error(spread):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(TiffinError, match=rf"cannot listen on 127\.0\.0\.1:{port}: "):
            Listeners("127.0.0.1", port, spread=spread)
    finally:
        taken.close()


def test_a_second_server_on_the_same_port_is_refused_not_merged():
    first = Listeners("127.0.0.1", 0, spread=True)
    worker = _serving(first.for_worker())
    try:
        # SO_REUSEPORT alone would let a second server of the same user share the port
        with pytest.raises(TiffinError, match="cannot listen on"):
            Listeners("127.0.0.1", first.port, spread=True)
    finally:
        worker.close()
        first.close()


def test_without_spreading_every_worker_accepts_from_one_socket():
    listeners = Listeners("127.0.0.1", 0, spread=False)
    workers = [listeners.for_worker(), listeners.for_worker()]
    try:
        client = socket.create_connection(("127.0.0.1", listeners.port))
        ready, _, _ = select.select(workers, [], [], 60)
        assert len(ready) == 2, "both copies see the same queued connection"
        client.close()
    finally:
        for sock in workers:
            sock.close()
        listeners.close()
