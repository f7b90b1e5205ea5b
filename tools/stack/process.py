"""Detached service processes with pid files and logs under the state directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Service:
    """A long-running process the stack owns; ``healthy`` says whether it serves requests."""

    name: str
    command: list[str]
    healthy: Callable[[], bool]
    endpoint: str
    ready_timeout_s: float = 60.0
    env: dict[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 40.0
    # the signal that asks for a clean, prompt stop (PostgreSQL: SIGINT, its "fast" shutdown)
    stop_signal: int = signal.SIGTERM
    # run as this OS user (PostgreSQL refuses root); None: as the caller
    user: str | None = None
    # one-time set-up before the first start (e.g. initdb); runs on every start, so it must be idempotent
    prepare: Callable[[], None] | None = None


class ServiceError(RuntimeError):
    pass


class ProcessManager:
    def __init__(self, state_dir: Path):
        self.run_dir = state_dir / "run"
        self.log_dir = state_dir / "logs"

    def pid(self, name: str) -> int | None:
        path = self.run_dir / f"{name}.pid"
        if not path.exists():
            return None
        pid = int(path.read_text().strip() or 0)
        return pid if pid and _alive(pid) else None

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def start(self, svc: Service) -> str:
        """Start ``svc`` unless it already answers; wait until healthy. Returns what was done."""
        if svc.healthy():
            return "already up" if self.pid(svc.name) else "up (not started by this stack)"
        if self.pid(svc.name):
            self.stop(svc)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if svc.prepare is not None:
            svc.prepare()
        log = open(self.log_path(svc.name), "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            svc.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **svc.env},
            user=svc.user,
            group=_group_of(svc.user),
            extra_groups=[] if svc.user else None,
        )
        log.close()
        (self.run_dir / f"{svc.name}.pid").write_text(str(proc.pid))
        deadline = time.monotonic() + svc.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceError(
                    f"{svc.name} exited with code {proc.returncode}; see {self.log_path(svc.name)}:\n"
                    + _tail(self.log_path(svc.name))
                )
            if svc.healthy():
                return f"started (pid {proc.pid})"
            time.sleep(0.5)
        raise ServiceError(
            f"{svc.name} not healthy after {svc.ready_timeout_s:.0f} s; see {self.log_path(svc.name)}:\n"
            + _tail(self.log_path(svc.name))
        )

    def stop(self, svc: Service) -> str:
        pid = self.pid(svc.name)
        pid_file = self.run_dir / f"{svc.name}.pid"
        if pid is None:
            pid_file.unlink(missing_ok=True)
            return "not running"
        _signal_group(pid, svc.stop_signal)
        deadline = time.monotonic() + svc.stop_timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        how = "stopped"
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
            how = "killed after timeout"
            while _alive(pid):
                time.sleep(0.1)
        pid_file.unlink(missing_ok=True)
        return how


def _group_of(user: str | None) -> int | None:
    import pwd

    return None if user is None else pwd.getpwnam(user).pw_gid


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
