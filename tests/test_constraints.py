"""Reproducible installs: constraints.txt pins the versions this environment was tested with."""
import re
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
UNPINNED = {"rlcore", "pip", "setuptools", "wheel"}  # the project itself and the installer


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        assert m, f"constraints.txt: not a 'name==version' pin: {line!r}"
        pins[canonicalize_name(m[1])] = m[2]
    return pins


def test_every_installed_package_is_pinned_at_its_installed_version():
    pins = _pins()
    unpinned, mismatched = [], []
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        if name in UNPINNED:
            continue
        if name not in pins:
            unpinned.append(name)
        elif Version(pins[name]) != Version(Version(dist.version).public):
            mismatched.append(f"{name}: installed {dist.version}, pinned {pins[name]}")
    fix = "; run the tests on the new versions, then bash scripts/freeze_constraints.sh"
    assert not unpinned, f"installed but not pinned in constraints.txt: {sorted(unpinned)}{fix}"
    assert not mismatched, f"constraints.txt differs from the tested environment: {mismatched}{fix}"


def test_setup_and_conda_environment_use_the_constraints():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '-c "$REPO/constraints.txt"' in setup and '"${PIN[@]}" -e ".[$EXTRAS]"' in setup
    assert "- -c constraints.txt" in (ROOT / "environment.yml").read_text()
    pins = _pins()
    assert pins["torch"] == "2.13.0" and "transformers" in pins and "gymnasium" in pins and "jupyter-book" in pins
