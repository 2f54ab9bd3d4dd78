"""tiffin.mlflow from s3:// on a real S3-compatible server (moto, on loopback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tiffin
from tests.fixtures_mlflow import Bucket, fitted_classifier, iris_like, save_sklearn, store_is_empty
from tiffin.exceptions import NotFound


def test_import_from_s3(s3_bucket: Bucket, tmp_path: Path) -> None:
    local = save_sklearn(tmp_path / "model")
    uri = s3_bucket.upload_dir(local, "team/models/clf")
    model = tiffin.mlflow.import_model("from_s3", uri)
    folder = Path(model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER))
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in local.iterdir())
    assert model.info.context["mlflow"]["source_uri"] == uri
    X, _y = iris_like()
    predictions = tiffin.mlflow.load_model(model).predict(X)
    np.testing.assert_array_equal(predictions, fitted_classifier().predict(X))


def _fails(uri: str, *words: str) -> None:
    with pytest.raises(NotFound) as err:
        tiffin.mlflow.import_model("from_s3", uri)
    message = str(err.value)
    assert repr(uri) in message
    for word in words:
        assert word.lower() in message.lower(), message
    assert err.value.__cause__ is not None


def test_missing_bucket(s3_bucket: Bucket, tiffin_home: Path) -> None:
    _fails(f"s3://{s3_bucket.name}-missing/models/clf", "bucket does not exist")
    assert store_is_empty(tiffin_home)


def test_missing_key(s3_bucket: Bucket, tmp_path: Path, tiffin_home: Path) -> None:
    s3_bucket.upload_dir(save_sklearn(tmp_path / "model"), "models/clf")
    _fails(f"s3://{s3_bucket.name}/models/other", "not found")
    assert store_is_empty(tiffin_home)


def test_prefix_without_mlmodel(s3_bucket: Bucket, tmp_path: Path, tiffin_home: Path) -> None:
    s3_bucket.upload_dir(save_sklearn(tmp_path / "model"), "models/clf")
    with pytest.raises(tiffin.exceptions.InvalidArgument, match="no MLmodel file"):
        tiffin.mlflow.import_model("from_s3", f"s3://{s3_bucket.name}/models")
    assert store_is_empty(tiffin_home)
