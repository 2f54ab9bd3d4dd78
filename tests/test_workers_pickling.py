"""``--workers``: values of classes defined in a service *file* cross between processes.

A service loaded by file path is imported under a module name of its own; API workers and
runner processes must agree on it, or an instance of a class from that file (an argument or
an answer) fails to unpickle on the other side. With ``hash()`` in the name (salted per
process), every such call failed -- and the failure ended the worker's connection loop, so
that worker answered 503 for good.
"""

from __future__ import annotations

import textwrap

import httpx
import pytest

from tests.test_serving_support import running, server_env, start_tiffin

pytestmark = pytest.mark.slow

SERVICE = textwrap.dedent(
    """
    import tiffin

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    class Geometry(tiffin.Runnable):
        @tiffin.Runnable.method
        def mirror(self, point):
            return Point(point.y, point.x)  # an instance of the file's class, sent back

    geometry = tiffin.Runner(Geometry, name="geometry")
    svc = tiffin.Service("points", runners=[geometry])

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    async def mirror(body):
        point = await geometry.mirror.async_run(Point(body["x"], body["y"]))
        return {"type": type(point).__name__, "x": point.x, "y": point.y}
    """
)


def test_instances_of_a_service_files_classes_cross_to_runner_processes_and_back(tmp_path):
    (tmp_path / "points.py").write_text(SERVICE)
    server = start_tiffin(
        ["serve", "points.py:svc", "--workers", "2"],
        cwd=tmp_path, env=server_env(tmp_path / "home"), log=tmp_path / "log.txt",
    )  # fmt: skip
    with running(server):
        answers = [
            httpx.post(server.url + "/mirror", json={"x": i, "y": -i}, timeout=30)
            for i in range(20)  # over both API workers' connections
        ]
    assert [a.status_code for a in answers] == [200] * 20, answers[0].text
    assert [a.json() for a in answers] == [
        {"type": "Point", "x": -i, "y": i} for i in range(20)
    ]
