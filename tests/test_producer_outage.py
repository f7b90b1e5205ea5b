"""The traffic producer through an event-log outage, on a private redis-server (not the shared stack).

The event log is a redis-server of the test's own on a free port, with an fsync-always AOF so the records it
acknowledged survive the kill -9 and restart on the same port.
"""

from __future__ import annotations

import io
import json
import os
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
from lakehouse.eventlog.redis_streams import RedisStreamsLog
from lakehouse.traffic.producer import TOPIC_OF_KIND, UndeliveredError, send, topic_for


class PrivateRedis:
    """A redis-server process of this test: start, kill -9, start again on the same port and directory."""

    def __init__(self, root: Path):
        self.port = free_port()
        self.dir = root
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir)]  # fmt: skip
        with open(self.dir / "redis.log", "ab") as logfile:
            self.proc = subprocess.Popen(args, stdout=logfile, stderr=subprocess.STDOUT)
        probe = RedisStreamsLog(self.url, retries=1)
        deadline = time.monotonic() + timeout_s
        while not probe.ping():
            assert self.proc.poll() is None, (self.dir / "redis.log").read_text()[-2000:]
            assert time.monotonic() < deadline, f"redis-server on port {self.port} did not answer in {timeout_s} s"
            time.sleep(0.05)
        probe.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    srv = PrivateRedis(tmp_path)
    srv.start()
    yield srv
    srv.kill()


def private(settings: Settings, url: str, **traffic: object) -> Settings:
    """The test profile's settings with the event log at ``url`` (and ``traffic`` overrides)."""
    return settings.model_copy(
        update={
            "eventlog": settings.eventlog.model_copy(update={"backend": "redis", "redis_url": url}),
            "traffic": settings.traffic.model_copy(update=traffic),
        }
    )


def everything_in(log: RedisStreamsLog, settings: Settings) -> Counter:
    """Every record of the traffic topics as (kind, canonical JSON) -> how many times it is in the log."""
    found: Counter = Counter()
    for kind in TOPIC_OF_KIND:
        topic = topic_for(settings, kind)
        for partition, end in log.end_offsets(topic).items():
            for record in log.read(topic, partition, 0, end):
                found[(kind, json.dumps(json.loads(record.value), sort_keys=True))] += 1
    return found


def total_records(log: RedisStreamsLog, settings: Settings) -> int:
    return sum(sum(log.end_offsets(topic_for(settings, kind)).values()) for kind in TOPIC_OF_KIND)


def test_generate_survives_an_outage_longer_than_the_logs_retries_without_losing_an_event(server, settings, tmp_path):
    """``python -m lakehouse.traffic generate`` paced over ~9 s; the event log is killed 2 s in for 12 s (the
    event log's own retries give up after ~10 s): the producer holds its batch, says so, and delivers it all."""
    cfg = private(settings, server.url)
    env = {**os.environ, "LAKEHOUSE_PROFILE": "test", "LAKEHOUSE__EVENTLOG__BACKEND": "redis",
           "LAKEHOUSE__EVENTLOG__REDIS_URL": server.url}  # fmt: skip
    n = 500
    args = ["-m", "lakehouse.traffic", "generate", "--rate", "20", "--with-market", "--seed", "8", "--customers",
            "300", "--fraud-rate", "0.05", "--start", "2026-03-02T13:00:00Z", "--max-events", str(n)]  # fmt: skip
    # the same events, from the same CLI, into a file: what the log must hold at the end
    expected_file = tmp_path / "expected.jsonl"
    run(env, *args, "--out", str(expected_file), timeout=120)
    lines = [json.loads(line) for line in expected_file.read_text().splitlines()]
    expected = {(e["kind"], json.dumps(e["event"], sort_keys=True)) for e in lines}
    assert len(lines) == len(expected) == n and {k for k, _ in expected} == {"transaction", "market_tick"}

    log = RedisStreamsLog(server.url, retries=1)
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
        time.sleep(12.0)
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

    log = RedisStreamsLog(server.url, retries=1)
    found = everything_in(log, cfg)
    log.close()
    missing = expected - set(found)
    assert not missing, f"{len(missing)} of {n} events lost, e.g. {sorted(missing)[:3]}"
    assert set(found) == expected  # nothing else either; a repeat of a partly applied batch is allowed
    assert sum(found.values()) >= n


def test_the_producer_gives_up_after_the_configured_outage_naming_the_undelivered_events(server, settings):
    """``traffic.outage_give_up_s``: once the log has been unreachable that long, ``send`` raises an error naming
    the events it held; it read no event beyond its batch while retrying."""
    cfg = private(settings, server.url, outage_give_up_s=1.5)
    log = RedisStreamsLog(server.url, retries=1, retry_wait_s=0.05)
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
    assert "10 events not delivered, 10 sent before" in str(error) and "give-up after 1.5 s" in str(error)
    assert 1.5 <= elapsed < 15
    assert consumed == 20  # nothing read beyond the held batch
    text = out.getvalue()
    assert "event log unreachable (" in text and "holding 10 events, retry in 0.2 s" in text, text
    log.close()
