"""Release hygiene: one version (deepmir.__version__) that the command line and the installed
metadata report, a LICENSE matching the declared one, a changelog naming the version."""
import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import deepmir

ROOT = Path(__file__).resolve().parents[2]


def test_one_version_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    out = subprocess.run([str(Path(sys.executable).parent / "deepmir"), "--version"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"deepmir {deepmir.__version__}"
    assert importlib.metadata.version("deepmir") == deepmir.__version__
    assert f"## [{deepmir.__version__}]" in (ROOT / "CHANGELOG.md").read_text()


def test_license_matches_the_declared_one():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
