"""One data directory story (issue 9, finding 8): every command resolves [storage] data_dir
the same way, whatever the working directory; read-only commands create nothing; the
commands that use it say which one it is (users for serve, not the demo's)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from callassist.config import PROJECT_ROOT, load_config

PASSWORD = "correct horse battery"


def callassist(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "callassist", *args], capture_output=True, text=True,
                          env={**base, **env}, cwd=cwd, stdin=subprocess.DEVNULL, timeout=120)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_default_is_the_per_user_data_directory_from_any_working_directory(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    seen = set()
    for cwd in (tmp_path / "a", tmp_path / "b" / "c"):
        cwd.mkdir(parents=True)
        monkeypatch.chdir(cwd)
        seen.add(load_config(env={"XDG_DATA_HOME": str(xdg)}).data_dir)
    assert seen == {xdg / "callassist"}
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}).data_dir == Path.home() / ".local" / "share" / "callassist"


def test_relative_paths_are_relative_to_the_file_or_the_working_directory(tmp_path, monkeypatch):
    site = tmp_path / "etc" / "site.toml"
    site.parent.mkdir()
    site.write_text('[storage]\ndata_dir = "data"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(site, env={}).data_dir == tmp_path / "etc" / "data"
    env = {"CALLASSIST_STORAGE_DATA_DIR": "here"}
    assert load_config(env=env).data_dir == elsewhere / "here"
    assert load_config(site, env=env).data_dir == elsewhere / "here", "the environment wins"


def test_user_list_creates_nothing_and_names_the_directory(tmp_path):
    cwd, xdg = tmp_path / "somewhere", tmp_path / "xdg"
    cwd.mkdir()
    env = {"XDG_DATA_HOME": str(xdg)}
    data_dir = xdg / "callassist"
    listed = callassist("user", "list", cwd=cwd, env=env)
    assert listed.returncode != 0
    assert "Traceback" not in listed.stderr
    assert f"no callassist database in {data_dir}" in listed.stderr
    assert "callassist user add" in listed.stderr
    assert tree(tmp_path) == ["somewhere"], "neither ./var nor the data directory was created"

    # control: `user add` creates the data directory, and `user list` then lists from there
    added = callassist("user", "add", "lin", "--role", "supervisor", cwd=cwd,
                       env={**env, "CALLASSIST_PASSWORD": PASSWORD})
    assert added.returncode == 0, added.stderr
    assert (data_dir / "callassist.db").is_file()
    assert f"data directory {data_dir}" in added.stderr
    assert "log in to `callassist serve`" in added.stderr and str(data_dir / "demo") in added.stderr
    other = tmp_path / "other"
    other.mkdir()
    listed = callassist("user", "list", cwd=other, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "lin" in listed.stdout
    assert tree(other) == [], "nothing created in the working directory"
