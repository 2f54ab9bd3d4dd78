"""tiffin.Client and tiffin.AsyncClient against a real `tiffin serve`: one round trip per IO
descriptor, and server errors surfacing with their body."""

from __future__ import annotations

import asyncio
import io
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import tiffin
from tests.test_serving_support import running, server_env, start_tiffin
from tiffin.exceptions import RemoteError

pytestmark = pytest.mark.slow

SERVICE = textwrap.dedent(
    """
    import numpy as np
    import tiffin

    class Doubler(tiffin.Runnable):
        @tiffin.Runnable.method(batchable=True)
        def double(self, x):
            return x * 2

    doubler = tiffin.Runner(Doubler, name="doubler")
    svc = tiffin.Service("everything", runners=[doubler])

    @svc.api(input=tiffin.io.NumpyNdarray(dtype="float32", shape=[-1, 3], enforce_shape=True),
             output=tiffin.io.NumpyNdarray())
    async def double(arr):
        return await doubler.double.async_run(arr)

    @svc.api(input=tiffin.io.PandasDataFrame(orient="split"),
             output=tiffin.io.PandasDataFrame(orient="records"))
    def add_total(frame):
        return frame.assign(total=frame.sum(axis=1))

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    def echo(value):
        return {"got": value}

    @svc.api(input=tiffin.io.Text(), output=tiffin.io.Text())
    def shout(text):
        return text.upper()

    @svc.api(input=tiffin.io.File(), output=tiffin.io.JSON())
    def size(file):
        return {"bytes": len(file.read())}

    @svc.api(input=tiffin.io.Image(), output=tiffin.io.JSON())
    def dims(image):
        return {"size": list(image.size)}

    @svc.api(input=tiffin.io.Multipart(arr=tiffin.io.NumpyNdarray(), note=tiffin.io.Text()),
             output=tiffin.io.JSON())
    def both(arr, note):
        return {"sum": float(np.asarray(arr).sum()), "note": note}
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("client")
    (work / "svc.py").write_text(SERVICE)
    server = start_tiffin(
        ["serve", "svc.py:svc"], cwd=work, env=server_env(work / "home"), log=work / "log.txt"
    )
    with running(server):
        yield server


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (7, 5), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_sync_client_round_trips_every_descriptor(server):
    with tiffin.Client.from_url(server.url) as client:
        assert sorted(client.apis) == [
            "add_total", "both", "dims", "double", "echo", "shout", "size"
        ]
        assert client.is_ready()
        doubled = client.double(np.arange(6, dtype="float32").reshape(2, 3))
        np.testing.assert_array_equal(doubled, np.arange(6).reshape(2, 3) * 2)
        frame = client.add_total(pd.DataFrame({"a": [1, 2], "b": [10, 20]}))
        assert frame["total"].tolist() == [11, 22]
        assert client.echo({"x": [1, 2]}) == {"got": {"x": [1, 2]}}
        assert client.shout("hello") == "HELLO"
        assert client.size(b"12345") == {"bytes": 5}
        assert client.dims(Image.open(io.BytesIO(_png()))) == {"size": [7, 5]}
        assert client.both(arr=np.ones((2, 2)), note="hi") == {"sum": 4.0, "note": "hi"}


def test_server_errors_carry_the_error_body(server):
    with tiffin.Client.from_url(server.url) as client:
        with pytest.raises(RemoteError) as info:
            client.double(np.ones((2, 4), dtype="float32"))
        error = info.value
        assert error.http_status == 400
        assert error.error_code == "BAD_REQUEST"
        assert "shape" in str(error.detail) and "(2, 4)" in str(error.detail)
        with pytest.raises(AttributeError, match="no API 'nope'"):
            client.nope  # noqa: B018


def test_async_client_round_trips_concurrently(server):
    async def main():
        async with await tiffin.AsyncClient.from_url(server.url) as client:
            rows = [np.full((1, 3), i, dtype="float32") for i in range(20)]
            results = await asyncio.gather(*(client.double(r) for r in rows))
            text = await client.shout("quiet")
            with pytest.raises(RemoteError) as info:
                await client.double(np.ones((1, 4), dtype="float32"))
            return results, text, info.value

    results, text, error = asyncio.run(main())
    assert [r.tolist() for r in results] == [[[2 * i] * 3] for i in range(20)]
    assert text == "QUIET"
    assert error.http_status == 400


def test_from_url_on_a_dead_address_is_a_clear_error(tmp_path: Path):
    import httpx

    with pytest.raises(httpx.ConnectError):
        tiffin.Client.from_url("http://127.0.0.1:9", timeout=2)
