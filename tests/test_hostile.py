"""Hostile bodies: small on the wire, huge once decoded, against real servers.

Every format (JSON rows, records with a new key per row, an object of objects, a split table
of many columns, a CSV of a 60,000-column header over many one-value rows, Parquet of many
columns or row groups, an ``.npy`` header claiming a huge shape, a PNG whose header says
30000 x 30000, a multipart form carrying such a PNG) goes to every route kind (API routes with
NumpyNdarray, PandasDataFrame, Image and Multipart inputs, a serve-model route, /invocations of
an MLflow model with and without a column signature) of a ``tiffin serve`` and a
``tiffin serve-model`` process (one process each) under ``--max-body-size 4194304``. Each
answer is a 4xx with a JSON body, the server's peak RSS (VmHWM, over its process tree) stays
under its idle RSS plus four times the body limit, and it answers good requests afterwards.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.test_serving_support import (
    IRIS_COLUMNS,
    ServerProcess,
    running,
    save_iris_model,
    server_env,
    start_tiffin,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]

LIMIT = 4 * 1024 * 1024
JSON_TYPE = "application/json"
PARQUET = "application/vnd.apache.parquet"
NPY = "application/octet-stream"
BOUNDARY = "hostile-boundary"

SERVICE = """
import tiffin
from tiffin.io import JSON, Image, Multipart, NumpyNdarray, PandasDataFrame

runner = tiffin.mlflow.get("iris:latest").to_runner()
svc = tiffin.Service("hostile", runners=[runner])  # /invocations with a column signature


@svc.api(input=NumpyNdarray(), output=JSON())
def nd(array):
    return list(array.shape)


@svc.api(input=PandasDataFrame(), output=JSON())
def df(frame):
    return list(frame.shape)


@svc.api(input=PandasDataFrame(orient="split"), output=JSON())
def df_split(frame):
    return list(frame.shape)


@svc.api(input=PandasDataFrame(orient="columns"), output=JSON())
def df_columns(frame):
    return list(frame.shape)


@svc.api(input=Image(), output=JSON())
def img(image):
    return list(image.size)


@svc.api(input=Multipart(image=Image(), array=NumpyNdarray()), output=JSON())
def multi(image, array):
    return [list(image.size), list(array.shape)]
"""


# -- bodies ------------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A valid PNG whose header says ``width`` x ``height`` (8-bit grey), with a few bytes of
    compressed data: small however large it claims to be."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\0" + b"\0" * width for _ in range(min(height, 4)))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0,
            0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))  # fmt: skip


def npy_header(shape: tuple[int, ...]) -> bytes:
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 64


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def parquet(columns: int, rows: int, groups: int = 1) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({f"c{i}": pa.array(np.zeros(rows, dtype=np.int8)) for i in range(columns)})
    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, table.schema, write_statistics=False) as writer:
        for _ in range(groups):
            writer.write_table(table)
    return buffer.getvalue()


def multipart(image: bytes, array: bytes) -> tuple[bytes, str]:
    parts = [
        (b'name="image"; filename="x.png"', b"image/png", image),
        (b'name="array"; filename="a.npy"', b"application/octet-stream", array),
    ]
    body = b"".join(
        b"--" + BOUNDARY.encode() + b"\r\nContent-Disposition: form-data; " + disposition
        + b"\r\nContent-Type: " + kind + b"\r\n\r\n" + data + b"\r\n"
        for disposition, kind, data in parts
    ) + b"--" + BOUNDARY.encode() + b"--\r\n"  # fmt: skip
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def hostile() -> dict[str, tuple[bytes, str, bytes | None]]:
    """Each hostile body: (the body, its content type, its MLflow envelope form if JSON)."""
    # each declares far more than the limits (10,000,000 cells, 10,000 columns) allow
    rows: list[Any] = [[0] * 5000] + [[0]] * 30_000  # 30,001 x 5,000
    records = [{f"k{i}": 0} for i in range(12_000)]  # 12,000 keys over 12,000 rows
    objects = {f"c{i}": {f"r{i}": 0} for i in range(12_000)}  # 12,000 x 12,000
    split = {"columns": [f"c{i}" for i in range(12_000)], "data": [[0]]}  # 12,000 columns
    header = ",".join(f"c{i}" for i in range(60_000)).encode()
    form, form_type = multipart(png(30_000, 30_000), npy(np.zeros((2, 2))))
    bodies: dict[str, tuple[bytes, str, bytes | None]] = {
        "json rows": (orjson.dumps(rows), JSON_TYPE, orjson.dumps({"inputs": rows})),
        "json records": (orjson.dumps(records), JSON_TYPE,
                         orjson.dumps({"dataframe_records": records})),
        "object of objects": (orjson.dumps(objects), JSON_TYPE, orjson.dumps({"inputs": objects})),
        "split": (orjson.dumps(split), JSON_TYPE, orjson.dumps({"dataframe_split": split})),
        "csv": (header + b"\n" + b"0\n" * 500_000, "text/csv", None),
        "parquet row groups": (parquet(1, 1_000_000, groups=20), PARQUET, None),
        "parquet columns": (parquet(1_100, 10_000), PARQUET, None),
        "npy header": (npy_header((100_000, 100_000)), NPY, None),
        "png": (png(30_000, 30_000), "image/png", None),
        "multipart": (form, form_type),  # type: ignore[dict-item]
    }  # fmt: skip
    bodies["multipart"] = (form, form_type, None)
    for name, (body, _, envelope) in bodies.items():
        assert len(body) < LIMIT and (envelope is None or len(envelope) < LIMIT), name
    return bodies


def good() -> list[tuple[str, str, bytes, str]]:
    """(server, path, body, content type) of good requests of every kind: the warm-up (every
    library a route uses is loaded before the idle RSS is read) and the check afterwards."""
    row = [5.1, 3.5, 1.4, 0.2]
    record = dict(zip(IRIS_COLUMNS, row, strict=True))
    form, form_type = multipart(png(4, 4), npy(np.zeros((2, 2))))
    return [
        ("api", "/nd", orjson.dumps([row]), JSON_TYPE),
        ("api", "/nd", npy(np.zeros((2, 2))), NPY),
        ("api", "/df", orjson.dumps([record]), JSON_TYPE),
        ("api", "/df", b"a,b\n1,2\n", "text/csv"),
        ("api", "/df", parquet(2, 3), PARQUET),
        ("api", "/df_split", orjson.dumps({"columns": ["a"], "data": [[1]]}), JSON_TYPE),
        ("api", "/df_columns", orjson.dumps({"a": {"0": 1}}), JSON_TYPE),
        ("api", "/img", png(4, 4), "image/png"),
        ("api", "/multi", form, form_type),
        ("api", "/invocations", orjson.dumps({"dataframe_records": [record]}), JSON_TYPE),
        ("api", "/invocations", (",".join(IRIS_COLUMNS) + "\n" + ",".join(map(str, row)))
         .encode(), "text/csv"),
        ("model", "/predict", orjson.dumps([row]), JSON_TYPE),
        ("model", "/predict", npy(np.array([row])), NPY),
        ("model", "/invocations", orjson.dumps({"inputs": [row]}), JSON_TYPE),
    ]  # fmt: skip


# -- memory ------------------------------------------------------------------------------------


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak(server: ServerProcess) -> int:
    """Reset each process's peak RSS to its RSS now (``clear_refs`` 5); the RSS summed, KiB."""
    pids = tree(server.proc.pid)
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    return sum(kib(pid, "VmRSS") for pid in pids)


def peak(server: ServerProcess) -> int:
    return sum(kib(pid, "VmHWM") for pid in tree(server.proc.pid))


# -- the test ----------------------------------------------------------------------------------


def _post(url: str, body: bytes, content_type: str) -> httpx.Response:
    return httpx.post(url, content=body, headers={"content-type": content_type}, timeout=30)


def test_hostile_bodies_are_4xx_in_bounded_memory_and_the_servers_go_on(
    tmp_path: Path, tiffin_home: Path
) -> None:
    from tiffin.frameworks import mlflow as tiffin_mlflow

    tiffin_mlflow.import_model("iris", save_iris_model(tmp_path / "iris"))
    tiffin_mlflow.import_model("iris_tensor", save_iris_model(tmp_path / "tensor", tensor=True))
    (tmp_path / "svc.py").write_text(SERVICE)
    env = server_env(tiffin_home)
    limit = ["--max-body-size", str(LIMIT)]
    api = start_tiffin(["serve", "svc.py:svc", *limit], cwd=tmp_path, env=env,
                       log=tmp_path / "api.log", ready=None)  # fmt: skip
    with running(api):
        model = start_tiffin(["serve-model", "iris_tensor", *limit], cwd=tmp_path, env=env,
                             log=tmp_path / "model.log", ready=None)  # fmt: skip
        with running(model):
            servers = {"api": api, "model": model}
            for server in servers.values():
                wait_until(server, "/readyz", timeout=60)
            for name, path, body, content_type in good():
                _post(servers[name].url + path, body, content_type)  # loads what each uses
            idle = {name: reset_peak(server) for name, server in servers.items()}

            bodies = hostile()
            routes = [
                ("api", path, False)
                for path in ("/nd", "/df", "/df_split", "/df_columns", "/img", "/multi")
            ]
            routes += [
                ("api", "/invocations", True),
                ("model", "/predict", False),
                ("model", "/predict", True),
                ("model", "/invocations", True),
            ]
            wrong = []
            for server_name, path, envelope in routes:
                for kind, (raw, content_type, wrapped) in bodies.items():
                    body = wrapped if envelope and wrapped is not None else raw
                    response = _post(servers[server_name].url + path, body, content_type)
                    try:
                        is_json = isinstance(response.json(), dict)
                    except ValueError:
                        is_json = False
                    if not (400 <= response.status_code < 500 and is_json):
                        wrong.append((server_name, path, kind, response.status_code,
                                      response.text[:200]))  # fmt: skip
            assert not wrong, wrong

            for name, server in servers.items():
                grown = peak(server) - idle[name]
                assert grown < 4 * LIMIT // 1024, (name, f"peak RSS {grown} KiB over idle")
            for name, path, body, content_type in good():
                response = _post(servers[name].url + path, body, content_type)
                assert response.status_code == 200, (name, path, response.text)
