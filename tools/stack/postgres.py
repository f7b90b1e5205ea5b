"""MLflow's PostgreSQL: a cluster of the project's own under the state directory, on loopback only.

``make up`` initialises it once (``initdb``, trust authentication on 127.0.0.1 only, no Unix socket) and runs
``postgres`` as an unprivileged OS user when called as root, since PostgreSQL refuses to run as root. The
database named in ``mlflow.backend_store_uri`` is created once the server answers.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import urlparse

from lakehouse.config import Settings
from tools.stack.process import Service, ServiceError


def _bindir() -> Path:
    """The newest installed PostgreSQL's ``bin`` (Debian keeps it off PATH, in /usr/lib/postgresql/N/bin)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("postgres")
    if not found:
        raise ServiceError("PostgreSQL not found: run `make install` (it installs the `postgresql` package with apt)")
    return Path(os.path.realpath(found)).parent


def run_as(os_user: str) -> str | None:
    """The user to run PostgreSQL as: ``os_user`` when we are root, else ourselves (None)."""
    return os_user if os.geteuid() == 0 else None


def _ensure_user(os_user: str) -> None:
    """Create ``os_user`` as a system user without a home or shell if it does not exist (at the first start)."""
    try:
        pwd.getpwnam(os_user)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", os_user], check=True)


def _connect_args(uri: str) -> dict:
    u = urlparse(uri)
    return {"host": u.hostname or "127.0.0.1", "port": u.port or 5432, "user": u.username or "postgres"}


def _answers(uri: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(dbname="postgres", connect_timeout=2, **_connect_args(uri)).close()
        return True
    except psycopg2.OperationalError:
        return False


def postgres_service(settings: Settings) -> Service:
    uri = settings.mlflow.backend_store_uri
    args = _connect_args(uri)
    data = settings.state_path / "postgres"
    user = run_as(settings.postgres.os_user)
    bindir = _bindir()

    def initdb() -> None:
        if user is not None:
            _ensure_user(user)
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(data, entry.pw_uid, entry.pw_gid)
            _check_reachable(data, user)
        data.chmod(0o700)
        done = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", args["user"], "--auth=trust", "-E", "UTF8", "--no-locale"],
            capture_output=True,
            text=True,
            user=user,
            cwd="/",
        )
        if done.returncode != 0:
            raise ServiceError(f"initdb of {data} failed: {done.stderr.strip() or done.stdout.strip()}")

    cmd = [
        str(bindir / "postgres"),
        "-D",
        str(data),
        "-c",
        f"listen_addresses={args['host']}",
        "-c",
        f"port={args['port']}",
        "-c",
        "unix_socket_directories=",  # TCP on loopback only
        "-c",
        "max_connections=50",
        "-c",
        "shared_buffers=64MB",
    ]
    return Service(
        "postgres",
        cmd,
        lambda: _answers(uri),
        f"postgresql://{args['host']}:{args['port']}",
        ready_timeout_s=60,
        stop_timeout_s=30,
        stop_signal=signal.SIGINT,  # "fast" shutdown: ends client sessions instead of waiting for them
        user=user,
        prepare=initdb,
    )


def _check_reachable(data: Path, user: str) -> None:
    """PostgreSQL, running as ``user``, must be able to walk down to its data directory."""
    done = subprocess.run(["test", "-x", str(data)], user=user, cwd="/")
    if done.returncode != 0:
        raise ServiceError(
            f"the OS user {user!r} that runs PostgreSQL cannot reach {data}: make the state directory's parents "
            "world-executable (chmod o+x) or set state_dir elsewhere"
        )


def ensure_database(uri: str) -> None:
    """Create the database of a ``postgresql://`` MLflow backend store if it is missing."""
    if not uri.startswith("postgresql"):
        return
    import psycopg2

    dbname = urlparse(uri).path.lstrip("/")
    args = _connect_args(uri)
    try:
        conn = psycopg2.connect(dbname="postgres", password=urlparse(uri).password, connect_timeout=5, **args)
    except psycopg2.OperationalError as exc:
        raise ServiceError(
            f"PostgreSQL for MLflow unreachable at {args['host']}:{args['port']}: {exc}".strip()
        ) from exc
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if cur.fetchone() is None:
            cur.execute(f'CREATE DATABASE "{dbname}"')
    conn.close()
