"""The dependency bounds in pyproject.toml hold for the versions this suite runs on."""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def test_bounded_dependencies_have_an_upper_bound_the_installed_version_meets():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in meta["dependencies"] + meta["optional-dependencies"]["trl"]]
    bounded = {r.name: r for r in reqs if r.name in ("transformers", "peft", "accelerate", "trl")}
    assert set(bounded) == {"transformers", "peft", "accelerate", "trl"}
    for name, req in bounded.items():
        assert any(s.operator == "<" for s in req.specifier), f"{name} has no upper bound"
        assert req.specifier.contains(version(name), prereleases=True), f"{name} {version(name)} outside {req.specifier}"
