"""``tiffin serve TARGET``: finding the Service, and what the user sees when their code fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiffin.exceptions import UserCodeFailed
from tiffin.process.targets import module_name_for, resolve_service

from .conftest import tiffin_exe

BROKEN = {
    "raises": (
        "import tiffin\n\ndef helper():\n    return 1 / 0\n\nx = helper()\n",
        ["line 6, in <module>", "line 4, in helper", "ZeroDivisionError: division by zero"],
    ),
    "syntax": (
        'import tiffin\nsvc = tiffin.Service("x"\n',
        ["line 2", "SyntaxError"],
    ),
    "missing_import": (
        "import tiffin\nimport nosuch_package_for_tiffin_tests\n",
        ["line 2, in <module>", "No module named 'nosuch_package_for_tiffin_tests'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_service_file_shows_the_users_frames_only_and_exits_1(
    case: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    source, expected = BROKEN[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    result = subprocess.run(
        [tiffin_exe(), "serve", f"{path}:svc"],
        env=subprocess_env, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert err.startswith(f"tiffin: error: cannot import service '{path}:svc'"), err
    assert str(path) in err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert "/tiffin/" not in err.replace(str(path), "")  # no frames of tiffin itself
    assert "click" not in err and "importlib" not in err
    assert len(err.splitlines()) <= 12


def test_a_broken_service_module_is_reported_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "brokensvc_for_tests.py").write_text("import tiffin\nraise RuntimeError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserCodeFailed) as info:
        resolve_service("brokensvc_for_tests:svc", cwd=tmp_path)
    message = str(info.value)
    assert "brokensvc_for_tests.py\", line 2, in <module>" in message
    assert message.endswith("RuntimeError: nope")


def test_a_service_file_gets_the_same_module_name_in_every_process(tmp_path: Path) -> None:
    """API workers and runner processes unpickle each other's instances of classes defined in
    the service file by that name (it used to come from ``hash()``, salted per process)."""
    path = (tmp_path / "svc.py").resolve()
    code = textwrap.dedent(f"""
        from pathlib import Path
        from tiffin.process.targets import module_name_for
        print(module_name_for(Path({str(path)!r})))
    """)
    names = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert names == {module_name_for(path)}
    assert module_name_for(path).isidentifier()


# -- one rule: a service, or a built tiffin ----------------------------------------------------


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """What resolving adds to sys.path and sys.modules, and the model lookups, undone after."""
    from tiffin.store.models import use_bundled_models

    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith(("ambig_", "_tiffin_service_")):
            del sys.modules[name]
    use_bundled_models(None)


def _built(tmp_path: Path, name: str, version: str) -> Path:
    import tiffin

    root = tmp_path / f"ctx-{name}-{version}"
    root.mkdir()
    (root / "service.py").write_text(f"import tiffin\nsvc = tiffin.Service({name!r})\n")
    return tiffin.build("service.py:svc", name=name, version=version, build_ctx=root).path


def test_a_py_path_or_an_importable_module_is_a_service(
    tmp_path: Path, isolated_imports: None
) -> None:
    from tiffin.process.targets import resolve_target

    (tmp_path / "ambig_plain.py").write_text("raise RuntimeError('imported too early')\n")
    assert resolve_target("x/ambig_plain.py:svc", cwd=tmp_path).service == "x/ambig_plain.py:svc"
    # importable and no built tiffin of that tag: a service, decided without importing it
    assert resolve_target("ambig_plain:svc", cwd=tmp_path).service == "ambig_plain:svc"
    assert "ambig_plain" not in sys.modules


def test_otherwise_a_tag_names_a_built_tiffin(tmp_path: Path, isolated_imports: None) -> None:
    from tiffin.exceptions import NotFound
    from tiffin.process.targets import resolve_target

    path = _built(tmp_path, "ambig-tiffin", "v1")
    for target in ("ambig-tiffin", "ambig-tiffin:latest", "ambig-tiffin:v1"):
        resolved = resolve_target(target, cwd=tmp_path)
        assert resolved.service is None and resolved.tiffin is not None
        assert resolved.tiffin.path == path
    with pytest.raises(NotFound) as info:
        resolve_target("ambig_nothing:v1", cwd=tmp_path)
    assert str(info.value) == (
        f"cannot find 'ambig_nothing:v1': no module named 'ambig_nothing' (looked in {tmp_path} "
        "and on sys.path; a service is module:attr or path/to/file.py:attr) and no built tiffin "
        "of that tag (run `tiffin list`)"
    )


def test_a_module_and_a_tiffin_of_one_tag_the_attribute_decides(
    tmp_path: Path, isolated_imports: None
) -> None:
    from tiffin.process.targets import resolve_target

    _built(tmp_path, "ambig_both", "v1")
    (tmp_path / "ambig_both.py").write_text("import tiffin\nv1 = tiffin.Service('mod')\n")
    assert resolve_target("ambig_both:v1", cwd=tmp_path).service == "ambig_both:v1"
    (tmp_path / "ambig_both.py").write_text("import tiffin\nother = 1\n")
    del sys.modules["ambig_both"]
    assert resolve_target("ambig_both:v1", cwd=tmp_path).tiffin is not None


def test_service_and_tiffin_force_either(tmp_path: Path, isolated_imports: None) -> None:
    from tiffin.exceptions import NotFound
    from tiffin.process.targets import resolve_target

    _built(tmp_path, "ambig_forced", "v1")
    (tmp_path / "ambig_forced.py").write_text("import tiffin\nv1 = tiffin.Service('mod')\n")
    assert resolve_target("ambig_forced:v1", cwd=tmp_path, force="tiffin").tiffin is not None
    assert resolve_target("nosuch_mod:x", cwd=tmp_path, force="service").service == "nosuch_mod:x"
    with pytest.raises(NotFound, match="run `tiffin list`"):
        resolve_target("ambig_plain_nothing", cwd=tmp_path, force="tiffin")


def test_a_built_tiffin_sees_only_its_own_models(
    tmp_path: Path, isolated_imports: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its service's model lookups go to its models/; the home store's are not there."""
    import tiffin
    from tiffin.exceptions import NotFound
    from tiffin.process.targets import load_built

    from .test_build_support import project, save_clf

    save_clf()
    root = project(tmp_path / "proj", tiffinfile='service: "service.py:svc"\n')
    built = tiffin.build(build_ctx=root)
    save_clf("elsewhere")
    monkeypatch.chdir(tmp_path)
    service = load_built(built.path, chdir=True)
    assert Path.cwd() == built.src_dir
    assert service.name == "clfsvc"
    assert Path(service.runners[0].models[0].path).is_relative_to(built.models_dir)
    assert [str(m.tag) for m in tiffin.models.list()] == [m["tag"] for m in built.info.models]
    with pytest.raises(NotFound, match=r"list this one under `models:` in tiffinfile\.yaml"):
        tiffin.models.get("elsewhere")
