"""Configuration: defaults, file and environment overrides, errors that name file, key and problem."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from callassist.config import DEFAULT_FILE, PROJECT_ROOT, ConfigError, load_config


def test_defaults_load_and_are_documented():
    config = load_config(env={})
    assert config.ari.url == "" and config.asr.engine == "auto"
    assert config.web.host == "127.0.0.1", "binds to loopback unless told otherwise"
    text = DEFAULT_FILE.read_text(encoding="utf-8")
    for section in ("storage", "asr", "matcher", "ari", "rtp", "recording", "cue", "web"):
        assert f"[{section}]" in text


def test_file_then_environment_override(tmp_path):
    path = tmp_path / "site.toml"
    path.write_text('[ari]\nurl = "http://10.0.0.5:8088"\npassword = "x"\n[rtp]\nport_min = 40100\n')
    config = load_config(path, env={"CALLASSIST_RTP_PORT_MIN": "40200", "CALLASSIST_MATCHER_PINYIN": "off"})
    assert config.ari.url == "http://10.0.0.5:8088"
    assert config.rtp.port_min == 40200
    assert config.matcher.pinyin is False
    assert config.source == str(path)


@pytest.mark.parametrize("body, expected", [
    ('[rtp]\nport_min = "many"\n', "[rtp] port_min: must be an integer"),
    ("[rtp]\nport_min = 41000\nport_max = 40000\n", "[rtp] port_min: must not exceed port_max"),
    ('[asr]\nengine = "kaldi"\n', "[asr] engine: must be one of 'auto', 'vosk', 'whisper'"),
    ('[asr]\nmodel = "x"\n', "[asr] model: unknown key"),
    ('[telephony]\nx = 1\n', "[telephony]: unknown section"),
    ('[ari]\nurl = "127.0.0.1:8088"\n', "[ari] url: must start with http://"),
    ('[web]\ntls_cert = "a.pem"\n', "[web] tls_cert/tls_key: set both or neither"),
    ("[matcher]\nthreshold = 150\n", "[matcher] threshold: must be between 50 and 100"),
    ("[rtp\nport_min = 1\n", "not valid TOML"),
])
def test_errors_name_the_file_key_and_problem(tmp_path, body, expected):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert any(str(path) in p and expected in p for p in info.value.problems), info.value.problems


def test_every_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[asr]\nengine = "x"\ndecode_threads = 0\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={"CALLASSIST_WEB_PORT": "eighty"})
    assert len(info.value.problems) == 3
    assert any(p.startswith("$CALLASSIST_WEB_PORT: [web] port") for p in info.value.problems)


def test_config_check_command(tmp_path):
    good = subprocess.run([sys.executable, "-m", "callassist", "config", "check"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert good.returncode == 0 and good.stdout.startswith("ok:")
    bad = tmp_path / "bad.toml"
    bad.write_text("[rtp]\nport_max = 70000\n")
    proc = subprocess.run([sys.executable, "-m", "callassist", "config", "check", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert f"{bad}: [rtp] port_max: must be between 1024 and 65535" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- issue 9, finding 10: what `config check` used to wave through ------------------------

def config_check(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
            "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "callassist", "config", "check", *args],
                          capture_output=True, text=True, env={**base, **env}, cwd=cwd, timeout=120)


def test_mistyped_environment_variable_is_reported_with_the_likely_name():
    config = load_config(env={"CALLASSIST_WEB_PROT": "9090", "CALLASSIST_DATA_DIR": "/srv/x",
                              "CALLASSIST_TEST_ARI_URL": "http://x", "CALLASSIST_PASSWORD": "p"})
    assert config.web.port == 8080                 # ignored, as before ...
    assert config.warnings == (                    # ... but no longer silently
        "$CALLASSIST_DATA_DIR: unknown setting, ignored; did you mean $CALLASSIST_STORAGE_DATA_DIR?",
        "$CALLASSIST_WEB_PROT: unknown setting, ignored; did you mean $CALLASSIST_WEB_PORT?")
    proc = config_check(env={"CALLASSIST_WEB_PROT": "9090"})
    assert proc.returncode == 1, proc.stdout
    assert "error: $CALLASSIST_WEB_PROT: unknown setting, ignored; did you mean $CALLASSIST_WEB_PORT?" \
        in proc.stderr
    good = config_check(env={"CALLASSIST_WEB_PORT": "9090"})    # control: the right name is fine
    assert good.returncode == 0 and ":9090" in good.stdout, good.stderr


def test_engine_vosk_without_a_vosk_model_fails_and_says_where_it_looked(tmp_path):
    from asr.engine import ModelNotFoundError
    from asr.models import find_model
    try:
        found = find_model("vosk")
    except ModelNotFoundError:
        found = None
    if found is not None:
        pytest.skip(f"a Vosk Chinese model is installed here ({found})")
    proc = config_check(env={"CALLASSIST_ASR_ENGINE": "vosk"}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout
    line = next(line for line in proc.stderr.splitlines() if "engine = 'vosk'" in line)
    assert "No vosk model found. Looked in:" in line and f"{tmp_path}/models/" in line
    assert "callassist models install" in line
    auto = config_check(env={}, cwd=tmp_path)     # control: the default falls back and says so
    assert auto.returncode == 0, auto.stderr
    assert "engine: auto -> whisper (no Vosk Chinese model found)" in auto.stdout


def test_cluster_roles_need_a_bus_and_urls_are_checked(tmp_path):
    env = {"HOME": str(tmp_path)}
    single = load_config(env=env)
    assert single.cluster.roles == {"ari", "worker", "web"} and not single.cluster.distributed
    node = load_config(env={**env, "CALLASSIST_CLUSTER_ROLE": "web, worker",
                            "CALLASSIST_CLUSTER_BUS_URL": "redis://10.0.0.5:6379/0",
                            "CALLASSIST_STORAGE_DATABASE_URL": "postgresql://ca@10.0.0.6/callassist"})
    assert node.cluster.roles == {"web", "worker"} and node.cluster.distributed
    for bad, expected in ((("CALLASSIST_CLUSTER_ROLE", "worker"),), "needs [cluster] bus_url"), \
                         ((("CALLASSIST_CLUSTER_ROLE", "asr"),), "comma-separated list"), \
                         ((("CALLASSIST_CLUSTER_BUS_URL", "nats://x:4222"),), "must start with redis://"), \
                         ((("CALLASSIST_STORAGE_DATABASE_URL", "mysql://x/db"),), "must start with postgresql://"):
        with pytest.raises(ConfigError) as caught:
            load_config(env={**env, **dict(bad)})
        assert expected in str(caught.value)


def test_serve_role_flag_is_checked_like_the_file(tmp_path):
    from callassist.serve import with_role
    config = load_config(env={"HOME": str(tmp_path), "CALLASSIST_CLUSTER_BUS_URL": "redis://127.0.0.1:6379/0"})
    assert with_role(config, "ari").cluster.roles == {"ari"}
    with pytest.raises(ConfigError, match="comma-separated"):
        with_role(config, "controller")
    with pytest.raises(ConfigError, match="needs \\[cluster\\] bus_url"):
        with_role(load_config(env={"HOME": str(tmp_path)}), "web")
