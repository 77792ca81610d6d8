"""Dependency floors: the installed versions satisfy pyproject.toml, and its floors are at least what the code
uses (issue 11)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

packaging = pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

# The oldest release of each dependency that has what odernn calls; raise an entry when the code starts using
# something newer.
CODE_NEEDS = {
    "pandas": ("2.0", "Timestamp/Timedelta/Index.as_unit and DatetimeIndex.unit (odernn.data._time, forecasting)"),
    "scikit-learn": ("1.6", "BaseEstimator.__sklearn_tags__, called through super() by the forecaster"),
}


def _requirements() -> dict[str, list[Requirement]]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    groups = {"dependencies": [Requirement(r) for r in project["dependencies"]]}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = [Requirement(r) for r in reqs]
    return groups


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def test_installed_versions_satisfy_the_declared_requirements():
    checked = 0
    for group, reqs in _requirements().items():
        for req in reqs:
            try:
                installed = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                if group == "dependencies":
                    pytest.fail(f"{req.name} is a dependency of odernn but is not installed")
                continue  # an optional extra that this environment does not have
            assert req.specifier.contains(installed, prereleases=True), (
                f"{req.name} {installed} is installed but pyproject.toml [{group}] asks for {req}"
            )
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("name", sorted(CODE_NEEDS))
def test_declared_floors_cover_what_the_code_uses(name):
    minimum, why = CODE_NEEDS[name]
    (req,) = [r for r in _requirements()["dependencies"] if r.name == name]
    floor = _floor(req)
    assert floor is not None and floor >= Version(minimum), (
        f"pyproject.toml declares {req}, but the code needs {name}>={minimum}: {why}"
    )
