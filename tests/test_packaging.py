"""What ``pyproject.toml`` promises: core dependencies cover every extra's server, and the
libraries whose private parts tiffin touches are bounded below their next breaking release."""

from __future__ import annotations

import importlib.metadata
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = {Requirement(text).name.lower(): Requirement(text) for text in PROJECT["dependencies"]}
EXTRAS = {
    extra: {Requirement(text).name.lower(): Requirement(text) for text in requirements}
    for extra, requirements in PROJECT["optional-dependencies"].items()
}

#: libraries tiffin reaches into (private attributes, internal modules): bound them
TOUCHED = {
    "starlette": "core",
    "uvicorn": "core",
    "prometheus-client": "core",
    "mlflow": "mlflow",
}


def _upper(requirement: Requirement) -> Version | None:
    uppers = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
    return min(uppers) if uppers else None


@pytest.mark.parametrize("name", sorted(TOUCHED))
def test_libraries_tiffin_reaches_into_are_bounded_below_their_next_breaking_release(
    name: str,
) -> None:
    where = TOUCHED[name]
    requirement = CORE[name] if where == "core" else EXTRAS[where][name]
    upper = _upper(requirement)
    assert upper is not None, f"{requirement} has no upper bound"
    installed = Version(importlib.metadata.version(name))
    assert requirement.specifier.contains(installed), f"installed {installed} breaks {requirement}"
    # below the next major, or the next minor of a 0.x release: no wider than that
    if installed.major == 0:
        assert upper <= Version(f"0.{installed.minor + 1}"), requirement
    else:
        assert upper <= Version(f"{installed.major + 1}"), requirement


def test_the_server_needs_nothing_an_extra_alone_lacks() -> None:
    """Settings (pydantic) are read by every server: a core dependency, not the mlflow
    extra's passenger (``pip install 'tiffin[sklearn]'`` then ``serve-model`` failed)."""
    assert "pydantic" in CORE
    for name in ("starlette", "uvicorn", "orjson", "prometheus-client", "httpx"):
        assert name in CORE, name


def test_the_ray_extra_keeps_tiffins_web_bounds() -> None:
    """``tiffin[ray]`` stays out of ``all`` and never moves starlette or uvicorn past tiffin's
    bounds: where Ray is installed, what its serve extra asks of them is met by versions that
    tiffin's bounds allow (the installed ones)."""
    ray = EXTRAS["ray"]["ray"]
    assert "serve" in ray.extras and _upper(ray) is not None, ray
    assert not any("ray" in text for text in PROJECT["optional-dependencies"]["all"])
    try:
        requires = importlib.metadata.requires("ray") or []
    except importlib.metadata.PackageNotFoundError:
        return  # the static half above is all there is to check without Ray
    assert ray.specifier.contains(Version(importlib.metadata.version("ray")))
    for text in requires:
        requirement = Requirement(text)
        name = requirement.name.lower()
        if name in ("starlette", "uvicorn") and requirement.marker is not None and \
                requirement.marker.evaluate({"extra": "serve"}):  # fmt: skip
            installed = Version(importlib.metadata.version(name))
            assert requirement.specifier.contains(installed), (requirement, installed)
            assert CORE[name].specifier.contains(installed), (CORE[name], installed)
