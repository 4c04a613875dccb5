"""The built wheel alone is a working app: it carries the workflow (Snakefile, rules, schemas,
report captions, envs) and the default config, and `deepmir run` from it plans the demo away
from any checkout."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_carries_the_workflow_and_runs_without_the_checkout(tmp_path):
    # built from a copy of what the wheel is made of (setuptools writes build/ beside the sources)
    src = tmp_path / "src-tree"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        src.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    for name in ("src", "workflow", "config"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                          "-w", str(tmp_path / "dist"), "-q"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("deepmir-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"deepmir/{p.relative_to(ROOT).as_posix()}" for d in ("workflow", "config")
               for p in (ROOT / d).rglob("*") if p.is_file() and p.suffix != ".md"}
    assert "deepmir/workflow/Snakefile" in shipped and len(shipped) > 40
    assert shipped <= names, sorted(shipped - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = dict(os.environ, PYTHONPATH=str(site))
    where = subprocess.run([sys.executable, "-c", "import deepmir; print(deepmir.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    assert where.stdout.strip() == str(site / "deepmir" / "__init__.py")
    run = subprocess.run([sys.executable, "-m", "deepmir.cli", "run", "--demo", str(tmp_path / "out"), "group",
                          "--cores", "1", "--", "-n", "--quiet", "rules"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "learn_train" in run.stdout and "derivatives_participant" in run.stdout
    text = run.stdout + run.stderr
    assert f"-s {site}/deepmir/workflow/Snakefile" in text and f"--configfile {site}/deepmir/config/config.yaml" in text
    for d in ("workflow", "config", "src"):                    # nothing came from the checkout
        assert f"{ROOT}/{d}" not in text
