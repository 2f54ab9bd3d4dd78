"""How long the ``tiffin`` command line takes to answer, against a store of 200 models.

Run with ``python bench/cli_latency.py`` (``--help`` for options). It fills a temporary
``TIFFIN_HOME`` with small scikit-learn models -- one real save, then copies of its directory
under other names and versions, each with its own ``model.yaml`` -- and times the console
script as a subprocess, the way a user meets it. Each command runs once to warm the OS caches,
then ``--runs`` times; the table shows the median and the fastest run, in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

TARGET_S = 0.2


def populate(home: Path, count: int) -> None:
    """``count`` models: 20 names, versions spread over them, creation times one second apart."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import tiffin
    from tiffin.tag import new_version

    os.environ["TIFFIN_HOME"] = str(home)
    estimator = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    first = tiffin.sklearn.save_model("bench-0", estimator, labels={"owner": "bench"})
    source = Path(first.path)
    info = yaml.safe_load((source / "model.yaml").read_text())
    start = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=count)
    for i in range(1, count):
        name = f"bench-{i % 20}"
        version = new_version()
        target = home / "models" / name / version
        shutil.copytree(source, target)
        info.update(
            name=name,
            version=version,
            creation_time=(start + dt.timedelta(seconds=i)).isoformat(),
        )
        (target / "model.yaml").write_text(yaml.safe_dump(info, sort_keys=False))
        (home / "models" / name / "latest").write_text(version + "\n")


def time_command(argv: list[str], env: dict[str, str], runs: int) -> list[float]:
    subprocess.run(argv, env=env, check=True, capture_output=True)  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200, help="models in the store")
    parser.add_argument("--runs", type=int, default=9, help="timed runs per command (>= 7)")
    args = parser.parse_args()

    exe = str(Path(sys.executable).parent / "tiffin")
    with tempfile.TemporaryDirectory(prefix="tiffin-bench-") as tmp:
        home = Path(tmp) / "home"
        populate(home, args.models)
        env = {**os.environ, "TIFFIN_HOME": str(home)}
        listed = subprocess.run(
            [exe, "models", "list", "-o", "json"], env=env, check=True, capture_output=True
        )
        found = len(yaml.safe_load(listed.stdout))
        assert found == args.models, f"expected {args.models} models, list shows {found}"

        commands = {
            "tiffin --help": [exe, "--help"],
            "tiffin models list": [exe, "models", "list"],
            "tiffin models list -o json": [exe, "models", "list", "-o", "json"],
        }
        print(f"{args.models} models in the store, {args.runs} runs each, seconds")
        print(f"{'command':<28} {'median':>8} {'min':>8}  target {TARGET_S}")
        slow = 0
        for label, argv in commands.items():
            times = time_command(argv, env, args.runs)
            median = statistics.median(times)
            verdict = "ok" if median < TARGET_S else "SLOW"
            slow += median >= TARGET_S
            print(f"{label:<28} {median:8.3f} {min(times):8.3f}  {verdict}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
