"""tiffin.mlflow with local MLflow model directories: import, load, flavors, errors, CLI."""

from __future__ import annotations

import filecmp
import json
import logging
import math
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import tiffin
from tests.fixtures_mlflow import fitted_classifier, iris_like, save_sklearn, store_is_empty
from tiffin.cli import main
from tiffin.exceptions import ImportFailed, InvalidArgument, MissingDependency, NotFound
from tiffin.frameworks import mlflow as tiffin_mlflow
from tiffin.store import uris

pytestmark = pytest.mark.usefixtures("mlflow_env")


def _same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    _match, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in cmp.common_dirs)


@pytest.fixture
def sk_model(tmp_path: Path) -> Path:
    """A saved sklearn classifier with a signature and an extra artifact file."""
    X, _y = iris_like()
    clf = fitted_classifier()
    signature = mlflow.models.infer_signature(X, clf.predict(X))
    path = save_sklearn(tmp_path / "sk_model", clf, signature=signature)
    (path / "extras").mkdir()
    (path / "extras" / "notes.txt").write_text("kept as is\n")
    return path


def _old_mlflow_dir(path: Path) -> Path:
    """A model directory as MLflow 1.x wrote it: python_function only, a plain pickle."""
    from sklearn.linear_model import LinearRegression

    X = np.array([[1.0, 1.0], [1.0, 2.0], [2.0, 2.0], [2.0, 3.0]])
    path.mkdir()
    with (path / "model.pkl").open("wb") as fh:
        pickle.dump(LinearRegression().fit(X, X @ [1.0, 2.0] + 3.0), fh)
    (path / "MLmodel").write_text(
        textwrap.dedent(
            """\
            artifact_path: model
            flavors:
              python_function:
                data: model.pkl
                env: conda.yaml
                loader_module: mlflow.sklearn
                python_version: 3.7.3
            run_id: 0e4425ecbf3e4672ba0c1741651bb47a
            utc_time_created: '2020-03-02 11:12:13.000000'
            """
        )
    )
    (path / "conda.yaml").write_text("name: mlflow-env\ndependencies:\n- python=3.7.3\n")
    return path


# -- importing ------------------------------------------------------------------------------------


def test_import_absolute_path_copies_the_directory_and_records_mlflow_facts(
    sk_model: Path, tiffin_home: Path
) -> None:
    model = tiffin.mlflow.import_model("iris_clf", str(sk_model))

    assert model.info.module == "tiffin.mlflow"
    folder = Path(model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER))
    assert tiffin.mlflow.MLFLOW_MODEL_FOLDER == "mlflow_model"
    assert folder.parent == tiffin_home / "models" / "iris_clf" / model.tag.version
    assert _same_tree(sk_model, folder)
    for name in ("MLmodel", "requirements.txt", "conda.yaml", "python_env.yaml"):
        assert (folder / name).is_file()

    info = yaml.safe_load(Path(model.path_of("model.yaml")).read_text())
    facts = info["context"]["mlflow"]
    assert facts["mlflow_version"] == mlflow.__version__
    assert facts["flavors"] == ["python_function", "sklearn"]
    assert facts["source_uri"] == str(sk_model)
    assert facts["resolved_uri"] == str(sk_model)
    assert [col["type"] for col in facts["signature"]["inputs"]] == ["tensor"]
    assert facts["signature"]["outputs"][0]["tensor-spec"]["dtype"] == "int64"
    assert info["context"]["framework_versions"]["mlflow"] == mlflow.__version__
    assert info["options"] == {"flavor": None, "native_flavor": None}
    assert info["signatures"] == {"predict": {"batchable": False, "batch_dim": 0}}

    X, _y = iris_like()
    loaded = mlflow.sklearn.load_model(model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER))
    np.testing.assert_array_equal(loaded.predict(X), fitted_classifier().predict(X))


@pytest.mark.parametrize("form", ["relative", "dot-dot", "file-uri", "pathlike", "home"])
def test_local_path_forms(
    form: str, tmp_path: Path, mlflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_sklearn(tmp_path / "models" / "my_model")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "models")
    uri: str | os.PathLike[str] = {
        "relative": "./my_model",
        "dot-dot": "sub/../../models/my_model",
        "file-uri": (tmp_path / "models" / "my_model").as_uri(),
        "pathlike": Path("my_model"),
        "home": "~/models/my_model",
    }[form]
    model = tiffin.mlflow.import_model("my_sklearn_model", uri)
    folder = Path(model.path_of("mlflow_model"))
    assert _same_tree(tmp_path / "models" / "my_model", folder)
    resolved = Path(model.info.context["mlflow"]["resolved_uri"])
    assert resolved.is_absolute() and resolved.resolve() == (tmp_path / "models" / "my_model")


def test_every_import_makes_a_new_version(sk_model: Path) -> None:
    first = tiffin.mlflow.import_model("iris_clf", sk_model)
    second = tiffin.mlflow.import_model("iris_clf", sk_model)
    assert first.tag.version != second.tag.version
    assert tiffin.mlflow.get("iris_clf:latest").tag == second.tag
    assert {m.tag for m in tiffin.models.list("iris_clf")} == {first.tag, second.tag}


def test_explicit_version_custom_objects_and_get(sk_model: Path) -> None:
    model = tiffin.mlflow.import_model(
        "iris_clf:v1", sk_model, custom_objects={"classes": ["a", "b", "c"]}
    )
    assert str(model.tag) == "iris_clf:v1"
    again = tiffin.mlflow.get("iris_clf:v1")
    assert again.custom_objects == {"classes": ["a", "b", "c"]}
    with pytest.raises(InvalidArgument, match=r"tiffin\.sklearn"):
        tiffin.mlflow.get(tiffin.sklearn.save_model("plain", fitted_classifier()).tag)


# -- loading and flavors --------------------------------------------------------------------------


def test_load_model_returns_pyfunc_by_default_and_native_on_request(sk_model: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    X, _y = iris_like()
    expected = fitted_classifier().predict(X)
    tiffin.mlflow.import_model("iris_clf", sk_model)

    pyfunc = tiffin.mlflow.load_model("iris_clf:latest")
    assert isinstance(pyfunc, mlflow.pyfunc.PyFuncModel)
    np.testing.assert_array_equal(pyfunc.predict(X), expected)
    pyfunc_again = tiffin.mlflow.load_model("iris_clf", flavor="pyfunc")
    assert isinstance(pyfunc_again, mlflow.pyfunc.PyFuncModel)
    for flavor in ("native", "sklearn"):
        native = tiffin.mlflow.load_model("iris_clf", flavor=flavor)
        assert isinstance(native, LogisticRegression)
        np.testing.assert_array_equal(native.predict(X), expected)
    with pytest.raises(InvalidArgument, match="unknown flavor 'keras'"):
        tiffin.mlflow.load_model("iris_clf", flavor="keras")
    with pytest.raises(InvalidArgument, match="imported to run as python_function"):
        tiffin.mlflow.load_native("iris_clf")


def test_signatures_beyond_predict_imply_native(sk_model: Path) -> None:
    X, _y = iris_like()
    model = tiffin.mlflow.import_model(
        "iris_clf",
        sk_model,
        signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}},
    )
    assert model.info.options == {"flavor": "native", "native_flavor": "sklearn"}
    assert set(model.info.signatures) == {"predict", "predict_proba"}
    native = tiffin.mlflow.load_native(model)
    np.testing.assert_allclose(native.predict_proba(X), fitted_classifier().predict_proba(X))


@pytest.mark.parametrize("flavor", ["native", "sklearn"])
def test_explicit_native_flavor(sk_model: Path, flavor: str) -> None:
    model = tiffin.mlflow.import_model("iris_clf", sk_model, flavor=flavor)
    assert model.info.options == {"flavor": flavor, "native_flavor": "sklearn"}
    assert hasattr(tiffin.mlflow.load_native(model.tag), "predict_proba")


def test_pyfunc_spelling_is_the_default(sk_model: Path) -> None:
    model = tiffin.mlflow.import_model("iris_clf", sk_model, flavor="pyfunc")
    assert model.info.options["flavor"] is None
    with pytest.raises(InvalidArgument, match="only 'predict'"):
        tiffin.mlflow.import_model(
            "iris_clf", sk_model, flavor="pyfunc", signatures={"predict_proba": {}}
        )


def test_mlflow_1x_model_directory_imports_and_loads(tmp_path: Path) -> None:
    old = _old_mlflow_dir(tmp_path / "old_model")
    model = tiffin.mlflow.import_model("legacy", old)
    facts = model.info.context["mlflow"]
    assert facts["flavors"] == ["python_function"]
    assert facts["run_id"] == "0e4425ecbf3e4672ba0c1741651bb47a"
    assert facts["mlflow_version"] is None and facts["signature"] is None
    pyfunc = tiffin.mlflow.load_model("legacy")
    np.testing.assert_allclose(pyfunc.predict(np.array([[1.0, 2.0], [3.0, 3.0]])), [8.0, 12.0])
    with pytest.raises(InvalidArgument, match="no flavor tiffin runs natively"):
        tiffin.mlflow.import_model("legacy", old, flavor="native")


# -- version warning ------------------------------------------------------------------------------


def _pin(path: Path, **versions: str) -> None:
    lines = [f"{pkg.replace('_', '-')}=={ver}" for pkg, ver in versions.items()]
    (path / "requirements.txt").write_text("\n".join(["pandas==0.1.0", *lines]) + "\n")


def _installed(pkg: str) -> list[int]:
    from importlib.metadata import version

    from packaging.version import Version

    return list(Version(version(pkg)).release)


def test_version_mismatch_warns_once_in_one_line(
    sk_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _pin(sk_model, scikit_learn="0.24.2", numpy="1.19.5", mlflow="1.30.0")
    tiffin.mlflow.import_model("iris_clf", sk_model)
    with caplog.at_level(logging.WARNING, logger="tiffin"):
        tiffin.mlflow.load_model("iris_clf")
        tiffin.mlflow.load_model("iris_clf", flavor="native")
    ours = [r for r in caplog.records if r.name.startswith("tiffin")]
    assert len(ours) == 1
    message = ours[0].getMessage()
    assert "\n" not in message
    for part in ("scikit-learn 0.24.2", "numpy 1.19.5", "mlflow 1.30.0"):
        assert part in message
    assert "pandas" not in message  # not a package whose version matters here


def test_patch_level_differences_do_not_warn(
    sk_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def patched(pkg: str) -> str:
        major, minor = _installed(pkg)[:2]
        return f"{major}.{minor}.999"

    _pin(
        sk_model,
        scikit_learn=patched("scikit-learn"),
        numpy=patched("numpy"),
        mlflow=patched("mlflow"),
    )
    model = tiffin.mlflow.import_model("iris_clf", sk_model)
    assert tiffin.mlflow.version_mismatches(model) == []
    with caplog.at_level(logging.WARNING, logger="tiffin"):
        tiffin.mlflow.load_model(model)
    assert not [r for r in caplog.records if r.name.startswith("tiffin")]


# -- labels and metadata --------------------------------------------------------------------------


def test_labels_and_metadata_round_trip_through_model_yaml_and_cli(sk_model: Path) -> None:
    labels = {
        "mlflow.runName": "bright-owl-42",
        "mlflow.source.name": "train.py",
        "team": "ranking",
        "empty": "",
    }
    metrics = {
        "accuracy": 0.1 + 0.2,
        "tiny": 1e-10,
        "huge": 1.5e20,
        "whole": 3.0,
        "negative_zero": -0.0,
        "inf": math.inf,
        "nan": math.nan,
    }
    params = {"C": "1.0", "max_iter": "200", "solver": "lbfgs"}
    model = tiffin.mlflow.import_model(
        "iris_clf", sk_model, labels=labels, metadata={"metrics": metrics, "params": params}
    )
    tag = str(model.tag)

    def check(got_labels: dict, got_metadata: dict) -> None:
        assert got_labels == labels
        assert got_metadata["params"] == params
        got = got_metadata["metrics"]
        assert set(got) == set(metrics)
        for key, value in metrics.items():
            if math.isnan(value):
                assert math.isnan(got[key])
            else:
                assert got[key] == value and type(got[key]) is float, key
        assert math.copysign(1.0, got["negative_zero"]) == -1.0

    stored = tiffin.models.get(tag)
    check(stored.info.labels, stored.info.metadata)
    result = CliRunner().invoke(main, ["models", "get", tag, "-o", "json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    check(shown["labels"], shown["metadata"])


# -- bad input: clear errors, nothing left in the store -------------------------------------------


def test_missing_path(tmp_path: Path, tiffin_home: Path) -> None:
    uri = str(tmp_path / "nowhere")
    with pytest.raises(NotFound, match="does not exist") as err:
        tiffin.mlflow.import_model("m", uri)
    assert repr(uri) in str(err.value)
    assert store_is_empty(tiffin_home)


def test_directory_without_mlmodel(tmp_path: Path, tiffin_home: Path) -> None:
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "model.pkl").write_bytes(b"x")
    with pytest.raises(InvalidArgument, match="no MLmodel file") as err:
        tiffin.mlflow.import_model("m", tmp_path / "not_a_model")
    assert "not_a_model" in str(err.value)
    assert store_is_empty(tiffin_home)


def test_path_to_a_file(sk_model: Path, tiffin_home: Path) -> None:
    with pytest.raises(InvalidArgument, match="is a file"):
        tiffin.mlflow.import_model("m", sk_model / "MLmodel")
    assert store_is_empty(tiffin_home)


def test_mlmodel_with_no_flavor_tiffin_can_load(tmp_path: Path, tiffin_home: Path) -> None:
    odd = tmp_path / "spark_only"
    odd.mkdir()
    (odd / "MLmodel").write_text("flavors:\n  spark:\n    model_data: sparkml\n")
    with pytest.raises(InvalidArgument, match="no flavor tiffin can load") as err:
        tiffin.mlflow.import_model("m", odd)
    assert "spark" in str(err.value) and repr(str(odd)) in str(err.value)
    assert store_is_empty(tiffin_home)


def test_sklearn_only_mlmodel_needs_native(sk_model: Path, tiffin_home: Path) -> None:
    mlmodel = yaml.safe_load((sk_model / "MLmodel").read_text())
    del mlmodel["flavors"]["python_function"]
    (sk_model / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(InvalidArgument, match="flavor='native'"):
        tiffin.mlflow.import_model("m", sk_model)
    assert store_is_empty(tiffin_home)
    model = tiffin.mlflow.import_model("m", sk_model, flavor="native")
    assert model.info.options["native_flavor"] == "sklearn"


def test_unreadable_mlmodel_keeps_the_cause(tmp_path: Path, tiffin_home: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "MLmodel").write_text("flavors: [unclosed\n")
    with pytest.raises(InvalidArgument, match="MLmodel file cannot be read") as err:
        tiffin.mlflow.import_model("m", broken)
    assert err.value.__cause__ is not None
    assert store_is_empty(tiffin_home)


def test_signature_naming_a_missing_method(sk_model: Path, tiffin_home: Path) -> None:
    with pytest.raises(InvalidArgument, match="'transform'") as err:
        tiffin.mlflow.import_model("m", sk_model, signatures={"predict": {}, "transform": {}})
    assert "LogisticRegression" in str(err.value) and repr(str(sk_model)) in str(err.value)
    assert store_is_empty(tiffin_home)


def test_a_native_flavor_the_model_lacks_is_refused(sk_model: Path, tiffin_home: Path) -> None:
    with pytest.raises(InvalidArgument, match="has no 'pytorch' flavor"):
        tiffin.mlflow.import_model("m", sk_model, flavor="pytorch")
    assert store_is_empty(tiffin_home)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"flavor": "tensorflow"}, "unknown flavor 'tensorflow'"),
        ({"flavor": 3}, "flavor must be a string"),
        ({"signatures": {"predict": {"batchable": "yes"}}}, "batchable must be true or false"),
        ({"labels": {"a": 1}}, "labels must map str to str"),
        ({"metadata": {"x": object()}}, "JSON-able"),
    ],
)
def test_bad_arguments_fail_before_copying(
    sk_model: Path, tiffin_home: Path, kwargs: dict, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        tiffin.mlflow.import_model("m", sk_model, **kwargs)
    assert store_is_empty(tiffin_home)


def test_empty_uri() -> None:
    with pytest.raises(InvalidArgument, match="model_uri"):
        tiffin.mlflow.import_model("m", "  ")


def test_copy_failure_is_import_failed(sk_model: Path, tiffin_home: Path) -> None:
    secret = sk_model / "extras" / "notes.txt"
    secret.chmod(0)
    try:
        if os.access(secret, os.R_OK):  # running as root: make the copy fail another way
            (sk_model / "extras" / "loop").symlink_to(sk_model / "extras" / "missing")
        with pytest.raises(ImportFailed, match="copying"):
            tiffin.mlflow.import_model("m", sk_model)
    finally:
        secret.chmod(0o644)
    assert store_is_empty(tiffin_home)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_import_mlflow(sk_model: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "models", "import-mlflow", "iris_clf", str(sk_model),
            "--label", "team=ranking", "--label", "expr=a=b", "--batchable", "--flavor", "sklearn",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model = tiffin.mlflow.get("iris_clf")
    assert result.stdout.strip() == f"imported model '{model.tag}'"
    assert result.stderr == ""  # small artifacts: no progress display
    assert model.info.labels == {"team": "ranking", "expr": "a=b"}
    assert model.info.signatures["predict"]["batchable"] is True
    assert model.info.options == {"flavor": "sklearn", "native_flavor": "sklearn"}

    listed = CliRunner().invoke(main, ["models", "list", "iris_clf", "-o", "json"])
    assert [row["tag"] for row in json.loads(listed.stdout)] == [str(model.tag)]


def test_cli_shows_progress_for_large_artifacts(sk_model: Path) -> None:
    (sk_model / "extras" / "weights.bin").write_bytes(os.urandom(3 << 20))
    result = CliRunner().invoke(main, ["models", "import-mlflow", "big", str(sk_model)])
    assert result.exit_code == 0, result.output
    assert "importing" in result.stderr and "MiB" in result.stderr
    copied = Path(tiffin.mlflow.get("big").path_of("mlflow_model/extras/weights.bin"))
    assert copied.stat().st_size == 3 << 20


def test_progress_callback_sees_every_byte(sk_model: Path) -> None:
    seen: list[tuple[int, int | None]] = []
    tiffin.mlflow.import_model("m", sk_model, progress=lambda d, t: seen.append((d, t)))
    total = sum(p.stat().st_size for p in sk_model.rglob("*") if p.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["m", "does/not/exist"], 1, "does not exist"),
        (["m", "."], 2, "no MLmodel file"),
        (["m", "x", "--label", "novalue"], 2, "KEY=VALUE"),
    ],
)
def test_cli_errors(args: list[str], code: int, message: str, tiffin_home: Path) -> None:
    result = CliRunner().invoke(main, ["models", "import-mlflow", *args])
    assert result.exit_code == code
    assert message in result.stderr
    assert store_is_empty(tiffin_home)


# -- packaging ------------------------------------------------------------------------------------


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


def test_import_tiffin_does_not_import_mlflow(subprocess_env: dict[str, str]) -> None:
    code = (
        "import sys, tiffin, tiffin.store.uris; tiffin.mlflow.MLFLOW_MODEL_FOLDER\n"
        "assert 'mlflow' not in sys.modules, 'mlflow imported'\n"
        "assert 'mlflow' in tiffin.__all__ and tiffin.__all__ == sorted(tiffin.__all__)\n"
        "print('ok')"
    )
    proc = _python(code, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_missing_mlflow_is_a_missing_dependency(
    sk_model: Path, subprocess_env: dict[str, str]
) -> None:
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "import tiffin\n"
        "try:\n"
        f"    tiffin.mlflow.import_model('m', {str(sk_model)!r})\n"
        "except tiffin.exceptions.MissingDependency as exc:\n"
        "    print(exc)\n"
    )
    proc = _python(code, subprocess_env)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'tiffin[mlflow]'" in proc.stdout
    assert issubclass(MissingDependency, tiffin.TiffinError)


def test_registry_knows_mlflow() -> None:
    from tiffin import frameworks

    assert frameworks.load("tiffin.mlflow") is tiffin_mlflow


# -- MLflow's HTTP bounds -------------------------------------------------------------------------


def test_http_bounds_apply_only_where_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    with uris.bounded_http() as added:
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
        bound = uris.HTTP_BOUNDS["MLFLOW_HTTP_REQUEST_TIMEOUT"]
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == bound
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in added
        with uris.bounded_http():
            pass
        assert "MLFLOW_HTTP_REQUEST_TIMEOUT" in os.environ  # still inside the outer import
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    assert "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR" not in os.environ
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
