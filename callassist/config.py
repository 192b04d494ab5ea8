"""Configuration: defaults from config/callassist.toml, a user file, then the environment.

The default file is the one place each default lives; the dataclasses below only
say what type and range each key has. Every problem is reported as
`FILE: [section] key: problem`, and all problems are reported at once.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_type_hints

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# The documented defaults live in the repository as config/callassist.toml; the package
# carries a byte-identical copy (tests/test_install.py keeps them equal), so an installed
# callassist (not only an editable one) has its defaults.
DOCUMENTED_FILE = PROJECT_ROOT / "config" / "callassist.toml"
DEFAULT_FILE = Path(__file__).resolve().parent / "defaults.toml"
ENV_PREFIX = "CALLASSIST_"
DATA_DIR_ENV = ENV_PREFIX + "STORAGE_DATA_DIR"
DATA_DIR_SETTING = f"[storage] data_dir or ${DATA_DIR_ENV}"
# CALLASSIST_* variables that are not configuration keys but are read elsewhere; any other
# CALLASSIST_* name is most likely a typo of a key and is reported (see unknown_env_vars).
OTHER_ENV_VARS = {
    "CALLASSIST_CONFIG": "the configuration file",
    "CALLASSIST_VOSK_MODEL": "Vosk model directory (asr.models)",
    "CALLASSIST_WHISPER_MODEL": "Whisper model directory (asr.models)",
    "CALLASSIST_VOSK_MODELS_URL": "where `models install` downloads from (asr.install)",
    "CALLASSIST_CACHE": "cache of assembled models (asr.models)",
    "CALLASSIST_TTS_MODEL": "the test voice (callassist.testcalls)",
    "CALLASSIST_PASSWORD": "password for `user add` (agent_ui.users_cli)",
    "CALLASSIST_SCREENSHOTS_DIR": "where the browser tests save screenshots",
    "CALLASSIST_REQUIRE_ASTERISK": "the telephony tests fail instead of skipping (tests/asterisk_fixture.py)",
    "CALLASSIST_SHARED_ASTERISK": "the Asterisk tarball the tests start (tests/asterisk_fixture.py)",
}
TEST_ENV_PREFIX = "CALLASSIST_TEST_"     # the test suite's own settings (tests/)


class ConfigError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def _one_of(*choices: str):
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))}"
    return check


def _between(low: float, high: float):
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


def _checked(check: Callable[[Any], str | None]) -> dict[str, Any]:
    """A field's metadata: the check load_config applies to its value (field(metadata=...),
    so that type checkers see a field without a default)."""
    return {"check": check}


@dataclass(frozen=True)
class StorageConfig:
    data_dir: str
    retention_days: int = field(metadata=_checked(_between(0, 36500)))
    database_url: str            # "" = SQLite in data_dir; postgresql://... = a shared PostgreSQL


@dataclass(frozen=True)
class AsrConfig:
    engine: str = field(metadata=_checked(_one_of("auto", "vosk", "whisper")))
    vosk_model: str
    whisper_model: str
    whisper_compute_type: str = field(metadata=_checked(_one_of("int8", "int8_float32", "float32")))
    decode_threads: int = field(metadata=_checked(_between(1, 64)))
    post_call_engine: str = field(metadata=_checked(_one_of("", "vosk", "whisper")))
    biasing: bool


@dataclass(frozen=True)
class MatcherConfig:
    pinyin: bool
    intent: bool
    threshold: float = field(metadata=_checked(_between(50, 100)))


@dataclass(frozen=True)
class AriConfig:
    url: str
    username: str
    password: str
    app: str
    request_timeout: float = field(metadata=_checked(_between(0.1, 120)))
    max_connections: int = field(metadata=_checked(_between(1, 100)))
    reconnect_initial_delay: float = field(metadata=_checked(_between(0.01, 60)))
    reconnect_max_delay: float = field(metadata=_checked(_between(0.1, 600)))


@dataclass(frozen=True)
class RtpConfig:
    bind_host: str
    advertise_host: str
    port_min: int = field(metadata=_checked(_between(1024, 65535)))
    port_max: int = field(metadata=_checked(_between(1024, 65535)))
    jitter_ms: int = field(metadata=_checked(_between(0, 1000)))
    stall_timeout: float = field(metadata=_checked(_between(0.1, 600)))


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool
    format: str = field(metadata=_checked(_one_of("wav", "flac")))


@dataclass(frozen=True)
class CueConfig:
    enabled: bool
    media: str
    duration_ms: int = field(metadata=_checked(_between(20, 5000)))


@dataclass(frozen=True)
class AnalyticsConfig:
    min_silence_s: float = field(metadata=_checked(_between(0.5, 600)))
    min_talk_over_s: float = field(metadata=_checked(_between(0.05, 10)))
    baseline_s: float = field(metadata=_checked(_between(1, 600)))


@dataclass(frozen=True)
class WebConfig:
    host: str
    port: int = field(metadata=_checked(_between(0, 65535)))
    tls_cert: str
    tls_key: str
    login_attempts_per_minute: int = field(metadata=_checked(_between(1, 1000)))
    adherence_window: float = field(metadata=_checked(_between(1, 600)))
    idle_timeout: float = field(metadata=_checked(_between(0.1, 3600)))
    request_timeout: float = field(metadata=_checked(_between(0.1, 3600)))
    websocket_heartbeat: float = field(metadata=_checked(_between(0.1, 300)))
    websockets_per_user: int = field(metadata=_checked(_between(1, 1000)))
    metrics_remote: bool = False


ROLES = ("all", "ari", "worker", "web")


def _roles(value: str) -> str | None:
    names = [name.strip() for name in value.split(",")]
    bad = [name for name in names if name not in ROLES]
    return f"must be a comma-separated list of {', '.join(ROLES)}" if bad or not value.strip() else None


@dataclass(frozen=True)
class ClusterConfig:
    role: str = field(metadata=_checked(_roles))
    bus_url: str
    node_id: str
    worker_capacity: int = field(metadata=_checked(_between(1, 1000)))
    heartbeat_s: float = field(metadata=_checked(_between(0.1, 60)))
    worker_timeout_s: float = field(metadata=_checked(_between(0.3, 600)))

    @property
    def roles(self) -> frozenset[str]:
        """The roles this process runs; "all" is every role on the in-process bus."""
        names = {name.strip() for name in self.role.split(",")}
        return frozenset(ROLES[1:]) if "all" in names else frozenset(names)

    @property
    def distributed(self) -> bool:
        return bool(self.bus_url)


@dataclass(frozen=True)
class Config:
    storage: StorageConfig
    asr: AsrConfig
    matcher: MatcherConfig
    ari: AriConfig
    rtp: RtpConfig
    recording: RecordingConfig
    cue: CueConfig
    analytics: AnalyticsConfig
    web: WebConfig
    cluster: ClusterConfig
    source: str = "defaults"
    # Not errors for every command (other tools' CALLASSIST_* variables may be about), but
    # `config check` fails on them and serve/demo log them.
    warnings: tuple[str, ...] = ()

    @property
    def data_dir(self) -> Path:
        """Absolute: load_config resolves [storage] data_dir once (see resolve_data_dir)."""
        return Path(self.storage.data_dir)


SECTIONS: dict[str, type] = {f.name: get_type_hints(Config)[f.name]
                             for f in fields(Config) if f.name not in ("source", "warnings")}


def _read_toml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(f"{path}: file not found")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML: {exc}")
    except OSError as exc:
        problems.append(f"{path}: cannot read: {exc.strerror}")
    return {}


def default_data_dir(env: Mapping[str, str]) -> Path:
    """Where data lives when [storage] data_dir is empty: the per-user data directory
    ($XDG_DATA_HOME/callassist, else ~/.local/share/callassist), the same from any
    working directory."""
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "callassist"


def resolve_data_dir(value: str, origin: str, env: Mapping[str, str]) -> Path:
    """[storage] data_dir as an absolute path: empty is default_data_dir; a relative path
    is relative to the file that set it, or to the working directory when it came from
    the environment (`origin` "$NAME")."""
    if not value:
        return default_data_dir(env)
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = Path.cwd() if origin.startswith("$") else Path(origin).resolve().parent
        path = base / path
    return Path(os.path.normpath(path))


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """A problem line for each CALLASSIST_* variable nobody reads, with the closest known
    name (a typo such as CALLASSIST_WEB_PROT otherwise changes nothing, silently)."""
    known = {f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
             for section, cls in SECTIONS.items() for f in fields(cls)} | set(OTHER_ENV_VARS)
    problems = []
    for name in sorted(env):
        if name.startswith(ENV_PREFIX) and name not in known and not name.startswith(TEST_ENV_PREFIX):
            # compare what follows the common prefix, or every name looks alike; a key
            # without its section (CALLASSIST_DATA_DIR) is matched by its ending
            tail, tails = name.removeprefix(ENV_PREFIX), sorted(k.removeprefix(ENV_PREFIX) for k in known)
            close = [t for t in tails if t.endswith("_" + tail)][:1] or \
                difflib.get_close_matches(tail, tails, n=1, cutoff=0.7)
            hint = f"; did you mean ${ENV_PREFIX}{close[0]}?" if close else \
                f" (settings are {ENV_PREFIX}<SECTION>_<KEY>, e.g. {ENV_PREFIX}WEB_PORT)"
            problems.append(f"${name}: unknown setting, ignored{hint}")
    return problems


def _coerce(raw: Any, kind: type, from_env: bool) -> Any:
    """Return the value as `kind`, or raise ValueError saying what was expected."""
    if from_env:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"must be true or false, got {raw!r}")
        try:
            return kind(raw)
        except ValueError:
            raise ValueError(f"must be a{'n integer' if kind is int else ' number'}, got {raw!r}") from None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is bool and not isinstance(raw, bool) or kind is not bool and (
            isinstance(raw, bool) or not isinstance(raw, kind)):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        raise ValueError(f"must be {names[kind]}, got {raw!r}")
    return raw


def load_config(path: str | os.PathLike | None = None,
                env: dict[str, str] | None = None) -> Config:
    """Defaults, overlaid by `path` (or $CALLASSIST_CONFIG), overlaid by the environment."""
    env = dict(os.environ if env is None else env)
    problems: list[str] = []
    merged: dict[str, dict[str, tuple[Any, str]]] = {}

    def overlay(data: dict[str, Any], origin: str) -> None:
        for section, values in data.items():
            if section not in SECTIONS:
                problems.append(f"{origin}: [{section}]: unknown section "
                                f"(known: {', '.join(SECTIONS)})")
                continue
            if not isinstance(values, dict):
                problems.append(f"{origin}: {section}: must be a table [{section}]")
                continue
            known = {f.name for f in fields(SECTIONS[section])}
            for key, value in values.items():
                if key not in known:
                    problems.append(f"{origin}: [{section}] {key}: unknown key "
                                    f"(known: {', '.join(sorted(known))})")
                else:
                    merged.setdefault(section, {})[key] = (value, origin)

    overlay(_read_toml(DEFAULT_FILE, problems), str(DEFAULT_FILE))
    user_file = path or env.get(ENV_PREFIX + "CONFIG")
    if user_file:
        overlay(_read_toml(Path(user_file), problems), str(user_file))
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        for section, cls in SECTIONS.items():
            prefix = f"{ENV_PREFIX}{section.upper()}_"
            if name.startswith(prefix):
                key = name[len(prefix):].lower()
                if key in {f.name for f in fields(cls)}:
                    merged.setdefault(section, {})[key] = (value, f"${name}")

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in merged.get(section, {}):
                problems.append(f"{DEFAULT_FILE}: [{section}] {f.name}: missing default")
                continue
            raw, origin = merged[section][f.name]
            try:
                value = _coerce(raw, hints[f.name], origin.startswith("$"))
                check = f.metadata.get("check")
                if check and (why := check(value)):
                    raise ValueError(f"{why}, got {value!r}")
                values[f.name] = value
            except ValueError as exc:
                problems.append(f"{origin}: [{section}] {f.name}: {exc}")
        if len(values) == len(fields(cls)):
            built[section] = cls(**values)
    if "rtp" in built and built["rtp"].port_min > built["rtp"].port_max:
        origin = merged["rtp"]["port_min"][1]
        problems.append(f"{origin}: [rtp] port_min: must not exceed port_max")
    if "ari" in built and built["ari"].url and not built["ari"].url.startswith(("http://", "https://")):
        problems.append(f"{merged['ari']['url'][1]}: [ari] url: must start with http:// or https://")
    if "web" in built and bool(built["web"].tls_cert) != bool(built["web"].tls_key):
        problems.append(f"{merged['web']['tls_cert'][1]}: [web] tls_cert/tls_key: set both or neither")
    if "cluster" in built and built["cluster"].roles != frozenset(ROLES[1:]) and not built["cluster"].bus_url:
        problems.append(f"{merged['cluster']['role'][1]}: [cluster] role: a role other than \"all\" "
                        f"needs [cluster] bus_url (redis://host:6379/0): the roles talk over the bus")
    if "cluster" in built and built["cluster"].bus_url and not built["cluster"].bus_url.startswith(
            ("redis://", "rediss://", "unix://")):
        problems.append(f"{merged['cluster']['bus_url'][1]}: [cluster] bus_url: must start with redis://, "
                        f"rediss:// or unix://")
    if "storage" in built and built["storage"].database_url and not built["storage"].database_url.startswith(
            ("postgresql://", "postgres://")):
        problems.append(f"{merged['storage']['database_url'][1]}: [storage] database_url: must start with "
                        f"postgresql:// (empty: SQLite in data_dir)")
    if "storage" in built:
        raw, origin = merged["storage"]["data_dir"]
        built["storage"] = dataclasses.replace(
            built["storage"], data_dir=str(resolve_data_dir(built["storage"].data_dir, origin, env)))
    if problems:
        raise ConfigError(problems)
    return Config(**built, source=str(user_file or "defaults"), warnings=tuple(unknown_env_vars(env)))
