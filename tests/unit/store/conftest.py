"""Frame store fixtures: every store test runs on SQLite and, when one can be had, on PostgreSQL.

PostgreSQL comes from ``INSPECT_TEST_POSTGRES_URL`` if set; otherwise, where the server binaries are
installed, a throwaway cluster is started once per session on a free loopback port (fsync off: nothing
here needs to survive a crash) and stopped at the end. Without either, the PostgreSQL cases skip. Each
test gets its own PostgreSQL schema, so tests never see each other's rows.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from inspectline.config import StoreConfig
from inspectline.store import FrameStore


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if url := os.environ.get("INSPECT_TEST_POSTGRES_URL"):
        yield url
        return
    pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install -e '.[dev]'")
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        pytest.skip("no PostgreSQL: set INSPECT_TEST_POSTGRES_URL or install the postgresql server package")
    bindir = Path(initdb[-1]).parent
    # tempfile.mkdtemp, not tmp_path: pytest's folders are private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="inspect-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", _free_port()
    pg_ctl = [*as_postgres, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [
                *as_postgres,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        options = (
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c synchronous_commit=off"
        )
        subprocess.run(
            [*pg_ctl, "-l", str(root / "server.log"), "-o", options, "-w", "start"],
            check=True,
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        log = (root / "server.log").read_text()[-2000:] if (root / "server.log").is_file() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a throwaway PostgreSQL from {bindir}: {getattr(exc, 'stderr', '') or exc} {log}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the backend the test is parametrised with."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'frames.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    schema = f"test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    # libpq's options parameter makes the schema the session's default for every pooled connection.
    separator = "&" if "?" in base else "?"
    yield f"{base}{separator}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Every test that (indirectly) needs a database runs once per backend.
    if "database_url" in metafunc.fixturenames:
        metafunc.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def make_store(database_url: str, tmp_path: Path) -> Iterator[Callable[..., FrameStore]]:
    """``make_store(keep_ok_images=1.0, ...)``: stores on the test's database, closed at the end."""
    opened: list[FrameStore] = []

    def make(**overrides) -> FrameStore:
        settings = {
            "database_url": database_url,
            "storage_url": str(tmp_path / "images"),
            "keep_ok_images": 1.0,
            **overrides,
        }
        store = FrameStore(StoreConfig(**settings))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[..., FrameStore]) -> FrameStore:
    """A store that keeps every image, so tests choose retention explicitly where it matters."""
    return make_store()
