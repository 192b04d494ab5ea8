"""`callassist serve` / `demo` start-up as a user sees it (issue 9, findings 7, 8, 10): real
subprocesses, the real Whisper model, real sockets.

- [asr] engine = "auto" (the default): no Vosk Chinese model means Whisper, in one log line;
  engine = "vosk" without the model is an error naming the lookup and `models install`;
- a web port in use says how to choose another;
- serve prints its data directory; the demo says its logins are its own.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asr.engine import ModelNotFoundError
from asr.models import find_model
from callassist.config import PROJECT_ROOT

pytestmark = pytest.mark.slow
START_DEADLINE = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_vosk_chinese_model() -> None:
    try:
        found = find_model("vosk", env={})
    except ModelNotFoundError:
        return
    pytest.skip(f"a Vosk Chinese model is installed here ({found}): no fallback to see")


class Running:
    """A callassist command with its output (stdout and stderr merged) read line by line."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str]) -> None:
        base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
                "PYTHONPATH": str(PROJECT_ROOT)}
        self.proc = subprocess.Popen([sys.executable, "-m", "callassist", *args], cwd=cwd,
                                     env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, needle: str, deadline: float = START_DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"exited ({self.proc.wait()}) before {needle!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no {needle!r} within {deadline} s:\n" + "\n".join(self.lines))

    def wait_until_serving(self) -> None:
        """Until serve's last start-up line: its signal handlers are installed right after it,
        with no await in between, so a SIGTERM from here on is a clean stop."""
        self.wait_for("callassist: no Asterisk configured")

    def finish(self) -> int:
        """Stop it as a service manager would, and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_serve_without_a_vosk_model_uses_whisper_and_says_so(tmp_path):
    no_vosk_chinese_model()
    data_dir, port = tmp_path / "data", free_port()
    serve = Running("serve", cwd=tmp_path,
                    env={"CALLASSIST_STORAGE_DATA_DIR": str(data_dir), "CALLASSIST_WEB_PORT": str(port)})
    try:
        assert serve.wait_for("callassist: data directory") == \
            f"callassist: data directory {data_dir} ([storage] data_dir or $CALLASSIST_STORAGE_DATA_DIR)"
        serve.wait_for(f"web app on http://127.0.0.1:{port}/")
        serve.wait_until_serving()
    finally:
        code = serve.finish()
    assert code == 0, "\n".join(serve.lines)
    fallback = [line for line in serve.lines if "no Vosk Chinese model found" in line]
    assert len(fallback) == 1 and "live calls use Whisper" in fallback[0], serve.lines
    assert (data_dir / "callassist.db").is_file()


def test_serve_with_engine_vosk_and_no_model_names_it_and_the_install_command(tmp_path):
    no_vosk_chinese_model()
    serve = Running("serve", cwd=tmp_path, env={"CALLASSIST_STORAGE_DATA_DIR": str(tmp_path / "data"),
                                               "CALLASSIST_WEB_PORT": str(free_port()), "CALLASSIST_ASR_ENGINE": "vosk"})
    code = serve.proc.wait(timeout=120)
    serve.wait_for("callassist: [asr] engine = 'vosk': No vosk model found", deadline=5)
    assert code == 2
    line = serve.lines[-1]
    assert f"{tmp_path}/models/" in line and "callassist models install" in line
    assert not any("Traceback" in x for x in serve.lines)


def test_port_in_use_says_how_to_choose_another(tmp_path):
    env = {"CALLASSIST_STORAGE_DATA_DIR": str(tmp_path / "data"), "CALLASSIST_ASR_ENGINE": "whisper"}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = Running("serve", cwd=tmp_path, env={**env, "CALLASSIST_WEB_PORT": str(port)})
        line = serve.wait_for("already in use")
        assert serve.proc.wait(timeout=60) == 2
        assert line == (f"callassist: the web app's address 127.0.0.1:{port} is already in use; choose another "
                        f"port with --port N, $CALLASSIST_WEB_PORT or [web] port in the configuration file")
        assert not any("Traceback" in x for x in serve.lines)
        # control, and the flag the message names: --port wins over the taken port of the environment
        other = free_port()
        serve = Running("serve", "--port", str(other), cwd=tmp_path, env={**env, "CALLASSIST_WEB_PORT": str(port)})
        try:
            serve.wait_for(f"web app on http://127.0.0.1:{other}/")
            serve.wait_until_serving()
        finally:
            assert serve.finish() == 0, serve.lines


def test_demo_says_its_logins_are_its_own_and_where_real_users_go(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    demo = Running("demo", cwd=tmp_path,
                   env={"CALLASSIST_STORAGE_DATA_DIR": str(data_dir), "CALLASSIST_WEB_PORT": str(port)})
    try:
        note = demo.wait_for("the demo logins below")
        demo.wait_for("demo login (agent): agent1 / ")
    finally:
        demo.finish()
    assert str(data_dir / "demo") in note and "callassist user add" in note and "callassist serve" in note
    assert f"(data in {data_dir})" in note
    assert f"callassist: data directory {data_dir / 'demo'} " in "\n".join(demo.lines)
