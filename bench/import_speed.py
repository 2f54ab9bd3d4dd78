"""Importing a large local MLflow model costs about a directory copy.

Builds an MLflow pyfunc model whose artifact is a ~200 MB numpy array (in a temporary
directory), then times, alternately and in the same process, ``shutil.copytree`` of the model
directory and ``tiffin.mlflow.import_model`` of it (pyfunc, no signatures beyond predict, so
nothing loads the model). Both write to the same filesystem. One untimed round first warms
the page cache and imports MLflow; one more import is loaded and run as a check. Prints the
medians and their ratio; exits 1 when the ratio is above the target (1.5).

    .venv/bin/python bench/import_speed.py [--size-mb 200] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 1.5


class _Weights:
    """The pyfunc model: y = x @ w[: x.shape[1], :1] (it is never loaded by the import)."""

    def load_context(self, context: Any) -> None:
        import numpy as np

        self.w = np.load(context.artifacts["weights"], mmap_mode="r")

    def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
        return model_input @ self.w[: model_input.shape[1], :1]


def build_model(root: Path, size_mb: int) -> Path:
    import mlflow
    import numpy as np

    class Weights(_Weights, mlflow.pyfunc.PythonModel):
        pass

    weights = root / "weights.npy"
    rows = size_mb * (1 << 20) // (4 * 256)
    rng = np.random.default_rng(0)
    np.save(weights, rng.random((rows, 256), dtype=np.float32))
    target = root / "big_model"
    mlflow.pyfunc.save_model(
        str(target),
        python_model=Weights(),
        artifacts={"weights": str(weights)},
        pip_requirements=["numpy"],
    )
    weights.unlink()
    return target


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tiffin-bench-") as tmp:
        root = Path(tmp)
        os.environ["TIFFIN_HOME"] = str(root / "home")
        import numpy as np

        import tiffin

        source = build_model(root, args.size_mb)
        size = _tree_bytes(source)

        def copy() -> float:
            started = time.perf_counter()
            shutil.copytree(source, root / "copy")
            elapsed = time.perf_counter() - started
            shutil.rmtree(root / "copy")
            return elapsed

        def imported() -> float:
            started = time.perf_counter()
            model = tiffin.mlflow.import_model("big_model", source)
            elapsed = time.perf_counter() - started
            assert _tree_bytes(Path(model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER))) == size
            tiffin.models.delete(model.tag)
            return elapsed

        copy(), imported()  # warm the page cache and the imports
        check = tiffin.mlflow.import_model("big_model", source)  # a real, working model
        prediction = tiffin.mlflow.load_model(check).predict(np.ones((2, 3)))
        assert prediction.shape == (2, 1), prediction.shape
        tiffin.models.delete(check.tag)
        copies: list[float] = []
        imports: list[float] = []
        for i in range(args.runs):
            order = (copy, imported) if i % 2 == 0 else (imported, copy)
            for step in order:
                (copies if step is copy else imports).append(step())

    copy_s, import_s = statistics.median(copies), statistics.median(imports)
    ratio = import_s / copy_s
    print(f"model directory: {size / (1 << 20):.0f} MiB, {args.runs} runs each, medians")
    print("| operation                        | median  | fastest |")
    print("|----------------------------------|---------|---------|")
    print(f"| `shutil.copytree`                | {copy_s:.3f} s | {min(copies):.3f} s |")
    print(f"| `tiffin.mlflow.import_model`     | {import_s:.3f} s | {min(imports):.3f} s |")
    print(f"ratio import / copy: {ratio:.2f} (target <= {TARGET})")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
