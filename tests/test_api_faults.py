"""The API process (``python -m serving``, one uvicorn worker) through faults of the services it depends on, over
real HTTP, while a client keeps scoring:

- the online store's Redis frozen (SIGSTOP), then killed and restarted on the same port: never a 5xx nor a hang;
  while Redis cannot answer every score is 200 in the documented degraded mode (``features_status: degraded``
  with a reason), counted by ``fraud_api_degraded_scores_total``; once Redis is back, scores are ``ok`` again;
- the MLflow server stopped: scores still come from the champion loaded before, ``/v1/health`` answers; MLflow
  restarted, a second version registered and made champion: scores come from it within a deadline, and
  ``/v1/models`` says so. MLflow is left running whatever happens (later tests need it).

The online store here is a ``redis-server`` of this module's own (never the machine's Redis), given to the API
process with ``LAKEHOUSE__ONLINE_STORE__URL``. Every wait has a deadline and every request a short timeout, so a
hang fails the tests instead of blocking them.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import mlflow
import pytest
import redis
from support import free_port

from lakehouse import delta
from lakehouse.config import Settings
from tools.stack.process import ProcessManager
from tools.stack.services import stack_services
from training import registry

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}
REQUEST_TIMEOUT_S = 5.0  # a score taking longer fails the test (the store's own timeout is 200 ms)
PACE_S = 0.05  # between two scores of the client: ~20 a second, enough to see every phase on 2 cores
EVENT_KEYS = ("transaction_id", "card_id", "customer_id", "merchant_id", "merchant_category_code", "terminal_id",
              "amount", "currency", "channel", "card_present", "country", "lat", "lon", "device_id", "ip_hash",
              "transaction_type")  # fmt: skip


def wait_for(condition: Callable[[], object], seconds: float, what: str | Callable[[], str], every: float = 0.1):
    """``condition()``'s first truthy value, polled until ``seconds`` have passed (then the test fails, saying
    ``what``, or what ``what()`` says then)."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {seconds:.0f} s: {what() if callable(what) else what}")
        time.sleep(every)


class RedisServer:
    """A ``redis-server`` of the module's own on a fixed port, in its own process group, without persistence."""

    def __init__(self, port: int, log_path: Path):
        self.port, self.log_path = port, log_path
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None

    def answers(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
                   "--save", "", "--appendonly", "no"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)  # fmt: skip
        wait_for(lambda: self.answers() or self.proc.poll() is not None, 15, f"redis-server on port {self.port}")
        assert self.proc.poll() is None, self.log_path.read_text()[-2000:]

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (its port closed)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def ensure_running(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)  # in case a failed test left it frozen
            return
        self.start()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.kill()


@pytest.fixture(scope="module")
def online_redis(tmp_path_factory):
    server = RedisServer(free_port(), tmp_path_factory.mktemp("faults") / "redis.log")
    server.start()
    yield server
    server.close()


@dataclass(frozen=True)
class Api:
    url: str
    client: httpx.Client
    settings: Settings
    model: str  # the supervised model's registered name (unique to the session)
    champion: str  # its version registered (and made champion) by training
    events: list[dict]  # transactions as their contract has them (from silver rows)
    log_path: Path  # the API process's stdout and stderr


@pytest.fixture(scope="module")
def api(trained, online_redis, tmp_path_factory):
    """``python -m serving`` with one worker on the trained lake, its online store on ``online_redis``, following
    its aliases every second. Its champion is a copy of the trained XGBoost under a name of this module's own:
    the MLflow test registers and promotes a second version, which other tests of the session must not see."""
    settings, env, summary = trained
    name = f"{summary['xgboost']['name']}-faults"
    mc = registry.client(settings)
    trained_source = mc.get_model_version(summary["xgboost"]["name"], summary["xgboost"]["version"]).source
    version = str(mlflow.register_model(trained_source, name, await_registration_for=60).version)
    registry.assign_aliases(mc, name, version)  # champion and challenger
    env = {**env, "LAKEHOUSE__ONLINE_STORE__URL": online_redis.url, "LAKEHOUSE__MODELS__REFRESH_SECONDS": "1",
           "LAKEHOUSE__MODELS__SUPERVISED_NAME": name}  # fmt: skip
    silver = delta.read_arrow(settings, settings.table_uri("silver", "transactions")).to_pylist()
    events = [{k: row[k] for k in EVENT_KEYS} for row in sorted(silver, key=lambda r: r["transaction_id"])[:50]]
    port = free_port()
    log_path = tmp_path_factory.mktemp("faults-api") / "api.log"
    with open(log_path, "ab") as log:  # a file, not a pipe nobody reads: the API logs every failed refresh
        proc = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), "--workers", "1"],
                                env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, headers=ADMIN, timeout=REQUEST_TIMEOUT_S) as client:

            def champion_loaded() -> bool:
                assert proc.poll() is None, log_path.read_text()[-4000:]
                try:
                    return champion_of(client) == (name, version)
                except httpx.HTTPError:
                    return False

            wait_for(champion_loaded, 90, f"the API up with {name} v{version} as champion", every=0.3)
            yield Api(url, client, settings, name, version, events, log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def champion_of(client: httpx.Client) -> tuple[str, str | None]:
    got = client.get("/v1/models")
    assert got.status_code == 200, got.text
    champion = next(m for m in got.json()["models"] if m["role"] == "champion")
    return champion["name"], champion["version"]


def degraded_counted(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    [line] = [x for x in text.splitlines() if x.startswith("fraud_api_degraded_scores_total ")]
    return float(line.rsplit(" ", 1)[1])


@dataclass(frozen=True)
class Answer:
    sent: float  # time.monotonic() when the request left
    received: float  # when its answer (or the failure) came back
    status: int | None  # None: no HTTP answer within REQUEST_TIMEOUT_S (or the connection failed)
    body: dict | None
    error: str | None = None

    @property
    def features(self) -> str | None:
        return self.body.get("features_status") if self.body else None

    @property
    def model_version(self) -> str | None:
        return (self.body or {}).get("model", {}).get("version")


class Scoring:
    """A client posting valid transactions one after another from a thread, each a new transaction id and with a
    short timeout, recording every answer (or failure)."""

    def __init__(self, api: Api):
        self.api = api
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scoring-client", daemon=True)

    def __enter__(self) -> Scoring:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S + 5)
        assert not self._thread.is_alive(), "the scoring client did not stop"

    def _run(self) -> None:
        run = uuid.uuid4().hex[:8]
        with httpx.Client(base_url=self.api.url, headers=ADMIN, timeout=REQUEST_TIMEOUT_S) as client:
            for i in itertools.count():
                if self._stop.is_set():
                    return
                event = {**self.api.events[i % len(self.api.events)], "transaction_id": f"fault-{run}-{i}",
                         "event_time": int(time.time() * 1000)}  # fmt: skip
                sent = time.monotonic()
                try:
                    got = client.post("/v1/transactions/score", json=event)
                    body = got.json() if got.headers.get("content-type") == "application/json" else None
                    answer = Answer(sent, time.monotonic(), got.status_code, body, None if body else got.text[:500])
                except httpx.HTTPError as exc:
                    answer = Answer(sent, time.monotonic(), None, None, repr(exc))
                self.answers.append(answer)
                time.sleep(PACE_S)

    def between(self, start: float, end: float = float("inf")) -> list[Answer]:
        """The answers to requests sent at or after ``start`` and answered by ``end``."""
        return [a for a in list(self.answers) if a.sent >= start and a.received <= end]

    def wait(self, start: float, count: int, seconds: float, what: str, status: str | None = None) -> list[Answer]:
        """At least ``count`` answers (with ``features_status`` ``status`` if given) to requests sent since
        ``start``."""

        def enough() -> list[Answer] | None:
            found = [a for a in self.between(start) if status is None or a.features == status]
            return found if len(found) >= count else None

        return wait_for(enough, seconds, lambda: f"{what}; so far {self.summary()}")

    def summary(self) -> str:
        """How many answers of each kind, and the last one."""
        kinds = Counter((a.status, a.features or (a.error or "")[:80]) for a in list(self.answers))
        return f"{dict(kinds)}, the last {self.answers[-1] if self.answers else None}"

    def check_all_answered(self) -> None:
        """Every request answered 200 within the client's timeout: no 5xx, no hang, nothing else."""
        failed = [a for a in self.answers if a.status != 200]
        assert not failed, f"{len(failed)} of {len(self.answers)} scores not 200: {failed[:5]}"


def assert_degraded(answers: list[Answer], api: Api) -> None:
    """Answers in the documented degraded mode, still decided (rules, request features, the champion)."""
    assert answers
    for a in answers:
        assert a.features == "degraded" and a.body["degraded_reason"], a
        assert a.body["decision"] in ("approve", "review", "block"), a
        assert (a.body["model"]["name"], a.body["model"]["version"]) == (api.model, api.champion), a


def test_a_frozen_online_store_degrades_scores_within_its_timeout_then_recovers(api, online_redis):
    online_redis.ensure_running()
    before = degraded_counted(api.client)
    with Scoring(api) as scoring:
        scoring.wait(0, 3, 30, "three ok scores with the online store up", status="ok")
        online_redis.signal(signal.SIGSTOP)  # the process hangs: connections open, no reply ever comes
        frozen = time.monotonic()
        try:
            scoring.wait(frozen, 8, 20, "eight answers while the online store is frozen")
            assert api.client.get("/v1/health").status_code == 200
        finally:
            thawed_from = time.monotonic()
            online_redis.signal(signal.SIGCONT)
        thawed = time.monotonic()
        recovered = scoring.wait(thawed, 1, 20, "an ok score after the online store thawed", status="ok")[0]
        scoring.wait(recovered.sent, 5, 20, "five more scores after the recovery")
    after = degraded_counted(api.client)
    scoring.check_all_answered()
    assert {a.features for a in scoring.between(0, frozen)} == {"ok"}
    assert_degraded(scoring.between(frozen, thawed_from), api)
    assert {a.features for a in scoring.between(recovered.sent)} == {"ok"}
    assert after - before == sum(a.features == "degraded" for a in scoring.answers)


def test_an_online_store_killed_and_restarted_degrades_scores_then_recovers(api, online_redis):
    online_redis.ensure_running()
    before = degraded_counted(api.client)
    with Scoring(api) as scoring:
        scoring.wait(0, 3, 30, "three ok scores with the online store up", status="ok")
        online_redis.kill()
        killed = time.monotonic()
        try:
            scoring.wait(killed, 10, 20, "ten answers while the online store is down")
            wait_for(lambda: time.monotonic() - killed >= 3, 5, "three seconds of outage")
            assert api.client.get("/v1/health").status_code == 200
            ready = api.client.get("/v1/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["online_store"] is False, ready.text
        finally:
            restarting = time.monotonic()
            online_redis.start()  # the same port, empty (no persistence)
        restarted = time.monotonic()
        recovered = scoring.wait(restarted, 1, 20, "an ok score after the online store restarted", status="ok")[0]
        scoring.wait(recovered.sent, 5, 20, "five more scores after the recovery")
    after = degraded_counted(api.client)
    scoring.check_all_answered()
    assert {a.features for a in scoring.between(0, killed)} == {"ok"}
    down = scoring.between(killed, restarting)
    assert len(down) >= 10
    assert_degraded(down, api)
    assert {a.features for a in scoring.between(recovered.sent)} == {"ok"}
    assert after - before == sum(a.features == "degraded" for a in scoring.answers) >= len(down)
    assert api.client.get("/v1/ready").json()["checks"]["online_store"] is True


def test_scores_survive_mlflow_down_and_follow_a_promotion_after_it_is_back(api, online_redis, stack):
    online_redis.ensure_running()
    mlflow_svc = next(s for s in stack_services(stack) if s.name == "mlflow")
    manager = ProcessManager(stack.state_path)
    health = f"{stack.mlflow.tracking_uri.rstrip('/')}/health"
    mc = registry.client(stack)
    failed_refresh = f"refreshing models:/{api.model}@champion failed (keeping version {api.champion})"
    failed_before = api.log_path.read_text().count(failed_refresh)
    try:
        assert manager.stop(mlflow_svc) in ("stopped", "killed after timeout"), "MLflow is not the stack's own"
        stopped = time.monotonic()
        with pytest.raises(httpx.TransportError):
            httpx.get(health, timeout=2)
        with Scoring(api) as scoring:
            scoring.wait(stopped, 20, 30, "twenty scores with MLflow down")

            # until the champion's loader has tried the registry (every second, each try retried for seconds by
            # the MLflow client) and failed, keeping its version (or until a score shows it did not)
            def refresh_failed() -> bool:
                changed = any(a.model_version != api.champion for a in list(scoring.answers))
                return changed or api.log_path.read_text().count(failed_refresh) > failed_before

            wait_for(refresh_failed, 60, f"the API's log saying {failed_refresh!r}", every=0.5)
            assert api.client.get("/v1/health").status_code == 200
            assert champion_of(api.client) == (api.model, api.champion)
            ready = api.client.get("/v1/ready")
            assert ready.status_code == 503 and ready.json()["checks"]["mlflow"] is False, ready.text
        scoring.check_all_answered()
        models = {(a.body["model"]["name"], a.body["model"]["version"]) for a in scoring.answers}
        assert models == {(api.model, api.champion)}
    finally:
        if not registry_answers(health):
            manager.start(mlflow_svc)  # waits until /health answers (or raises)
    assert registry_answers(health)

    source = mc.get_model_version(api.model, api.champion)
    second = mlflow.register_model(source.source, api.model, await_registration_for=60)
    version = str(second.version)
    assert version != api.champion and second.status == "READY", second
    registry.promote(mc, api.model, version)
    with Scoring(api) as scoring:
        promoted = time.monotonic()

        def by_second() -> list[Answer]:
            return [a for a in scoring.between(promoted) if a.model_version == version]

        first = wait_for(by_second, 60, f"a score by {api.model} v{version} after its promotion")[0]
        scoring.wait(first.sent, 5, 20, "five more scores after the swap")
    scoring.check_all_answered()
    assert {a.model_version for a in scoring.between(first.sent)} == {version}
    assert all(a.features == "ok" for a in scoring.answers)
    # the challenger alias still names the first version: it now scores in the champion's shadow
    assert all(a.body["shadow"]["version"] == api.champion for a in scoring.between(first.sent))
    assert champion_of(api.client) == (api.model, version)


def registry_answers(health: str) -> bool:
    try:
        return httpx.get(health, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
