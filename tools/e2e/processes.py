"""The run's real processes: the streaming pipeline (killed with SIGKILL at random points), the API, and a
stack service killed and started again (an outage)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from lakehouse.config import Settings
from tools.stack.process import ProcessManager
from tools.stack.services import stack_services

# A streaming Python data source's planner is a Python process Spark gives a hard-coded 10 s to connect back; on a
# starved CPU it may not, and the pipeline gives up after its own restarts: then the run restarts it.
TRANSIENT = "Python worker failed to connect back"


class RunError(RuntimeError):
    """A step of the run failed (not an invariant: the run could not get that far)."""


def wait_until(what: str, condition, timeout_s: float, every_s: float = 0.5, check=None):
    """Poll ``condition`` until it returns something true, and return that; RunError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check is not None:
            check()
        if value := condition():
            return value
        time.sleep(every_s)
    raise RunError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Pipeline:
    """``python -m lakehouse.pipeline --no-traffic`` in its own session, so one SIGKILL takes its process group
    (the driver, Spark's JVM and its Python workers)."""

    def __init__(self, settings: Settings, env: dict, logs: Path):
        # marks this pipeline's processes (not the API's, which shares the lakehouse) for ``kill``
        token = uuid.uuid4().hex
        self.marker = f"LAKEHOUSE_E2E_PIPELINE={token}".encode()
        self.settings, self.logs = settings, logs
        self.env = {**env, "LAKEHOUSE_E2E_PIPELINE": token}
        self.proc: subprocess.Popen | None = None
        self.args: tuple[str, ...] = ()  # of the current run, for a restart
        self.runs: list[Path] = []
        self.transient_restarts = 0

    def start(self, *args: str) -> None:
        path = self.logs / f"pipeline-{len(self.runs)}.log"
        self.runs.append(path)
        self.args = args
        with open(path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lakehouse.pipeline", "--no-traffic", *args],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )

    def commits(self, query: str = "*") -> int:
        """Micro-batches committed so far by ``query`` (a glob; default every query), from the checkpoints."""
        root = Path(self.settings.path(self.settings.spark.checkpoint_root))
        return sum(1 for _ in root.glob(f"{query}/commits/[0-9]*")) if root.exists() else 0

    def kill_at_random(self, rng: random.Random, timeout_s: float, max_delay_s: float = 4.0) -> dict:
        """Start the pipeline, wait until it commits a micro-batch, wait a random moment more, SIGKILL it."""
        before = self.commits()
        started = time.monotonic()
        self.start("--duration", "3600")
        wait_until("the pipeline's first commit", lambda: self.commits() > before, timeout_s, 0.2, self.check)
        delay = rng.uniform(0.0, max_delay_s)
        time.sleep(delay)
        self.check()
        self.kill()
        kill = {
            "after_s": round(time.monotonic() - started, 1),
            "commits": self.commits() - before,
            "random_delay_s": round(delay, 2),
        }
        return kill

    def run_to_end(self, timeout_s: float) -> None:
        """``--available-now``: every stage over what the log holds, then exit (restarted on the transient)."""
        while True:
            self.start("--available-now")
            try:
                code = self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RunError(f"the pipeline did not finish within {timeout_s:.0f} s:\n{self.tail()}") from None
            self.proc = None
            if code == 0:
                return
            if TRANSIENT not in self.tail(20000) or self.transient_restarts >= 4:
                raise RunError(f"the pipeline exited with {code}:\n{self.tail()}")
            self.transient_restarts += 1

    def check(self) -> None:
        """RunError if the running pipeline exited (restart it instead after the transient start-up failure)."""
        if self.proc is None or self.proc.poll() is None:
            return
        if TRANSIENT in self.tail(20000) and self.transient_restarts < 4:
            self.transient_restarts += 1
            self.start(*self.args)
            return
        raise RunError(f"the pipeline exited with {self.proc.returncode}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL the process group, then any process of this pipeline that left it (Spark's Python worker
        daemon makes its own group)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=60)
            self.proc = None
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError, ValueError):
                if int(proc.name) != os.getpid() and self.marker in (proc / "environ").read_bytes().split(b"\0"):
                    os.kill(int(proc.name), signal.SIGKILL)

    def tail(self, n: int = 6000) -> str:
        return self.runs[-1].read_text(errors="replace")[-n:] if self.runs else ""


class Api:
    """``python -m serving`` on ``port``, one worker; a context manager that waits for health and stops it."""

    def __init__(self, env: dict, port: int, log: Path):
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Api:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "serving", "--port", str(self.port), "--workers", "1"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RunError(f"the API exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200
            return False

        wait_until("the API to answer", up, 120, 0.3)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Outage:
    """A stack service killed with SIGKILL (no clean shutdown), then started again on the same data
    (``with Outage(settings, "kafka"): ...``)."""

    def __init__(self, settings: Settings, name: str):
        self.svc = next(s for s in stack_services(settings) if s.name == name)
        self.manager = ProcessManager(settings.state_path)
        self.seconds = 0.0

    def __enter__(self) -> Outage:
        pid = self.manager.pid(self.svc.name)
        if pid is None:
            raise RunError(f"{self.svc.name} is not this stack's process: it cannot be killed for an outage")
        os.killpg(pid, signal.SIGKILL)
        while self.manager.pid(self.svc.name) is not None:
            time.sleep(0.05)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        self.manager.start(self.svc)
        self.seconds = time.monotonic() - self.started
