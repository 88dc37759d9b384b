"""A throwaway PostgreSQL server for the tests, from the distribution's server binaries.

`PostgresServer.start()` runs `initdb` into a fresh temporary directory and starts `postgres`
on it with `pg_ctl`: listening on 127.0.0.1 only, on a free port, with its unix socket in that
directory, trust authentication for the `postgres` superuser, and durability switched off
(fsync, synchronous commit, full-page writes: nothing here has to survive a crash). Its time
zone is deliberately not UTC, so a store that relied on the session time zone would show it.
Started as root (initdb refuses root), the server runs as the `postgres` system user (which
Debian's `postgresql` package creates), else as `nobody`. `create_database()` gives each test
its own empty database and a SQLAlchemy URL for it; `stop()` stops the server and deletes the
directory. Anything missing (binaries, psycopg, a user to run as) raises `PostgresUnavailable`
with the reason, so the caller can skip or fail.

    python tests/pg_server.py        # start one, print its URL, stop it on Enter
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN_ENV = "EXPLORER_TEST_PG_BIN"  # a directory holding initdb and pg_ctl, to override the search
SERVER_TIMEZONE = "Asia/Kolkata"  # UTC+05:30, no DST: a store must not depend on the session's zone


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here; the message says why."""


def find_bindir() -> Path:
    """The directory with initdb and pg_ctl: $EXPLORER_TEST_PG_BIN, Debian's newest, or $PATH."""
    candidates = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    versions = glob.glob("/usr/lib/postgresql/*/bin")  # Debian / Ubuntu (initdb is not on $PATH)
    candidates += sorted((Path(p) for p in versions), key=lambda p: _version_key(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise PostgresUnavailable(
        "no PostgreSQL server binaries (initdb, pg_ctl) found in /usr/lib/postgresql/*/bin "
        f"or on $PATH; install Debian's `postgresql` package (or set ${BIN_ENV})"
    )


def _version_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else 0 for part in name.split("."))


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable(
        "running as root, and neither a `postgres` nor a `nobody` user exists to run "
        "the PostgreSQL server as (initdb refuses root)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresServer:
    def __init__(self, bindir: Path, root: Path, port: int, user: pwd.struct_passwd | None) -> None:
        self.bindir, self.root, self.port, self.user = bindir, root, port, user
        self.data = root / "data"
        self.log = root / "server.log"
        self._names = itertools.count(1)
        self._admin = None

    # ---- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def start(cls, attempts: int = 3) -> PostgresServer:
        try:
            import psycopg  # noqa: F401  (the driver the store's URLs name)
        except ImportError:
            raise PostgresUnavailable("the psycopg driver is not installed (pip install 'psycopg[binary]')") from None
        bindir, user = find_bindir(), _server_user()
        root = Path(tempfile.mkdtemp(prefix="explorer-pg-"))
        try:
            if user is not None:
                os.chown(root, user.pw_uid, user.pw_gid)
            server = cls(bindir, root, 0, user)
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            )
            for attempt in range(attempts):  # the free port may be taken before the server binds it
                server.port = _free_port()
                try:
                    server._run(
                        "pg_ctl",
                        "-D",
                        str(server.data),
                        "-l",
                        str(server.log),
                        "-w",
                        "-t",
                        "60",
                        "-o",
                        server._options(),
                        "start",
                    )
                    break
                except PostgresUnavailable:
                    if attempt == attempts - 1:
                        raise
            atexit.register(server.stop)  # also stopped if the session ends without its finalizer
            return server
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise

    def _options(self) -> str:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": self.port,
            "unix_socket_directories": self.root,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "timezone": SERVER_TIMEZONE,
            "max_connections": 200,
        }
        return " ".join(f"-c {key}={value}" for key, value in settings.items())

    def _run(self, program: str, *args: str) -> None:
        kwargs = {}
        if self.user is not None:
            kwargs = {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        env.pop("PGDATA", None)
        done = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            **kwargs,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(
                f"{program} failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
                + (f"\nserver log:\n{log}" if log else "")
            )

    def stop(self) -> None:
        """Stop the server and delete its directory (again: a no-op)."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # ---- databases ---------------------------------------------------------------------------
    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _connection(self):
        import psycopg

        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
            )
        return self._admin

    def create_database(self) -> tuple[str, str]:
        """A new empty database: (its name, its SQLAlchemy URL)."""
        name = f"test_{next(self._names)}"
        self._connection().execute(f'CREATE DATABASE "{name}"')
        return name, self.url(name)

    def drop_database(self, name: str) -> None:
        self._connection().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    server = PostgresServer.start()
    try:
        print(server.url(), "(data in", server.root, ") - press Enter to stop")
        input()
    finally:
        server.stop()
