import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the repo root, for app.py and bench/

import os

import pytest
import torch

from explorer.adapters.embedded import load_embedded

torch.set_num_threads(1)  # tiny model on a shared 2-core machine: avoid oversubscription

# The store's backends: every test taking `db_url` runs once on each. PostgreSQL tests need the
# server binaries (Debian's `postgresql` package) and psycopg: without them they are skipped
# locally, and fail in CI (CI=true), where the README's test command installs both.
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "postgresql: runs against a throwaway PostgreSQL server (deselect with -m 'not postgresql')"
    )


@pytest.fixture(scope="session")
def denoiser():
    return load_embedded()


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_server():
    """One throwaway PostgreSQL server for the session (tests/pg_server.py), stopped at the end."""
    from pg_server import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        if _in_ci():
            pytest.fail(f"PostgreSQL is required in CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL not available: {exc}")
    yield server
    server.stop()


def new_db_url(request, backend: str, directory) -> str:
    """A URL of a new, empty database on `backend`, dropped when `request`'s scope ends."""
    if backend == "sqlite":
        return f"sqlite:///{directory}/t.db"
    server = request.getfixturevalue("pg_server")
    name, url = server.create_database()
    request.addfinalizer(lambda: server.drop_database(name))
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> str:
    """A fresh empty database for one test: a SQLite file under tmp_path, or a PostgreSQL database."""
    return new_db_url(request, request.param, tmp_path)
