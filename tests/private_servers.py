"""Private Redis and MariaDB servers for fault tests: own ports, own files, free to stop and kill.

The shared test servers must never be stopped; these run as child processes of the test,
in a temporary directory, on free local ports, so a test can take them down and back up.
A restart keeps the port, so the scripts under test reconnect to the same URL.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pymysql
import redis

from tests.processes import wait_until

REDIS_SERVER = "redis-server"
MARIADBD = "mariadbd"
SBIN = "/usr/sbin:/usr/local/sbin"  # where mariadbd lives when it is not on PATH
MARIADB_INSTALL_DB = "mariadb-install-db"
START_TIMEOUT = 30  # seconds for a server to answer after it was started
STOP_TIMEOUT = 30  # seconds for a graceful shutdown
UNIX_SOCKET_MAX = 100  # bytes: sun_path is 108 on Linux, 104 on macOS


class ServerMissing(RuntimeError):
    """The server's binary is not installed."""


def free_port() -> int:
    """A local TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    """The path of the executable `name`; `ServerMissing` when it is not installed."""
    path = shutil.which(name) or shutil.which(name, path=SBIN)
    if path is None:
        raise ServerMissing(f"{name} is not installed")
    return path


class PrivateServer:
    """A server process of the test's own; subclasses say how to run and ping it."""

    name = "server"

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / f"{self.name}.out"

    def command(self) -> list[str]:
        """The server's command line."""
        raise NotImplementedError

    def ping(self) -> bool:
        """Whether the server answers a client now."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

        def answers() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} while starting:\n"
                    + self.diagnostics()
                )
            return self.ping()

        wait_until(answers, START_TIMEOUT, f"{self.name} on port {self.port} to answer")

    def stop(self) -> None:
        """Shut the server down gracefully (SIGTERM) and wait until it has exited."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {STOP_TIMEOUT} s:\n" + self.diagnostics()
            ) from None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        """Stop gracefully, then start again on the same port with the same files."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def diagnostics(self) -> str:
        """The tail of the server's own output, for failure messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except FileNotFoundError:
            return "(no output)"


class PrivateRedis(PrivateServer):
    """redis-server with an fsync-always append-only file: a graceful restart loses nothing."""

    name = "redis"

    def __init__(self, directory: Path) -> None:
        self.binary = require_binary(REDIS_SERVER)
        super().__init__(directory)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        """The redis-server command line (not daemonized, no RDB snapshots)."""
        return [
            self.binary,
            *("--port", str(self.port), "--bind", "127.0.0.1"),
            *("--appendonly", "yes", "--appendfsync", "always"),
            *("--dir", str(self.dir), "--save", ""),
        ]

    def client(self, **kwargs) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis.from_url(self.url, **kwargs)

    def ping(self) -> bool:
        """Whether PING is answered (not while the AOF is still loading)."""
        with self.client(socket_connect_timeout=1, socket_timeout=1) as client:
            try:
                return bool(client.ping())
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                return False


class PrivateMariaDB(PrivateServer):
    """mariadbd on a datadir of its own; `root` logs in over TCP without a password.

    `template`: an initialised datadir to copy instead of running mariadb-install-db
    (copying takes milliseconds, installing most of a second).
    """

    name = "mariadb"
    database = "txstream_fault"
    # Small buffer pool and redo log: starts in about 0.15 s and takes ~35 MB of disk.
    INNODB = ("--innodb-buffer-pool-size=64M", "--innodb-log-file-size=16M")

    def __init__(self, directory: Path, template: Path | None = None) -> None:
        self.binary = require_binary(MARIADBD)
        super().__init__(directory)
        self.datadir = self.dir / "data"
        self.socket = self.dir / "mysqld.sock"
        if len(str(self.socket)) > UNIX_SOCKET_MAX:
            self.socket = Path(tempfile.gettempdir()) / f"txstream-mariadb-{self.port}.sock"
        self.url = f"mysql+pymysql://root@127.0.0.1:{self.port}/{self.database}"
        if not self.datadir.exists():
            if template is None:
                self.install(self.datadir)
            else:
                shutil.copytree(template, self.datadir)

    @classmethod
    def install(cls, datadir: Path) -> None:
        """Initialise `datadir` (offline): system tables, root without a password, no test db."""
        binary = require_binary(MARIADB_INSTALL_DB)
        result = subprocess.run(
            [
                binary,
                "--no-defaults",
                f"--datadir={datadir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--user=root",
                *cls.INNODB,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"mariadb-install-db failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def command(self) -> list[str]:
        """The mariadbd command line: TCP on 127.0.0.1 only, no option files read."""
        return [
            self.binary,
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket}",
            f"--pid-file={self.dir / 'mariadbd.pid'}",
            "--user=root",
            "--skip-name-resolve",
            *self.INNODB,
            f"--log-error={self.dir / 'err.log'}",
        ]

    def connect(self, **kwargs) -> pymysql.Connection:
        """A new DB-API connection as root, to no database in particular."""
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", **kwargs)

    def ping(self) -> bool:
        """Whether root can log in and run a query."""
        try:
            with self.connect(connect_timeout=1) as conn, conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except pymysql.err.OperationalError:
            return False

    def diagnostics(self) -> str:
        """The tail of the error log."""
        log = self.dir / "err.log"
        if not log.exists():
            return super().diagnostics()
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:])
