"""`tiffin models predict TAG --input FILE`: every file type, both outputs, clear errors."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import tiffin
from tests.conftest import tiffin_exe
from tiffin.cli import main


@pytest.fixture
def model():
    iris = load_iris(as_frame=True)
    clf = LogisticRegression(max_iter=500).fit(iris.data.to_numpy(), iris.target)
    tiffin.sklearn.save_model(
        "iris", clf, signatures={"predict": {"batchable": True}, "predict_proba": {}}
    )
    return iris.data.to_numpy()[:5], clf


def _write_inputs(tmp_path, rows: np.ndarray) -> dict[str, str]:
    frame = pd.DataFrame(rows, columns=["a", "b", "c", "d"])
    paths = {
        "json-rows": tmp_path / "rows.json",
        "json-columns": tmp_path / "columns.json",
        "json-split": tmp_path / "split.json",
        "csv": tmp_path / "in.csv",
        "npy": tmp_path / "in.npy",
        "parquet": tmp_path / "in.parquet",
    }
    paths["json-rows"].write_text(json.dumps(rows.tolist()))
    paths["json-columns"].write_text(frame.to_json(orient="columns"))
    split = json.loads(frame.to_json(orient="split"))
    split.pop("index")
    paths["json-split"].write_text(json.dumps({"dataframe_split": split}))
    frame.to_csv(paths["csv"], index=False)
    np.save(paths["npy"], rows)
    frame.to_parquet(paths["parquet"])
    return {k: str(v) for k, v in paths.items()}


def test_every_input_file_type(model, tmp_path):
    rows, clf = model
    expected = clf.predict(rows).tolist()
    for kind, path in _write_inputs(tmp_path, rows).items():
        result = CliRunner().invoke(main, ["models", "predict", "iris", "--input", path])
        assert result.exit_code == 0, (kind, result.output)
        assert json.loads(result.output) == {"predictions": expected}, kind


def test_method_and_csv_output(model, tmp_path):
    rows, clf = model
    path = _write_inputs(tmp_path, rows)["npy"]
    result = CliRunner().invoke(
        main, ["models", "predict", "iris", "-m", "predict_proba", "-i", path, "-o", "csv"]
    )
    assert result.exit_code == 0, result.output
    got = pd.read_csv(__import__("io").StringIO(result.output)).to_numpy()
    np.testing.assert_allclose(got, clf.predict_proba(rows), rtol=1e-6)


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("[[1, 2], [3]]", ".json", "ragged"),
        ("{not json", ".json", "cannot read"),
        ("a,b\n1,2\n", ".txt", "unsupported input file type"),
        ("[]", ".json", "empty"),
    ],
)
def test_bad_files_are_one_clear_line(model, tmp_path, content, suffix, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(content)
    result = subprocess.run(
        [tiffin_exe(), "models", "predict", "iris", "--input", str(path)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_width_unknown_method_and_missing_file(model, tmp_path):
    rows, _ = model
    np.save(tmp_path / "narrow.npy", rows[:, :3])
    narrow = CliRunner().invoke(
        main, ["models", "predict", "iris", "-i", str(tmp_path / "narrow.npy")]
    )
    assert narrow.exit_code == 1
    assert "predict failed" in narrow.output and "features" in narrow.output
    unknown = CliRunner().invoke(
        main, ["models", "predict", "iris", "-m", "transform", "-i", str(tmp_path / "narrow.npy")]
    )
    assert unknown.exit_code == 2 and "has no method 'transform'" in unknown.output
    missing = CliRunner().invoke(main, ["models", "predict", "iris", "-i", "nope.json"])
    assert missing.exit_code == 1 and "does not exist" in missing.output
