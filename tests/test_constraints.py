"""The pinned install (.ci/constraints.txt) covers every dependency the project declares, within its range.

A dependency added to pyproject.toml without re-running `scripts/update_constraints.sh` would install unpinned on
a fresh machine (whatever was released yesterday): this test names it.
"""

import pathlib
import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / ".ci" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "tempnet"]


def test_every_declared_dependency_is_pinned_within_its_range():
    pins = _pins()
    problems = []
    for req in _declared():
        version = pins.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not pinned")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}: pinned {version}, pyproject asks {req.specifier}")
    assert not problems, "re-run scripts/update_constraints.sh: " + "; ".join(problems)


def test_ci_and_readme_install_torch_with_the_constraints():
    pins = _pins()
    for text in ((ROOT / ".ci" / "run").read_text(), (ROOT / "README.md").read_text()):
        assert f"torch=={pins['torch']} torchvision=={pins['torchvision']}" in text
    assert "-c .ci/constraints.txt" in (ROOT / "README.md").read_text()
    assert "constraints=(-c .ci/constraints.txt)" in (ROOT / ".ci" / "run").read_text()
