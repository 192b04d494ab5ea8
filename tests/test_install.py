"""A non-editable install carries its defaults (issue 9, finding 12).

config/callassist.toml is the documented file in the repository; the package reads its
copy, callassist/defaults.toml (package data). They must not drift. The real check builds
the project into a fresh virtual environment (`pip install .`, no -e) and runs commands
from a directory that has nothing to do with the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path


from callassist.config import DEFAULT_FILE, DOCUMENTED_FILE, PROJECT_ROOT

# What `pip install .` needs from the checkout (the rest, tests and benchmarks, is not packaged).
SOURCE_ITEMS = ("pyproject.toml", "README.md", "callassist", "ari_app", "asr", "prompts", "agent_ui", "config")


def test_packaged_defaults_are_the_documented_file():
    assert DEFAULT_FILE.parent.name == "callassist", "the defaults are read from inside the package"
    assert DEFAULT_FILE.read_bytes() == DOCUMENTED_FILE.read_bytes(), (
        "callassist/defaults.toml differs from config/callassist.toml: edit the documented file, "
        "then `cp config/callassist.toml callassist/defaults.toml`")


def test_non_editable_install_runs_from_anywhere(tmp_path):
    # A copy of the sources, so the build writes nothing into the checkout (build/, egg-info).
    source = tmp_path / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for item in SOURCE_ITEMS:
        origin = PROJECT_ROOT / item
        if origin.is_dir():
            shutil.copytree(origin, source / item, ignore=ignore)
        else:
            shutil.copy2(origin, source / item)
    venv = tmp_path / "v"
    # --system-site-packages: the dependencies are the ones already installed (no network).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME") and not key.startswith("CALLASSIST_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The wheel is built as `pip install .` builds it: in an isolated build environment with
    # the setuptools pyproject.toml asks for (the one installed here may be older), from the
    # configured package index; then it is installed into the venv without any index.
    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(wheels.glob("callassist-*.whl"))
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel)],
                               env=env, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "callassist"), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import callassist.config as c; print(c.DEFAULT_FILE)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv), f"imported from {where.stdout}, not the install"

    check = run("config", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: defaults;"), check.stdout
    assert f"data: {tmp_path / 'xdg' / 'callassist'} " in check.stdout

    helped = run("analyze", "--help")
    assert helped.returncode == 0 and "usage: callassist analyze" in helped.stdout, helped.stderr

    added = run("user", "add", "root", "--role", "admin")   # the store and its migrations are packaged too
    assert added.returncode == 1 and "CALLASSIST_PASSWORD" in added.stderr, added.stderr
    env["CALLASSIST_PASSWORD"] = "correct horse battery"
    added = run("user", "add", "root", "--role", "admin")
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "xdg" / "callassist" / "callassist.db").is_file()
    assert list(elsewhere.iterdir()) == [], "nothing written to the working directory"
