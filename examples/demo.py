"""`make demo`: the main job end to end, printing what it does.

Trains a small scikit-learn model, saves it to the tiffin store, lists the store, loads the
model back, and predicts through a runner with adaptive batching. The store lives in
./demo-home (set TIFFIN_HOME to use another), so your own ~/tiffin is untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("TIFFIN_HOME", str(HERE.parent / "demo-home"))

import numpy as np  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

import tiffin  # noqa: E402


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> None:
    print(f"tiffin {tiffin.__version__}; store at {os.environ['TIFFIN_HOME']}")

    step("train a LogisticRegression on iris and save it with tiffin.sklearn.save_model")
    iris = load_iris()
    clf = LogisticRegression(max_iter=500).fit(iris.data, iris.target)
    model = tiffin.sklearn.save_model(
        "iris_clf",
        clf,
        signatures={"predict": {"batchable": True}, "predict_proba": {"batchable": True}},
        labels={"owner": "demo"},
        metadata={"train_accuracy": float(clf.score(iris.data, iris.target))},
    )
    print(f"saved {model.tag} at {model.path}")

    step("tiffin models list iris_clf")
    subprocess.run([str(Path(sys.executable).parent / "tiffin"), "models", "list", "iris_clf"],
                   check=True)

    step("load it back with tiffin.sklearn.load_model and predict")
    loaded = tiffin.sklearn.load_model("iris_clf:latest")
    sample = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
    print("predict:", loaded.predict(sample).tolist())

    step("run it through a runner: tiffin.sklearn.get(...).to_runner(), init_local()")
    runner = tiffin.sklearn.get("iris_clf:latest").to_runner()
    runner.init_local()
    print("runner.predict.run:", runner.predict.run(sample).tolist())
    print("runner.predict_proba.run:", np.round(runner.predict_proba.run(sample), 3).tolist())
    runner.destroy()
    print("\ndemo finished")


if __name__ == "__main__":
    main()
