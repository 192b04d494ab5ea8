"""Real Redis and PostgreSQL servers for the tests, from Debian's packages (redis-server,
postgresql-15), started by the tests themselves in temporary directories on free ports.

`redis_server` and `postgres_server` are session fixtures; each test that wants a clean
slate asks for `redis_url` (a database of its own, flushed) or `postgres_url` (a database
of its own, created from scratch). Missing binaries skip the tests with the reason on a
developer's machine; in CI (CI=true or CALLASSIST_REQUIRE_ASTERISK=1) they are failures.

PostgreSQL refuses to run as root: as root the server runs as Debian's `postgres` user.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin")
START_TIMEOUT = 30.0


def _required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("CALLASSIST_REQUIRE_ASTERISK") == "1"


def _missing(what: str) -> None:
    if _required():
        pytest.fail(f"{what} (CI needs it: .ci/run installs it)")
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} while starting")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout:.0f} s")


@dataclass
class RedisServer:
    """redis-server on loopback, no persistence (the bus's durability is tested against a
    live server; a restart test would set appendonly)."""
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _databases: Iterator[int] = field(default_factory=lambda: itertools.cycle(range(1, 16)))

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--databases", "16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "redis-server")

    def url(self, database: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """A database of its own for one test, emptied first."""
        database = next(self._databases)
        subprocess.run(["redis-cli", "-p", str(self.port), "-n", str(database), "FLUSHDB"],
                       check=True, capture_output=True)
        return self.url(database)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@dataclass
class PostgresServer:
    """A PostgreSQL cluster of its own (initdb), on loopback with trust authentication."""
    directory: Path
    bin_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    def _as_server_user(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["runuser", "-u", "postgres", "--", *argv]

    def init(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        subprocess.run(self._as_server_user(
            [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"]), check=True, capture_output=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self._as_server_user(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
             "-c", "max_connections=200"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, "postgres")
        deadline = time.monotonic() + START_TIMEOUT
        while subprocess.run([str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                             capture_output=True).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not accept connections")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """SIGINT: PostgreSQL's fast shutdown (clients disconnected); SIGKILL: a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_url(self) -> str:
        """A new empty database for one test."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        subprocess.run([str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-q", "-c", f"CREATE DATABASE {name}"], check=True, capture_output=True)
        return self.url(name)


REDIS_MISSING = "redis-server not installed (Debian package redis-server)"
POSTGRES_MISSING = "PostgreSQL server not installed (Debian package postgresql)"


@contextlib.contextmanager
def running_redis(prefix: str = "callassist-redis-") -> Iterator[RedisServer]:
    """A redis-server in a temporary directory, stopped at the end (tests and benchmarks)."""
    if shutil.which("redis-server") is None:
        raise FileNotFoundError(REDIS_MISSING)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        _missing(REDIS_MISSING)
    with running_redis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.fresh_url()


def postgres_bin_dir() -> Path | None:
    return next((Path(d) for d in PG_BIN_DIRS if (Path(d) / "postgres").exists()), None)


@contextlib.contextmanager
def running_postgres(prefix: str = "callassist-pg-") -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of its own in a temporary directory, stopped at the end (tests
    and benchmarks)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(POSTGRES_MISSING)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.chmod(tmp, 0o755)                 # the server's own user reads below it
        server = PostgresServer(Path(tmp) / "pg", bin_dir)
        server.init()
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if postgres_bin_dir() is None:
        _missing(POSTGRES_MISSING)
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.fresh_url()
