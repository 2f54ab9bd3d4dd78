"""`make demo`: the main job end to end, printing what it does.

1. train a scikit-learn model and log it with MLflow (a local sqlite tracking store);
2. import it into the tiffin store with ``tiffin.mlflow.import_model`` and list the store;
3. load it back (pyfunc) and predict, then predict through a batching runner;
4. serve it with ``tiffin serve-model``, query ``/predict`` and MLflow's ``/invocations`` over
   HTTP, print the answers, and stop the server cleanly (SIGTERM, exit code 0).

Everything lives in ./demo-home (set TIFFIN_HOME to use another store), so your own ~/tiffin
and any MLflow setup you have are untouched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_HOME = Path(os.environ.get("DEMO_DIR", HERE.parent / "demo-home")).resolve()
os.environ.setdefault("TIFFIN_HOME", str(DEMO_HOME / "tiffin"))
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{DEMO_HOME / 'mlflow.db'}"
BIN = Path(sys.executable).parent


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: object | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> float:
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if server.poll() is not None:
            raise SystemExit(f"the server exited early with code {server.returncode}")
        try:
            if http("GET", url)[0] == 200:
                return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server was not ready within {timeout} s")


def main() -> None:
    DEMO_HOME.mkdir(parents=True, exist_ok=True)
    os.chdir(DEMO_HOME)  # MLflow writes run artifacts under the working directory

    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import tiffin

    print(f"tiffin {tiffin.__version__}, MLflow {mlflow.__version__}")
    print(f"tiffin store: {os.environ['TIFFIN_HOME']}; MLflow store: {DEMO_HOME / 'mlflow.db'}")

    step("train a LogisticRegression on iris and log it with mlflow.sklearn.log_model")
    iris = load_iris(as_frame=True)
    X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    clf = LogisticRegression(max_iter=500).fit(X, iris.target)
    mlflow.set_experiment("tiffin-demo")
    with mlflow.start_run() as run:
        mlflow.log_param("max_iter", 500)
        mlflow.log_metric("train_accuracy", float(clf.score(X, iris.target)))
        logged = mlflow.sklearn.log_model(
            clf,
            name="model",
            signature=infer_signature(X, clf.predict(X)),
            input_example=X.iloc[:2],
            pip_requirements=["scikit-learn", "pandas", "numpy"],
        )
    print(f"logged run {run.info.run_id}; model_uri {logged.model_uri}")

    step("tiffin.mlflow.import_model('iris_clf', model_uri) with the run's params and metrics")
    finished = mlflow.get_run(run.info.run_id)
    model = tiffin.mlflow.import_model(
        "iris_clf",
        logged.model_uri,
        signatures={"predict": {"batchable": True}},
        labels={"owner": "demo"},
        metadata={"metrics": finished.data.metrics, "params": finished.data.params},
    )
    print(f"imported {model.tag} into {model.path}")

    step("tiffin models list iris_clf")
    subprocess.run([str(BIN / "tiffin"), "models", "list", "iris_clf"], check=True)

    sample = X.iloc[[0, 70, 140]]
    step("load it back: tiffin.mlflow.load_model (MLflow pyfunc) and predict")
    pyfunc = tiffin.mlflow.load_model("iris_clf:latest")
    print(f"{type(pyfunc).__name__}.predict:", np.asarray(pyfunc.predict(sample)).tolist())

    step("a runner: tiffin.mlflow.get('iris_clf:latest').to_runner(); runner.init_local()")
    runner = tiffin.mlflow.get("iris_clf:latest").to_runner()
    runner.init_local()
    print("runner.predict.run(DataFrame):", np.asarray(runner.predict.run(sample)).tolist())
    print("runner.predict.run(ndarray):  ",
          np.asarray(runner.predict.run(sample.to_numpy())).tolist())
    runner.destroy()

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    step(f"tiffin serve-model iris_clf:latest --port {port}")
    server = subprocess.Popen(
        [str(BIN / "tiffin"), "serve-model", "iris_clf:latest", "--port", str(port),
         "--log-level", "warning"],
    )
    try:
        print(f"ready in {wait_ready(base + '/readyz', server):.1f} s")
        rows = sample.to_numpy().tolist()
        status, body = http("POST", base + "/predict", rows)
        print(f"POST /predict {rows}\n  -> {status} {body}")
        split = json.loads(sample.to_json(orient="split"))
        split.pop("index", None)
        status, body = http("POST", base + "/invocations", {"dataframe_split": split})
        print(f"POST /invocations (MLflow protocol, dataframe_split)\n  -> {status} {body}")
        status, body = http("POST", base + "/predict", [[1.0, 2.0]])
        print(f"POST /predict with 2 features instead of 4\n  -> {status} {body}")
        status, body = http("GET", base + "/metrics")
        batches = [line for line in body.splitlines() if line.startswith("tiffin_runner_calls")]
        print("from /metrics:", *batches)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
    print(f"server stopped (exit code {code})")
    pd.set_option("display.width", 120)
    print("\ndemo finished")
    if code != 0:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
