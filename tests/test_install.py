"""A non-editable install carries everything every role needs (issue 9, finding 12; issue 10).

config/callassist.toml is the documented file in the repository; the package reads its
copy, callassist/defaults.toml (package data). They must not drift. The real check builds
the project into a fresh virtual environment (`pip install .`, no -e) and runs commands
from a directory that has nothing to do with the checkout: the data files the playbook,
the matcher, the call reading, the techniques, the web app and the store load at run time
must come from the installed package. The systemd units of config/systemd/ are verified by
systemd-analyze, and the environment each one sets passes `callassist config check` with
the example cluster configuration.
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from callassist.config import DEFAULT_FILE, DOCUMENTED_FILE, PROJECT_ROOT

PACKAGES = ("callassist", "ari_app", "asr", "prompts", "agent_ui")
# What `pip install .` needs from the checkout (the rest, tests and benchmarks, is not packaged).
SOURCE_ITEMS = ("pyproject.toml", "README.md", *PACKAGES, "config")
# Files inside the package directories that are deliberately not installed (none today).
NOT_PACKAGED: frozenset[str] = frozenset()

SYSTEMD_DIR = PROJECT_ROOT / "config" / "systemd"
CLUSTER_EXAMPLE = PROJECT_ROOT / "config" / "cluster.example.toml"
INSTALLED_COMMAND = "/opt/callassist/venv/bin/callassist"
UNITS = {"callassist-web.service": "web", "callassist-worker@.service": "worker", "callassist-ari@.service": "ari"}
INSTANCES = {"callassist-web.service": "", "callassist-worker@.service": "1", "callassist-ari@.service": "pbx1"}

# Run inside the installed venv from an unrelated directory: loads what each role reads at
# run time and prints where every file came from.
LOAD_EVERYTHING = r"""
import json
from pathlib import Path

import agent_ui.app as app
import agent_ui.migrations as migrations
import agent_ui.views.render as render
import callassist.config as config
import callassist.sentiment as sentiment
import prompts.call_reading as call_reading
import prompts.evaluate as evaluate
import prompts.intent as intent
import prompts.playbook as playbook
import prompts.techniques as techniques
from prompts.matcher import Matcher

book = playbook.load_playbook()
matcher = Matcher(book, intent=intent.IntentModel.load())
hits = matcher.match("你们再不退钱我就去工信部投诉，还要找律师起诉你们", "customer")
lines = [{"speaker": "customer", "text": "你们这个宽带三天两头断网，我要投诉", "start": 0.0, "end": 3.0},
         {"speaker": "agent", "text": "非常抱歉给您带来不便，我马上帮您查", "start": 3.0, "end": 6.0},
         {"speaker": "customer", "text": "不退钱我就去工信部投诉你们", "start": 6.0, "end": 9.0}]
reading = call_reading.read_call(lines, types=call_reading.load_call_types(),
                                 model=call_reading.load_reading_model())
files = {"defaults": config.DEFAULT_FILE, "playbook": playbook.PLAYBOOK_FILE,
         "citations": playbook.CITATIONS_FILE, "intent model": intent.MODEL_FILE,
         "call types": call_reading.TYPES_FILE, "call reading model": call_reading.MODEL_FILE,
         "techniques": techniques.TECHNIQUES_FILE, "sentiment lexicon": sentiment.LEXICON_FILE,
         "labelled calls": evaluate.CALLS_DEV_FILE, "static": app.STATIC_DIR / "js",
         "templates": render.TEMPLATES / "agent.html", "migrations": Path(migrations.__file__)}
print(json.dumps({"files": {name: str(path) for name, path in files.items()},
                  "missing": [name for name, path in files.items() if not path.exists()],
                  "categories": len(book.categories), "hits": sorted(h.category.id for h in hits),
                  "complaint_type": reading.complaint_type.key,
                  "techniques": len(techniques.load_techniques().techniques),
                  "lexicon": bool(sentiment.load_lexicon())}))
"""


@dataclass(frozen=True)
class Install:
    root: Path
    source: Path
    wheel: Path
    venv: Path
    elsewhere: Path
    env: dict[str, str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "callassist"), *args], cwd=self.elsewhere,
                              env=env or self.env, capture_output=True, text=True, timeout=300)

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / "python"), "-c", code], cwd=self.elsewhere,
                              env=self.env, capture_output=True, text=True, timeout=300)


def _source_files() -> list[str]:
    """The package directories' files as the repository has them: tracked, plus new files not
    ignored (a helper's new migration counts before it is committed)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *PACKAGES],
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    if listed.returncode != 0:        # not a git checkout (an unpacked sdist): every file there
        return sorted(str(path.relative_to(PROJECT_ROOT)) for package in PACKAGES
                      for path in (PROJECT_ROOT / package).rglob("*")
                      if path.is_file() and "__pycache__" not in path.parts)
    return sorted(name for name in listed.stdout.splitlines() if (PROJECT_ROOT / name).is_file())


@pytest.fixture(scope="module")
def install(tmp_path_factory: pytest.TempPathFactory) -> Install:
    root = tmp_path_factory.mktemp("install")
    # A copy of the sources, so the build writes nothing into the checkout (build/, egg-info).
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for item in SOURCE_ITEMS:
        origin = PROJECT_ROOT / item
        if origin.is_dir():
            shutil.copytree(origin, source / item, ignore=ignore)
        else:
            shutil.copy2(origin, source / item)
    venv = root / "v"
    # --system-site-packages: the dependencies are the ones already installed (no network).
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "PYTHONHOME") and not key.startswith("CALLASSIST_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # The wheel is built as `pip install .` builds it: in an isolated build environment with
    # the setuptools pyproject.toml asks for (the one installed here may be older), from the
    # configured package index; then it is installed into the venv without any index.
    wheels = root / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(source)],
                           env=env, capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheel = next(wheels.glob("callassist-*.whl"))
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-deps", "--no-index", str(wheel)],
                               env=env, capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env["XDG_DATA_HOME"] = str(root / "xdg")
    return Install(root, source, wheel, venv, elsewhere, env)


def test_packaged_defaults_are_the_documented_file():
    assert DEFAULT_FILE.parent.name == "callassist", "the defaults are read from inside the package"
    assert DEFAULT_FILE.read_bytes() == DOCUMENTED_FILE.read_bytes(), (
        "callassist/defaults.toml differs from config/callassist.toml: edit the documented file, "
        "then `cp config/callassist.toml callassist/defaults.toml`")


def test_the_wheel_holds_every_file_of_the_packages(install: Install):
    with zipfile.ZipFile(install.wheel) as wheel:
        packaged = set(wheel.namelist())
    files = _source_files()
    assert "prompts/call_reading_model.npz" in files and "callassist/cli.py" in files   # the listing works
    # Only files the build saw (other work in the checkout may add files while this runs).
    missing = [name for name in files
               if (install.source / name).is_file() and name not in packaged and name not in NOT_PACKAGED]
    assert missing == [], (f"not in the wheel: {missing}; add them to [tool.setuptools.package-data] "
                           "in pyproject.toml (or to NOT_PACKAGED here if they are not needed at run time)")


def test_non_editable_install_runs_from_anywhere(install: Install):
    where = install.python("import callassist.config as c; print(c.DEFAULT_FILE)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(install.venv), f"imported from {where.stdout}, not the install"

    helped = install.run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "serve" in helped.stdout and "config" in helped.stdout, helped.stdout

    check = install.run("config", "check")
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("ok: defaults;"), check.stdout
    assert f"data: {install.root / 'xdg' / 'callassist'} " in check.stdout

    helped = install.run("analyze", "--help")
    assert helped.returncode == 0 and "usage: callassist analyze" in helped.stdout, helped.stderr

    added = install.run("user", "add", "root", "--role", "admin")   # the store and its migrations are packaged too
    assert added.returncode == 1 and "CALLASSIST_PASSWORD" in added.stderr, added.stderr
    added = install.run("user", "add", "root", "--role", "admin",
                        env={**install.env, "CALLASSIST_PASSWORD": "correct horse battery"})
    assert added.returncode == 0, added.stderr
    assert (install.root / "xdg" / "callassist" / "callassist.db").is_file()
    assert list(install.elsewhere.iterdir()) == [], "nothing written to the working directory"


def test_installed_package_loads_every_role_data_file(install: Install):
    loaded = install.python(LOAD_EVERYTHING)
    assert loaded.returncode == 0, loaded.stderr
    report = json.loads(loaded.stdout)
    assert report["missing"] == [], report
    outside = {name: path for name, path in report["files"].items() if not Path(path).is_relative_to(install.venv)}
    assert outside == {}, f"read from outside the install: {outside}"
    # The data is real, not an empty stand-in: the matcher fires, the reading model reads.
    assert report["categories"] > 10 and "regulator_complaint" in report["hits"], report
    assert report["complaint_type"] and report["techniques"] >= 5 and report["lexicon"], report


# -- deployment: the example cluster configuration and the systemd units ---------------------

def _unit(name: str) -> configparser.RawConfigParser:
    # strict=False: Environment= and EnvironmentFile= repeat; the last one wins here, the
    # list is read from the file's lines (_unit_environment).
    parser = configparser.RawConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str      # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(SYSTEMD_DIR / name, encoding="utf-8")
    return parser


def _unit_environment(name: str, instance: str) -> dict[str, str]:
    """The Environment= assignments of a unit, with %i, %H and %C expanded as systemd would."""
    expand: Callable[[str], str] = lambda value: (value.replace("%i", instance).replace("%H", "node1")
                                                  .replace("%C", "/var/cache"))
    env: dict[str, str] = {}
    for line in (SYSTEMD_DIR / name).read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key] = expand(value)
    return env


@pytest.mark.parametrize("name", sorted(UNITS))
def test_each_unit_runs_serve_with_its_role_as_the_dedicated_user(name: str):
    unit = _unit(name)
    service = unit["Service"]
    assert service["ExecStart"].split() == [INSTALLED_COMMAND, "--config", "/etc/callassist/callassist.toml", "serve"]
    assert _unit_environment(name, "1")["CALLASSIST_CLUSTER_ROLE"] == UNITS[name]
    assert service["User"] == "callassist" and service["Restart"] == "always"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes" and "/srv/callassist" in service["ReadWritePaths"]
    assert int(service["LimitNOFILE"]) >= 65536
    if name == "callassist-ari@.service":
        assert service["EnvironmentFile"] == "/etc/callassist/ari-%i.env"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed (Debian: systemd)")
def test_systemd_analyze_verifies_the_units(tmp_path: Path):
    # verify checks that ExecStart's program exists: the copies point at a stand-in for the
    # installed command; everything else is the file as shipped. Templates are verified as
    # an instance (worker@1, ari@pbx1), as systemctl would load them.
    command = tmp_path / "callassist"
    command.write_text("#!/bin/sh\n")
    command.chmod(0o755)
    paths = []
    for name, instance in INSTANCES.items():
        text = (SYSTEMD_DIR / name).read_text(encoding="utf-8")
        assert INSTALLED_COMMAND in text
        path = tmp_path / name.replace("@.", f"@{instance}.")
        path.write_text(text.replace(INSTALLED_COMMAND, str(command)), encoding="utf-8")
        paths.append(str(path))
    verified = subprocess.run(["systemd-analyze", "verify", *paths], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    # systemd-analyze exits 0 on an unknown key or a bad value ("ignoring"): any output is a problem.
    assert verified.returncode == 0 and verified.stdout + verified.stderr == "", verified.stdout + verified.stderr


@pytest.mark.parametrize("name", sorted(UNITS))
def test_the_example_cluster_config_checks_in_each_unit_environment(install: Install, name: str):
    env = {**install.env, **_unit_environment(name, INSTANCES[name] or "1")}
    if UNITS[name] == "ari":     # what /etc/callassist/ari-pbx1.env would add (config/systemd/ari.env.example)
        example = (SYSTEMD_DIR / "ari.env.example").read_text(encoding="utf-8").splitlines()
        env.update(line.split("=", 1) for line in example if line and not line.startswith("#"))  # type: ignore[misc]
    check = install.run("config", "check", str(CLUSTER_EXAMPLE), env=env)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"ok: {CLUSTER_EXAMPLE};") and "data: /srv/callassist " in check.stdout, check.stdout
    if UNITS[name] == "ari":
        assert "Asterisk: http://pbx1.example.internal:8088;" in check.stdout, check.stdout
    # The environment is read: the same role without the file's bus is refused.
    alone = install.run("config", "check", env=env)
    assert alone.returncode == 1 and "needs [cluster] bus_url" in alone.stderr, alone.stderr
