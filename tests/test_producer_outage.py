"""The traffic producer through an event-log outage, on a private Kafka broker (not the shared stack).

The event log is a KRaft broker of the test's own (the stack's service definition, on free ports and a state
directory of the test), killed with SIGKILL and restarted on the same ports and log dirs.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import free_port, run

from lakehouse import eventlog
from lakehouse.config import Settings
from lakehouse.eventlog import EventLog
from lakehouse.eventlog.producer import TOPIC_OF_KIND, UndeliveredError, send, topic_for
from tools.stack.kafka import kafka_service
from tools.stack.process import ProcessManager


class PrivateKafka:
    """A Kafka broker of this test: start, kill -9, start again on the same ports and log dirs."""

    def __init__(self, settings: Settings, root: Path):
        self.bootstrap = f"127.0.0.1:{free_port()}"
        ev = settings.eventlog.model_copy(update={"kafka_bootstrap": self.bootstrap, "controller_port": free_port()})
        self.settings = settings.model_copy(update={"state_dir": str(root), "eventlog": ev})
        self.service = kafka_service(self.settings)
        self.manager = ProcessManager(self.settings.state_path)

    def start(self) -> None:
        self.manager.start(self.service)

    def kill(self) -> None:
        pid = self.manager.pid(self.service.name)
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
            while self.manager.pid(self.service.name) is not None:
                time.sleep(0.05)

    def log(self, timeout_s: float = 10.0) -> EventLog:
        return eventlog.open_event_log(self.bootstrap, timeout_s)


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[PrivateKafka]:
    srv = PrivateKafka(settings, tmp_path / "broker")
    srv.start()
    yield srv
    srv.kill()


def private(settings: Settings, server: PrivateKafka, **traffic: object) -> Settings:
    """The test profile's settings with the event log on the private broker (and ``traffic`` overrides)."""
    return settings.model_copy(
        update={"eventlog": server.settings.eventlog, "traffic": settings.traffic.model_copy(update=traffic)}
    )


def everything_in(log: EventLog, settings: Settings) -> Counter:
    """Every record of the traffic topics as (kind, canonical JSON) -> how many times it is in the log."""
    found: Counter = Counter()
    for kind in TOPIC_OF_KIND:
        topic = topic_for(settings, kind)
        for partition, end in log.end_offsets(topic).items():
            for record in log.read(topic, partition, 0, end):
                found[(kind, json.dumps(json.loads(record.value), sort_keys=True))] += 1
    return found


def total_records(log: EventLog, settings: Settings) -> int:
    return sum(sum(log.end_offsets(topic_for(settings, kind)).values()) for kind in TOPIC_OF_KIND)


def test_generate_survives_an_outage_longer_than_the_logs_retries_without_losing_an_event(server, settings, tmp_path):
    """``python -m tools.traffic generate`` paced over ~25 s; the broker is killed 2 s in for 15 s (longer
    than the Kafka client's own delivery timeout of 10 s): the producer holds its batch, says so, and delivers it
    all."""
    cfg = private(settings, server)
    env = {**os.environ, "LAKEHOUSE_PROFILE": "test", "LAKEHOUSE__EVENTLOG__KAFKA_BOOTSTRAP": server.bootstrap}
    n = 500
    args = ["-m", "tools.traffic", "generate", "--rate", "20", "--with-market", "--seed", "8", "--customers",
            "300", "--fraud-rate", "0.05", "--start", "2026-03-02T13:00:00Z", "--max-events", str(n)]  # fmt: skip
    # the same events, from the same CLI, into a file: what the log must hold at the end
    expected_file = tmp_path / "expected.jsonl"
    run(env, *args, "--out", str(expected_file), timeout=120)
    lines = [json.loads(line) for line in expected_file.read_text().splitlines()]
    expected = {(e["kind"], json.dumps(e["event"], sort_keys=True)) for e in lines}
    assert len(lines) == len(expected) == n and {k for k, _ in expected} == {"transaction", "market_tick"}

    log = server.log()
    eventlog.ensure_topics(log, cfg)
    stderr_path = tmp_path / "producer.stderr"
    with open(stderr_path, "w") as stderr:
        producer = subprocess.Popen([sys.executable, *args, "--speedup", "1"], env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while total_records(log, cfg) == 0:
            assert producer.poll() is None, stderr_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "the producer sent nothing within 60 s"
            time.sleep(0.1)
        time.sleep(2.0)
        before_outage = total_records(log, cfg)
        log.close()
        server.kill()
        time.sleep(15.0)
        assert producer.poll() is None, "the producer died in the outage:\n" + stderr_path.read_text()[-3000:]
        server.start()
        code = producer.wait(timeout=90)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(timeout=10)
    out = stderr_path.read_text()
    assert code == 0, out[-3000:]
    assert 0 < before_outage < n  # the outage interrupted the stream
    assert "event log unreachable (" in out and "retry in" in out, out
    assert "reachable again after" in out, out
    assert "of event-log outage" in out and f"sent {n} " in out, out  # the final progress line counts the outage

    log = server.log()
    found = everything_in(log, cfg)
    log.close()
    missing = expected - set(found)
    assert not missing, f"{len(missing)} of {n} events lost, e.g. {sorted(missing)[:3]}"
    assert set(found) == expected  # nothing else either; a repeat of a partly applied batch is allowed
    assert sum(found.values()) >= n


def test_the_producer_gives_up_after_the_configured_outage_naming_the_undelivered_events(server, settings):
    """``traffic.outage_give_up_s``: once the log has been unreachable that long, ``send`` raises an error naming
    the events it held; it read no event beyond its batch while retrying."""
    cfg = private(settings, server, outage_give_up_s=5.0)
    log = server.log(timeout_s=2.0)  # a delivery fails after 2 s
    eventlog.ensure_topics(log, cfg)
    t0 = 1_772_456_400_000  # 2026-03-02T13:00:00Z
    consumed = 0

    def events() -> Iterator[tuple[str, dict]]:
        nonlocal consumed
        for i in range(100):
            if i == 15:
                server.kill()  # after the first batch of 10 is in the log, before the second is full
            consumed += 1
            yield "market_tick", {"symbol": "ACME", "event_time": t0 + i, "price": 10.0 + i, "volume": 1.0}

    out = io.StringIO()
    outcome: dict[str, object] = {}

    def produce() -> None:
        try:
            outcome["stats"] = send(events(), log, cfg, speedup=0, batch_size=10, retry_initial_s=0.2, out=out)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "send did not give up within 30 s"
    elapsed = time.monotonic() - started
    error = outcome.get("error")
    assert isinstance(error, UndeliveredError), outcome
    assert (error.undelivered, error.sent) == (10, 10)
    assert "10 events not delivered, 10 sent before" in str(error) and "give-up after 5 s" in str(error)
    assert 5.0 <= elapsed < 15
    assert consumed == 20  # nothing read beyond the held batch
    text = out.getvalue()
    assert "event log unreachable (" in text and "holding 10 events, retry in 0.2 s" in text, text
    log.close()
