"""tiffin's ``/invocations`` against a real ``mlflow models serve``, cell by cell.

For each model kind of :mod:`tests.mlflow_kinds` (eight, saved with ``input_example`` so
MLflow infers their signatures as users get them), ``mlflow models serve -m DIR --env-manager
local`` and ``tiffin serve-model DIR`` (imported into its own TIFFIN_HOME) run side by side,
all started at once for the module. Every request format, the model's own
``serving_input_example.json``, bad values, missing columns, malformed bodies, unknown content
types and bad params go to both:

* a 200 from both has the same decoded JSON body (floats within 1e-9 relative);
* an error has the same status, and the same ``error_code`` where MLflow answers JSON;
* a case where tiffin answers otherwise on purpose (``Case.differs``) asserts tiffin's status,
  and where tiffin answers 200, the same predictions MLflow gives for the reference body
  (``Case.like``); each such case names the README line that lists it
  (:data:`DIFFERENCES`, checked against README.md).

``pyfunc_params``'s ``output`` param answers in every shape MLflow allows (an array, a Series,
a DataFrame, a dict of arrays, a list, strings, one string): each must come back as the same
JSON, also when many callers with different params call at once. ``/predict`` and
``runner.predict.run`` give the values MLflow's server gives.

The checks on the servers run in one test that reports every mismatch of every kind together:
pytest-xdist would otherwise start the sixteen servers once per worker (its ``loadgroup`` mode,
which could keep them on one, does not group tests under pytest 9.2).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.mlflow_kinds import KINDS, OUTPUTS, KindInfo, bodies, save_kind
from tests.test_serving_support import (
    BIN,
    ServerProcess,
    server_env,
    start_on_free_port,
    start_tiffin,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # sixteen servers start, then some three hundred requests
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]

ROOT = Path(__file__).resolve().parents[1]
APP_JSON = "application/json"
#: why tiffin answers a case otherwise than MLflow: each phrase is a line of README.md's
#: "Where tiffin's /invocations differs from mlflow models serve"
DIFFERENCES = {
    "lossy": "A value the declared type cannot hold exactly is refused",
    "numeric strings": "A string is not a number",
    "not strings": "A number or boolean is not a string",
    "nulls": "A null in a required column is refused",
    "rows as lists": "Rows as lists for a column signature",
    "frame dtypes": "A Parquet table (or a runner's DataFrame or ndarray) whose dtypes differ",
    "csv tensor": "CSV for a tensor signature",
    "unsigned dict": "Records or an object of columns for a model without a signature",
    "json errors": "Errors before the body is read are JSON",
}


@dataclass(frozen=True)
class Case:
    """One request, and how tiffin's answer must relate to MLflow's."""

    name: str
    content_type: str
    body: bytes
    #: tiffin's status where it differs on purpose (None: the same answer as MLflow)
    differs: int | None = None
    #: the key of DIFFERENCES that explains ``differs``
    why: str | None = None
    #: a 200 that differs must predict what MLflow predicts for this case
    like: str | None = None

    def __post_init__(self) -> None:
        assert (self.differs is None) == (self.why is None), self
        assert self.why is None or self.why in DIFFERENCES, self


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def _json_case(name: str, value: Any, **kw: Any) -> Case:
    return Case(name, APP_JSON, js(value), **kw)


# -- the cases -------------------------------------------------------------------------------


def _rows(info: KindInfo) -> tuple[list[str], list[list[Any]]]:
    """The few rows as column names and rows of Python values."""
    data = info.few_rows
    if info.tensor:
        array = np.asarray(data)
        return [str(j) for j in range(array.shape[1])], array.tolist()
    names = [str(c) for c in data.columns]
    columns = [data[c].tolist() for c in names]
    return names, [list(row) for row in zip(*columns, strict=True)]


def common_cases(info: KindInfo) -> list[Case]:
    """Every format, the serving example, and the malformed bodies any kind gets."""
    cases = [
        Case(fmt, content_type, body)
        if not (fmt == "csv" and info.tensor)
        else Case(fmt, content_type, body, differs=200, why="csv tensor", like="dataframe_split")
        for fmt, (route, content_type, body) in bodies(info, info.few_rows).items()
        if route == "/invocations"
    ]
    one = bodies(info, info.one_row)
    cases.append(Case("one row split", APP_JSON, one["dataframe_split"][2]))
    cases.append(Case("one row inputs", APP_JSON, one["inputs"][2]))
    if info.kind == "no_signature":  # column_cases has them, as differences
        cases = [c for c in cases if c.name not in ("instances", "inputs", "one row inputs")]
    example = (info.path / "serving_input_example.json").read_bytes()
    cases.append(Case("serving_input_example.json", APP_JSON, example))
    names, rows = _rows(info)
    split = {"dataframe_split": {"columns": names, "data": rows}}
    cases += [
        Case("malformed JSON", APP_JSON, b'{"dataframe_split": {"data": [[1, 2'),
        Case("empty body", APP_JSON, b""),
        _json_case("bare list", rows),
        _json_case("no envelope", {"data": rows}),
        _json_case("two envelopes", {**split, "inputs": rows}),
        _json_case("empty params", {**split, "params": {}}),
        _json_case("an unknown key beside the envelope", {**split, "extra": 1}),
        _json_case("an LLM body", {"messages": [{"role": "user", "content": "hi"}]}),
        Case("charset", "application/json; charset=utf-8", js(split)),
        Case("latin-1", "application/json; charset=latin-1", js(split), differs=415,
             why="json errors"),
        Case("unknown parameter", "application/json; format=pandas-split", js(split),
             differs=415, why="json errors"),
        Case("unknown content type", "text/plain", b"hello", differs=415, why="json errors"),
        Case("malformed CSV", "text/csv", b'a,b\n"1,2\n'),
        Case("malformed Parquet", "application/vnd.apache.parquet", b"PAR1 not parquet"),
    ]
    return cases


def tensor_cases(info: KindInfo) -> list[Case]:
    names, rows = _rows(info)
    lossy = {"differs": 400, "why": "lossy"}

    def poke(value: Any, i: int = 0, j: int = 0) -> list[list[Any]]:
        out = [list(r) for r in rows]
        out[i][j] = value
        return out

    cases = [
        _json_case("string value", {"inputs": poke("abc")}),
        _json_case("string value split", {"dataframe_split": {"columns": names,
                                                              "data": poke("abc")}}),
        _json_case("numeric string", {"inputs": poke("1")}, differs=400, why="numeric strings"),
        _json_case("null value", {"inputs": poke(None)}),
        Case("NaN value", APP_JSON, js({"inputs": poke(0.5)}).replace(b"0.5", b"NaN", 1)),
        Case("Infinity value", APP_JSON,
             js({"inputs": poke(0.5)}).replace(b"0.5", b"-Infinity", 1)),
        _json_case("boolean value", {"inputs": poke(True)}),
        _json_case("short row", {"inputs": [rows[0][:-1]]}),
        _json_case("ragged rows", {"inputs": [rows[0], rows[1][:-1]]}),
        _json_case("3-D input", {"inputs": [rows]}),
        _json_case("flat input", {"inputs": rows[0]}),
        _json_case("empty inputs", {"inputs": []}),
        _json_case("records for a tensor", {"inputs": [dict(zip(names, rows[0], strict=True))]}),
        _json_case("split of fewer columns", {"dataframe_split": {
            "columns": names[:-1], "data": [r[:-1] for r in rows]}}),
        _json_case("params without a schema", {"inputs": rows, "params": {"x": 1}}),
    ]
    if info.kind == "int64_tensor":
        cases += [
            _json_case("fraction for an integer", {"inputs": poke(3.5)}, **lossy),
            _json_case("whole float for an integer", {"inputs": poke(3.0)}),
            _json_case("2**63 for an integer", {"inputs": poke(2**63)}),
        ]
    else:
        cases.append(_json_case("integers for floats", {"inputs": [[1] * len(names)]}))
    if info.kind in ("float32_tensor", "pytorch"):
        # scikit-learn refuses the inf MLflow makes of it; the MLP answers NaN
        too_big = lossy if info.kind == "pytorch" else {}
        cases.append(_json_case("1e40 for float32", {"inputs": poke(1e40)}, **too_big))
        frame = pd.DataFrame(np.asarray(rows, dtype=np.float64), columns=names)
        cases.append(Case("float64 Parquet", "application/vnd.apache.parquet", _parquet(frame),
                          differs=200, why="frame dtypes", like="dataframe_split"))
    return cases


def column_cases(info: KindInfo) -> list[Case]:
    names, rows = _rows(info)
    records = [dict(zip(names, row, strict=True)) for row in rows]
    first = names[0]
    signed = info.kind != "no_signature"

    def poke(column: str, value: Any) -> list[dict[str, Any]]:
        return [dict(records[0], **{column: value}), *records[1:]]

    def differs(status: int, why: str, like: str | None = None) -> dict[str, Any]:
        return {"differs": status, "why": why, "like": like} if signed else {}

    columns = {n: [r[j] for r in rows] for j, n in enumerate(names)}
    cases = [
        _json_case("string value", {"dataframe_records": poke(first, "abc")}),
        _json_case("string value split", {"dataframe_split": {
            "columns": names, "data": [["abc", *rows[0][1:]], *rows[1:]]}}),
        _json_case("numeric string", {"dataframe_records": poke(first, "1")},
                   **differs(400, "numeric strings")),
        _json_case("null value", {"dataframe_records": poke(first, None)}),
        _json_case("missing column", {"dataframe_records": [
            {k: v for k, v in r.items() if k != names[-1]} for r in records]}),
        _json_case("extra column", {"dataframe_records": [dict(r, extra=1) for r in records]}),
        _json_case("rows as lists", {"inputs": rows},
                   **differs(200, "rows as lists", "dataframe_split")),
        _json_case("one record as an object", {"inputs": records[0]}),
        _json_case("empty records", {"dataframe_records": []}),
        _json_case("empty inputs", {"inputs": []}),
        _json_case("scalar inputs", {"inputs": 5}),
        _json_case("columns of unequal lengths", {"inputs": {
            n: v[:-1] if j == 0 else v for j, (n, v) in enumerate(columns.items())}}),
        _json_case("only unknown columns", {"dataframe_records": [{"zzz": 1}]}),
        Case("CSV of other columns", "text/csv", b"a,b\n1,2\n"),
        Case("strings in a Parquet column", "application/vnd.apache.parquet",
             _parquet(info.few_rows.astype({first: str}))),
    ]
    if info.kind == "no_signature":  # MLflow hands the model a dict of arrays
        for name, like in (("instances", "dataframe_split"), ("inputs", "dataframe_split"),
                           ("one row inputs", "one row split")):
            cases.append(Case(f"{name} (as a table)", APP_JSON, _body_of(info, name),
                              differs=200, why="unsigned dict", like=like))
    if info.kind == "mixed_columns":
        lossy = {"differs": 400, "why": "lossy"}
        cases += [
            _json_case("fraction in a long column", {"dataframe_records": poke("age", 3.5)},
                       **lossy),
            _json_case("2**40 in an integer column",
                       {"dataframe_records": poke("visits", 2**40)}, **lossy),
            _json_case("2 in a boolean column", {"dataframe_records": poke("member", 2)},
                       **lossy),
            _json_case("a string in a boolean column",
                       {"dataframe_records": poke("member", "yes")}, **lossy),
            _json_case("a number in a string column", {"dataframe_records": poke("city", 5)},
                       differs=400, why="not strings"),
            _json_case("null in a string column", {"dataframe_records": poke("city", None)},
                       differs=400, why="nulls"),
        ]
        frame = info.few_rows.astype({"visits": "int64", "score": "float64"})
        cases.append(Case("int64 and float64 Parquet", "application/vnd.apache.parquet",
                          _parquet(frame), differs=200, why="frame dtypes",
                          like="dataframe_split"))
    if info.kind == "pyfunc_params":
        split = {"dataframe_split": {"columns": names, "data": rows}}
        cases += [
            _json_case("param scale", {**split, "params": {"scale": 2.0}}),
            _json_case("param scale as records", {"dataframe_records": records,
                                                  "params": {"scale": 0.5}}),
            _json_case("param scale as inputs", {"inputs": columns, "params": {"scale": 3.0}}),
            _json_case("bad param type", {**split, "params": {"scale": "abc"}}),
            _json_case("unknown param", {**split, "params": {"bogus": 1}}),
            _json_case("bad param value", {**split, "params": {"output": "bogus"}}),
            _json_case("params not an object", {**split, "params": [1]}),
        ]
        cases += [_json_case(f"output {shape}", {**split, "params": {"output": shape}})
                  for shape in OUTPUTS]
    return cases


def _body_of(info: KindInfo, name: str) -> bytes:
    """The body of format ``name`` ("one row ..." for one row) from :func:`bodies`."""
    rows, fmt = (info.one_row, name[8:]) if name.startswith("one row ") else (info.few_rows, name)
    return bodies(info, rows)[fmt][2]


def _parquet(frame: pd.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def cases_for(info: KindInfo) -> list[Case]:
    extra = tensor_cases(info) if info.tensor else column_cases(info)
    return common_cases(info) + extra


# -- servers ---------------------------------------------------------------------------------


@dataclass
class Pair:
    info: KindInfo
    mlflow: ServerProcess
    tiffin: ServerProcess


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Pair]]:
    """Both servers for every kind, all started at once."""
    root = tmp_path_factory.mktemp("parity")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infos = {kind: save_kind(kind, root / kind) for kind in KINDS}

    def mlflow_serve(kind: str) -> ServerProcess:
        where = root / f"{kind}-mlflow"
        where.mkdir()
        return start_on_free_port(
            lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", str(infos[kind].path),
                          "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            cwd=where, env=server_env(where / "home"), log=where / "server.log", ready="/ping",
            timeout=300,
        )  # fmt: skip

    def tiffin_serve(kind: str) -> ServerProcess:
        where = root / f"{kind}-tiffin"
        where.mkdir()
        return start_tiffin(["serve-model", str(infos[kind].path)], cwd=where,
                            env=server_env(where / "home"), log=where / "server.log",
                            timeout=300)  # fmt: skip

    started: list[ServerProcess] = []
    with ThreadPoolExecutor(2 * len(KINDS)) as pool:
        futures = {
            (kind, side): pool.submit(mlflow_serve if side == "mlflow" else tiffin_serve, kind)
            for kind in KINDS
            for side in ("mlflow", "tiffin")
        }
        errors = []
        for future in futures.values():
            try:
                started.append(future.result())
            except Exception as exc:
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield {
            kind: Pair(infos[kind], futures[kind, "mlflow"].result(),
                       futures[kind, "tiffin"].result())
            for kind in KINDS
        }  # fmt: skip
    finally:
        for server in started:
            server.stop()


# -- comparing -------------------------------------------------------------------------------


def same(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Equal JSON values, floats within ``rel`` (NaN equals NaN)."""
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        if isinstance(a, bool) or isinstance(b, bool):
            return a is b
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rel) for k in a)
    return type(a) is type(b) and a == b


@dataclass
class Answer:
    status: int
    content_type: str
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None


def post(server: ServerProcess, case: Case, route: str = "/invocations") -> Answer:
    response = httpx.post(server.url + route, content=case.body,
                          headers={"content-type": case.content_type}, timeout=60)
    return Answer(response.status_code, response.headers.get("content-type", ""), response.text)


def compare(pair: Pair, cases: list[Case]) -> tuple[list[str], dict[str, Answer]]:
    """Every mismatch between the two servers' answers to ``cases`` (and MLflow's answers)."""
    problems: list[str] = []
    theirs_by_name: dict[str, Answer] = {}
    ours_by_name: dict[str, Answer] = {}
    for case in cases:
        theirs, ours = post(pair.mlflow, case), post(pair.tiffin, case)
        theirs_by_name[case.name], ours_by_name[case.name] = theirs, ours
        where = f"{pair.info.kind} / {case.name}"
        body = ours.json()
        if not (isinstance(body, dict) and ours.content_type == APP_JSON):
            problems.append(f"{where}: tiffin answered {ours.status} {ours.content_type} "
                            f"{ours.text[:200]!r}")
            continue
        if ours.status != 200 and set(body) != {"error_code", "message"}:
            problems.append(f"{where}: tiffin's error is not MLflow's shape: {ours.text[:300]}")
        if case.differs is not None:
            if ours.status != case.differs:
                problems.append(f"{where}: tiffin answered {ours.status} (meant to be "
                                f"{case.differs}): {ours.text[:300]}")
            if theirs.status == ours.status and case.why != "json errors":
                problems.append(f"{where}: listed as a difference, but MLflow answers "
                                f"{theirs.status} too: {theirs.text[:300]}")
            if ours.status == 200 and case.like is not None:
                reference = theirs_by_name[case.like].json()
                if not same(body, reference):
                    problems.append(f"{where}: tiffin {ours.text[:300]} != MLflow's answer "
                                    f"for {case.like!r} {theirs_by_name[case.like].text[:300]}")
            continue
        if theirs.status != ours.status:
            problems.append(f"{where}: status MLflow {theirs.status} {theirs.text[:300]!r} "
                            f"tiffin {ours.status} {ours.text[:300]!r}")
        elif theirs.status == 200:
            if not same(body, theirs.json()):
                problems.append(f"{where}: MLflow {theirs.text[:300]} tiffin {ours.text[:300]}")
        else:
            code = (theirs.json() or {}).get("error_code") if theirs.content_type.startswith(
                APP_JSON) else None
            if code is not None and body.get("error_code") != code:
                problems.append(f"{where}: error_code MLflow {code} tiffin "
                                f"{body.get('error_code')} ({theirs.text[:200]!r} / "
                                f"{ours.text[:200]!r})")
    return problems, theirs_by_name


# -- the tests -------------------------------------------------------------------------------


def check_formats(pair: Pair) -> list[str]:
    """Every case of the kind on both servers; the serving example answers 200."""
    problems, theirs = compare(pair, cases_for(pair.info))
    example = theirs["serving_input_example.json"]
    if example.status != 200:  # (and tiffin's answer is the same: compare checked it)
        problems.append(f"{pair.info.kind}: MLflow's own serving example: {example.text[:300]}")
    return problems


def _reference(pair: Pair) -> Any:
    """MLflow's predictions for the few rows as ``dataframe_split``."""
    _, content_type, body = bodies(pair.info, pair.info.few_rows)["dataframe_split"]
    answer = post(pair.mlflow, Case("split", content_type, body))
    assert answer.status == 200, answer.text
    return answer.json()["predictions"]


def check_predict_route(pair: Pair) -> list[str]:
    """``/predict`` (JSON rows or columns, ``.npy``) gives the values MLflow gives."""
    expected, problems, routes = _reference(pair), [], 0
    for fmt, (route, content_type, body) in bodies(pair.info, pair.info.few_rows).items():
        if route != "/predict":
            continue
        routes += 1
        answer = post(pair.tiffin, Case(fmt, content_type, body), route=route)
        if answer.status != 200 or not same(answer.json(), expected):
            problems.append(f"{pair.info.kind} / {route} {fmt}: {answer.status} "
                            f"{answer.text[:300]} (MLflow: {str(expected)[:300]})")
    assert routes == (2 if pair.info.tensor else 1)
    return problems


def check_runner(pair: Pair) -> list[str]:
    """``runner.predict.run`` with the kind's own input, its rows as lists and (for columns)
    a dict of columns and records: MLflow's server's predictions, encoded as MLflow encodes."""
    import io

    from mlflow.pyfunc.scoring_server import predictions_to_json

    import tiffin

    kind = pair.info.kind
    expected = _reference(pair)
    names, rows = _rows(pair.info)
    forms: dict[str, Any] = {"native": pair.info.few_rows}
    if pair.info.tensor:
        forms["lists"] = rows
    else:
        forms["columns"] = {n: [r[j] for r in rows] for j, n in enumerate(names)}
        forms["records"] = [dict(zip(names, r, strict=True)) for r in rows]
        if kind != "no_signature":
            forms["lists"] = rows
    name = kind.replace("_", "-")
    tiffin.mlflow.import_model(name, str(pair.info.path))
    runner = tiffin.mlflow.get(name).to_runner()
    runner.init_local()
    problems = []
    try:
        for form, value in forms.items():
            out = io.StringIO()
            predictions_to_json(runner.predict.run(value), out)
            got = json.loads(out.getvalue())["predictions"]
            if not same(got, expected):
                problems.append(f"{kind} / runner, {form}: {str(got)[:300]} (MLflow: "
                                f"{str(expected)[:300]})")
    finally:
        runner.destroy()
    return problems


def check_concurrent_params(pair: Pair) -> list[str]:
    """Many callers at once, with different ``scale`` and ``output`` params: tiffin batches
    the calls whose params are equal and never others, and splits each batch's output (array,
    Series, DataFrame, dict, list, strings; one string runs each call alone), so every caller
    gets the answer MLflow gives it alone."""
    import asyncio

    names, rows = _rows(pair.info)
    bodies_ = [
        js({"dataframe_split": {"columns": names, "data": rows[i % len(rows):][:2]},
            "params": {"scale": 1.0 + i % 3, "output": OUTPUTS[i % len(OUTPUTS)]}})
        for i in range(3 * len(OUTPUTS))
    ]  # fmt: skip
    expected = [post(pair.mlflow, Case("alone", APP_JSON, body)) for body in bodies_]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=pair.tiffin.url, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/invocations", content=body, headers={"content-type": APP_JSON})
                for body in bodies_ * 3
            ))  # fmt: skip

    problems = []
    for i, answer in enumerate(asyncio.run(main())):
        theirs = expected[i % len(bodies_)]
        assert theirs.status == 200, theirs.text
        if answer.status_code != 200 or not same(answer.json(), theirs.json()):
            problems.append(f"concurrent call {i}: {answer.status_code} {answer.text[:300]} "
                            f"(MLflow alone: {theirs.text[:300]})")
    return problems


def check_parquet_rows(pair: Pair) -> list[str]:
    """One-row Parquet files of six other rows, each sent twice: after the first bodies tiffin
    reads this layout at its values' positions (tiffin.io.parquet_layouts), and every answer is
    still the one MLflow gives for that very body."""
    pool, problems = pair.info.pool, []
    files = [bodies(pair.info, pool[i : i + 1] if isinstance(pool, np.ndarray) else
                    pool.iloc[i : i + 1])["parquet"] for i in range(6)]  # fmt: skip
    if pair.info.tensor:  # one layout (same size): all but the first bodies take the new path
        assert len({len(body) for _, _, body in files}) == 1
    expected = [post(pair.mlflow, Case(f"row {i}", ct, body)) for i, (_, ct, body) in
                enumerate(files)]  # fmt: skip
    for turn in range(2):
        for i, (_, content_type, body) in enumerate(files):
            ours, theirs = post(pair.tiffin, Case(f"row {i}", content_type, body)), expected[i]
            fine = ours.status == theirs.status and (
                same(ours.json(), theirs.json()) if theirs.status == 200
                else ours.json().get("error_code") == theirs.json().get("error_code"))
            if not fine:
                problems.append(f"{pair.info.kind} / Parquet row {i}, turn {turn}: {ours.status} "
                                f"{ours.text[:300]} (MLflow: {theirs.status} {theirs.text[:300]})")
    return problems


def test_every_kind_answers_as_mlflow_models_serve(pairs: dict[str, Pair]) -> None:
    """One test for every check on the servers, so that one xdist worker starts them; every
    mismatch of every kind is reported together."""
    problems: list[str] = []
    for pair in pairs.values():
        for check in (check_formats, check_predict_route, check_runner, check_parquet_rows):
            problems += check(pair)
    problems += check_concurrent_params(pairs["pyfunc_params"])
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems)


def test_each_deliberate_difference_is_listed_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    heading = "### Where tiffin's `/invocations` differs from `mlflow models serve`"
    assert heading in readme
    section = " ".join(readme.split(heading, 1)[1].split("\n#", 1)[0].split())
    for why, phrase in DIFFERENCES.items():
        assert phrase in section, (why, phrase)
