"""``tiffin build`` and ``tiffin.build(...)``: what a built tiffin holds, in process.

Serving a built tiffin is ``test_build_e2e.py``'s; moving it into a fresh virtualenv is
``test_build_deploy.py``'s; bad input is ``test_build_errors.py``'s.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

import tiffin
from tiffin.store import tiffins

from .test_build_support import invoke, project, save_clf, store_entries, write_wheel


@pytest.fixture
def clf_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    save_clf()
    root = project(tmp_path / "proj")
    monkeypatch.chdir(root)
    return root


def test_a_build_holds_its_code_models_environment_and_record(clf_project: Path) -> None:
    model = tiffin.models.get("clf")
    result = invoke("build", "-o", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    built = Path(out["path"])
    assert out["tag"] == f"clfsvc:{out['version']}" and built.parent.name == "clfsvc"
    # src/: what include takes, less exclude
    src = sorted(p.relative_to(built / "src").as_posix() for p in (built / "src").rglob("*")
                 if p.is_file())  # fmt: skip
    assert src == ["data/labels.json", "service.py"]
    # models/: a copy of the model the runner uses, and its own latest
    copied = built / "models" / "clf" / str(model.tag.version)
    assert (copied / "model.yaml").read_bytes() == Path(model.path, "model.yaml").read_bytes()
    assert (built / "models" / "clf" / "latest").read_text().strip() == model.tag.version
    # env/
    requirements = (built / "env/python/requirements.txt").read_text().splitlines()
    assert f"tiffin[sklearn]=={tiffin.__version__}" in requirements
    assert "scikit-learn" in requirements
    assert (built / "env/python/python_version.txt").read_text().strip().startswith("3.")
    assert "ENTRYPOINT" in (built / "env/docker/Dockerfile").read_text()
    assert not (built / "env/conda").exists()
    openapi = yaml.safe_load((built / "apis/openapi.yaml").read_text())
    assert "/classify" in openapi["paths"]
    assert "tiffin serve clfsvc:" in (built / "README.md").read_text()
    # tiffin.yaml
    info = yaml.safe_load((built / "tiffin.yaml").read_text())
    assert info["service"] == "service.py:svc"
    assert info["labels"] == {"owner": "tests"}
    assert info["tiffin_version"] == tiffin.__version__
    assert info["python_version"].startswith("3.")
    assert [a["name"] for a in info["apis"]] == ["classify"]
    assert info["apis"][0]["input"] == {"type": "JSON", "args": {}}
    assert [m["tag"] for m in info["models"]] == [str(model.tag)]
    runner = info["runners"][0]
    assert runner["name"] == "clf" and runner["models"] == [str(model.tag)]
    assert runner["methods"]["predict"]["max_batch_size"] == 1024
    assert info["creation_time"].endswith("Z") or "+00:00" in info["creation_time"]
    assert "built tiffin 'clfsvc:" in result.stderr


def test_latest_is_pinned_at_build_time(clf_project: Path) -> None:
    first = tiffin.models.get("clf")
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    save_clf()  # a newer clf: the built tiffin keeps the one it was built with
    assert tiffin.models.get("clf:latest").tag != first.tag
    assert [m["tag"] for m in built.info.models] == [str(first.tag)]
    assert sorted(p.name for p in (built.models_dir / "clf").iterdir()) == sorted(
        ["latest", str(first.tag.version)]
    )


def test_tiffinignore_and_what_never_goes_in(
    clf_project: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clf_project / "tiffinfile.yaml").write_text('service: "service.py:svc"\n')  # include: *
    (clf_project / ".tiffinignore").write_text("# comment\n*.md\ndata/\n!data/labels.json\n")
    (clf_project / "pkg" / "__pycache__").mkdir(parents=True)
    (clf_project / "pkg" / "__init__.py").write_text("")
    (clf_project / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (clf_project / ".git").mkdir()
    (clf_project / ".git" / "HEAD").write_text("ref")
    (clf_project / ".venv" / "lib").mkdir(parents=True)
    (clf_project / ".venv" / "pyvenv.cfg").write_text("home = /usr")
    (clf_project / ".venv" / "lib" / "big.py").write_text("")
    home = clf_project / "home"  # a TIFFIN_HOME inside the context is never copied into it
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    save_clf()
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    src = sorted(p.relative_to(built.src_dir).as_posix() for p in built.src_dir.rglob("*")
                 if p.is_file())  # fmt: skip
    # data/ is excluded as a directory, so the negation cannot bring labels.json back (git's rule)
    assert src == [".tiffinignore", "pkg/__init__.py", "service.py", "tiffinfile.yaml"]


def test_output_modes_explicit_version_list_get_delete(clf_project: Path) -> None:
    result = invoke("build", "--version", "v1", "-o", "path", "-q")
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.strip())
    assert path.parts[-2:] == ("clfsvc", "v1") and result.stderr == ""
    assert invoke("build", "-q").stdout.strip().startswith("clfsvc:")
    listed = json.loads(invoke("list", "-o", "json").stdout)
    assert len(listed) == 2 and listed[1]["tag"] == "clfsvc:v1"  # newest first
    assert invoke("list").stdout.splitlines()[0].split()[:2] == ["Tag", "Service"]
    assert invoke("get", "clfsvc:v1", "-o", "path").stdout.strip() == str(path)
    assert json.loads(invoke("get", "clfsvc:v1", "-o", "json").stdout)["version"] == "v1"
    assert yaml.safe_load(invoke("get", "clfsvc:v1").stdout)["service"] == "service.py:svc"
    assert invoke("delete", "clfsvc:v1", "-y").stdout.strip() == "deleted tiffin 'clfsvc:v1'"
    assert not path.exists()
    result = invoke("get", "clfsvc:v1")
    assert result.exit_code == 1 and "run `tiffin list`" in result.stderr


def test_the_python_api_builds_from_arguments_or_the_tiffinfile(clf_project: Path) -> None:
    built = tiffin.build("service.py:svc", name="from-args", version="v2", include=["*.py"],
                         labels={"k": "v"}, build_ctx=clf_project)  # fmt: skip
    assert str(built.tag) == "from-args:v2" and built.info.labels == {"k": "v"}
    assert [p.name for p in built.src_dir.iterdir()] == ["service.py"]
    again = tiffin.build(build_ctx=clf_project)
    assert again.tag.name == "clfsvc" and again.info.labels == {"owner": "tests"}


def test_two_builds_in_one_process_import_their_own_service_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``service:svc`` in two contexts: the second build must not reuse the first module."""
    save_clf()
    body = "import tiffin\nsvc = tiffin.Service('{name}')\n"
    for name in ("first", "second"):
        project(tmp_path / name, service=body.format(name=name),
                tiffinfile='service: "service:svc"\n')  # fmt: skip
    built = [tiffin.build(build_ctx=tmp_path / name) for name in ("first", "second")]
    assert [b.tag.name for b in built] == ["first", "second"]
    import sys

    leftovers = [m for m in list(sys.modules.values())
                 if str(tmp_path) in str(getattr(m, "__file__", "") or "")]  # fmt: skip
    assert leftovers == []  # the user's modules are forgotten


def test_requirements_files_are_read_in_place(clf_project: Path) -> None:
    (clf_project / "reqs").mkdir()
    (clf_project / "reqs" / "base.txt").write_text("numpy>=1.24  # pinned below\n")
    (clf_project / "reqs" / "all.txt").write_text(
        "# everything\n-r base.txt\n--extra-index-url https://example.invalid/simple\npandas\n"
    )
    (clf_project / "tiffinfile.yaml").write_text(
        'service: "service.py:svc"\npython:\n  requirements_txt: ./reqs/all.txt\n'
        "  index_url: https://pypi.example.invalid/simple\n"
    )
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    lines = [
        line for line in (built.path / "env/python/requirements.txt").read_text().splitlines()
        if not line.startswith("#")
    ]  # fmt: skip
    assert lines == [
        "--index-url https://pypi.example.invalid/simple",
        "--extra-index-url https://example.invalid/simple",
        f"tiffin[sklearn]=={tiffin.__version__}",
        "numpy>=1.24",
        "pandas",
    ]


def test_wheels_travel_and_a_description_file_becomes_the_readme(clf_project: Path) -> None:
    (clf_project / "dist").mkdir()
    write_wheel(clf_project / "dist", "mylib", "1.2.3")
    (clf_project / "ABOUT.md").write_text("Classifies toy points.\n")
    (clf_project / "tiffinfile.yaml").write_text(
        'service: "service.py:svc"\ndescription: "file: ./ABOUT.md"\n'
        "python:\n  wheels: [./dist/mylib-1.2.3-py3-none-any.whl]\n"
    )
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    assert (built.path / "env/python/wheels/mylib-1.2.3-py3-none-any.whl").is_file()
    assert "mylib==1.2.3" in (built.path / "env/python/requirements.txt").read_text()
    assert "--find-links /opt/tiffin/env/python/wheels" in built.dockerfile.read_text()
    assert (built.path / "README.md").read_text().startswith(
        f"# {built.tag}\n\nClassifies toy points."
    )
    assert built.info.description == "Classifies toy points.\n"


def test_the_guides_tips_work_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: None
) -> None:
    """``requirements_txt`` / ``environment_yml`` from ``$TIFFIN_MLFLOW_MODEL_PATH``, set from
    ``tiffin models get my_mlflow_model:latest -o path`` (BentoML refuses absolute paths)."""
    from tests.test_serving_support import save_iris_model

    save_iris_model(tmp_path / "model")
    imported = invoke("models", "import-mlflow", "my_mlflow_model", str(tmp_path / "model"))
    assert imported.exit_code == 0, imported.output
    path = invoke("models", "get", "my_mlflow_model:latest", "-o", "path").stdout.strip()
    monkeypatch.setenv("TIFFIN_MLFLOW_MODEL_PATH", path)
    service = (
        "import tiffin\n"
        "runner = tiffin.mlflow.get('my_mlflow_model:latest').to_runner()\n"
        "svc = tiffin.Service('mlflow_svc', runners=[runner])\n"
    )
    root = project(tmp_path / "proj", service=service, tiffinfile=(
        'service: "service.py:svc"\npython:\n'
        "    requirements_txt: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/requirements.txt\n"
        "    lock_packages: False\n"
    ))  # fmt: skip
    monkeypatch.chdir(root)
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    mlflow_reqs = Path(path, "mlflow_model", "requirements.txt").read_text().split()
    built_reqs = (built.path / "env/python/requirements.txt").read_text().split()
    assert set(mlflow_reqs) <= set(built_reqs)
    assert f"tiffin[mlflow]=={tiffin.__version__}" in built_reqs
    assert [a["name"] for a in built.info.apis] == ["invocations"]  # MLflow's protocol
    # the conda variant
    (root / "tiffinfile.yaml").write_text(
        'service: "service.py:svc"\nconda:\n'
        "    environment_yml: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/conda.yaml\n"
    )
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    conda = built.path / "env/conda/environment.yml"
    assert conda.read_text() == Path(path, "mlflow_model", "conda.yaml").read_text()
    assert built.dockerfile.read_text().startswith("# syntax") and (
        "FROM condaforge/miniforge3" in built.dockerfile.read_text()
    )


def test_export_and_import_move_a_tiffin_as_one_file(
    clf_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = invoke("build", "-q").stdout.strip()
    original = tiffins.get(tag)
    out = tmp_path / "out"
    out.mkdir()
    archive = Path(invoke("export", tag, str(out), "-q").stdout.strip())
    assert archive.name == f"{tag.replace(':', '-')}.tiffin" and archive.is_file()
    other = tmp_path / "other-home"
    monkeypatch.setenv("TIFFIN_HOME", str(other))
    result = invoke("import", str(archive), "-q")
    assert result.stdout.strip() == f"imported tiffin '{tag}'"
    imported = tiffins.get(tag)
    assert imported.path.is_relative_to(other)
    assert imported.info == original.info
    for file in original.path.rglob("*"):
        if file.is_file():
            assert (imported.path / file.relative_to(original.path)).read_bytes() == (
                file.read_bytes()
            )
    again = invoke("import", str(archive))
    assert again.exit_code == 1 and "already exists" in again.stderr
    assert store_entries(other) == [f"clfsvc/{tag.split(':')[1]}"]


def test_an_archive_is_refused_by_the_model_archive_rules(
    clf_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    from tiffin.exceptions import InvalidArchive
    from tiffin.store.archive import import_tiffin

    tag = invoke("build", "-q").stdout.strip()
    archive = Path(invoke("export", tag, str(tmp_path), "-q").stdout.strip())
    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "fresh"))
    with pytest.raises(InvalidArchive, match="more than 3 members"):
        import_tiffin(archive, max_members=3)
    with pytest.raises(InvalidArchive, match="over the 100-byte limit"):
        import_tiffin(archive, max_bytes=100)
    linked = tmp_path / "linked.tiffin"
    with tarfile.open(linked, "w:gz") as tar:
        info = tarfile.TarInfo("src/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    result = invoke("import", str(linked))
    assert result.exit_code == 2 and "is a link" in result.stderr
    plain = tmp_path / "plain.tiffin"
    with tarfile.open(plain, "w:gz") as tar:
        tar.add(clf_project / "service.py", arcname="service.py")
    result = invoke("import", str(plain))
    assert result.exit_code == 2 and "not a built tiffin" in result.stderr
    assert store_entries(tmp_path / "fresh") == []
    assert os.environ["TIFFIN_HOME"].endswith("fresh")


def test_long_steps_tell_their_progress(clf_project: Path, tmp_path: Path) -> None:
    from tiffin.building.builder import build_tiffin
    from tiffin.building.tiffinfile import load_tiffinfile
    from tiffin.store.archive import export_tiffin, import_tiffin

    seen: list[tuple[str, int, int]] = []
    report = build_tiffin(load_tiffinfile(clf_project / "tiffinfile.yaml"),
                          build_ctx=clf_project, progress=lambda *a: seen.append(a))  # fmt: skip
    copied = [(done, total) for step, done, total in seen if step == "copying models"]
    assert copied[-1] == (report.models_bytes, report.models_bytes) and report.models_bytes > 0
    assert [done for done, _ in copied] == sorted(done for done, _ in copied)
    told: list[tuple[int, int]] = []
    archive = export_tiffin(report.tiffin.tag, tmp_path, progress=lambda *a: told.append(a))
    assert told[-1][0] == told[-1][1] > report.models_bytes
    report.tiffin.path.rename(tmp_path / "moved")  # so that the import is not a duplicate
    told.clear()
    import_tiffin(archive, progress=lambda *a: told.append(a))
    assert told[-1][0] == told[-1][1] > 0
    # -q: nothing but the result
    result = invoke("build", "-q")
    assert result.exit_code == 0 and result.stderr == ""


def test_serve_reload_is_for_source_files(clf_project: Path) -> None:
    tag = invoke("build", "-q").stdout.strip()
    result = invoke("serve", tag, "--reload")
    assert result.exit_code == 2
    assert "--reload watches source files; a built tiffin never changes" in result.stderr
    result = invoke("serve", "nosuch_tiffin_or_module")
    assert result.exit_code == 1
    assert result.stderr.startswith("tiffin: error: cannot find 'nosuch_tiffin_or_module'")
