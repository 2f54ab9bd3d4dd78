"""The server's HTTP protocol: a response's writes in one event-loop turn leave as one send."""

from __future__ import annotations

import asyncio
import socket

import httpx
import pytest

from tiffin.process.uvicorn_glue import BatchedWritesProtocol, _BatchedWrites


class Recording:
    """The part of a transport _BatchedWrites uses, recording each write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_writes_of_one_turn_go_out_together_in_order_and_close_flushes_first() -> None:
    async def main() -> Recording:
        transport = Recording()
        batched = _BatchedWrites(transport, asyncio.get_running_loop())
        batched.write(b"HTTP/1.1 200 OK\r\n\r\n")
        batched.write(b"")
        batched.write(b"body")
        assert transport.writes == []  # nothing sent within the turn
        assert batched.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody")
        await asyncio.sleep(0)
        assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
        batched.write(b"last")
        batched.close()  # what was written before close is sent before it
        assert transport.writes[-1] == b"last" and transport.closed
        assert batched.get_extra_info("peername") == "info:peername"  # the rest is delegated
        await asyncio.sleep(0)
        return transport

    transport = asyncio.run(main())
    assert len(transport.writes) == 2


def test_a_real_server_on_the_protocol_answers_keep_alive_requests() -> None:
    import threading

    import uvicorn

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"got " + body})

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error",
                                           http=BatchedWritesProtocol))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.02)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            answers = [client.post("/", content=f"n{i}".encode()) for i in range(20)]
        assert [a.text for a in answers] == [f"got n{i}" for i in range(20)]
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.mark.parametrize("others", [0, 3])
def test_a_complete_response_leaves_at_once_in_one_send_when_alone(others: int) -> None:
    """With other connections open the send waits for the end of the turn instead."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})

    sent_at_completion: list[int] = []

    class Watched(BatchedWritesProtocol):
        def on_response_complete(self) -> None:
            super().on_response_complete()
            sent_at_completion.append(len(recording.writes))  # before the turn ends

    class Transport(Recording):
        def get_extra_info(self, name: str) -> object:
            return ("127.0.0.1", 8000) if name in ("sockname", "peername") else None

        def pause_reading(self) -> None: ...

        def resume_reading(self) -> None: ...

    recording = Transport()

    async def main() -> None:
        config = Config(app, log_level="error")
        config.load()
        state = ServerState()
        state.connections.update(object() for _ in range(others))  # type: ignore[misc]
        protocol = Watched(config=config, server_state=state, app_state={})
        protocol.connection_made(recording)
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        for _ in range(20):
            if sent_at_completion:
                break
            await asyncio.sleep(0)
        protocol.connection_lost(None)

    asyncio.run(main())
    assert sent_at_completion == [0 if others else 1]
    assert len(recording.writes) == 1
    response = recording.writes[0]
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"done")
