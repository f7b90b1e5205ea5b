"""Scoring on Spark's executors: the driver pins what a micro-batch is scored with, each executor loads it once.

Each batch, the stream's driver resolves the model aliases (``training.registry.AliasFollower``: versions only,
nothing is loaded on the driver) and takes the rules in force; the ``Plan`` it ships with the batch's tasks
names those versions and carries the rules. Every Python worker loads a pinned version once and keeps it, so a
batch is scored with exactly the versions the driver saw, on every executor of a cluster, and a promotion takes
effect at a batch boundary. Alerts are claimed and sent from the executors too (``publish``).
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace

import pyarrow as pa
import redis
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lakehouse import eventlog
from lakehouse.config import Settings
from serving.rules import RuleSet
from training import registry
from training.registry import LoadedModel, ModelRef

_LOADED: dict[tuple[str, str, str], LoadedModel] = {}
_FAILED: dict[tuple[str, str, str], tuple[float, str]] = {}
RETRY_LOAD_S = 30.0


@dataclass(frozen=True)
class Plan:
    """What one batch is scored with: the pinned version of each model role (None: none registered) and the
    rules in force."""

    settings: Settings
    models: dict[str, ModelRef | None] = field(default_factory=dict)
    rules: RuleSet | None = None


def loaded(settings: Settings, ref: ModelRef) -> LoadedModel:
    """``ref``'s model, loaded once per process; a failed load raises and is not retried for ``RETRY_LOAD_S``."""
    key = (settings.mlflow.tracking_uri, ref.name, ref.version)
    if key in _LOADED:
        return _LOADED[key]
    failed_at, error = _FAILED.get(key, (0.0, ""))
    if time.monotonic() - failed_at < RETRY_LOAD_S:
        raise RuntimeError(error)
    try:
        _LOADED[key] = registry.load(settings, ref)
    except Exception as exc:
        _FAILED[key] = (time.monotonic(), f"{ref.name} v{ref.version} failed to load: {exc}")
        raise RuntimeError(_FAILED[key][1]) from exc
    return _LOADED[key]


class PinnedModel:
    """A loader (``serving.scorer.Loader``) of one pinned version; a version that cannot be loaded leaves its
    tier unscored and is kept in ``error``."""

    def __init__(self, settings: Settings, ref: ModelRef):
        self.settings, self.ref, self.error = settings, ref, ""

    @property
    def current(self) -> LoadedModel:
        try:
            return loaded(self.settings, self.ref)
        except RuntimeError as exc:
            self.error = str(exc)
            raise LookupError(self.error) from None


def pinned_models(plan: Plan) -> dict[str, PinnedModel | None]:
    """A loader per role of ``plan`` (None where no version is registered)."""
    return {role: PinnedModel(plan.settings, ref) if ref else None for role, ref in plan.models.items()}


def load_errors(models: dict[str, PinnedModel | None]) -> str:
    """What failed to load, or ``""``."""
    return "; ".join(m.error for m in models.values() if m is not None and m.error)


def fixed_rules(rules: RuleSet) -> SimpleNamespace:
    """The plan's rules as a rule book (``current``) that never reloads."""
    return SimpleNamespace(current=rules, errors=0)


@cache
def _clients(redis_url: str, bootstrap: str) -> tuple[redis.Redis, eventlog.EventLog]:
    return redis.Redis.from_url(redis_url), eventlog.open_event_log(bootstrap)


Alert = tuple[str, str, str, dict]  # (claim key, topic, record key, event)
ALERT_TTL_S = 14 * 86_400
SENT = pa.schema([("topic", pa.string()), ("sent", pa.int64())])


def send_once(
    client: redis.Redis, log: eventlog.EventLog, alerts: list[Alert], ttl_s: int = ALERT_TTL_S
) -> list[Alert]:
    """Produce each alert ``(claim key, topic, record key, event)`` whose claim key this call sets first (``SET
    NX``, pipelined, kept ``ttl_s``): an alert goes out once however often its batch is replayed. Returns the
    alerts sent."""
    if not alerts:
        return []
    pipe = client.pipeline(transaction=False)
    for claim, *_ in alerts:
        pipe.set(claim, 1, nx=True, ex=ttl_s)
    sent = [a for a, ok in zip(alerts, pipe.execute(), strict=True) if ok]
    by_topic: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for _, topic, key, event in sent:
        by_topic[topic].append((key, json.dumps(event).encode()))
    for topic, records in by_topic.items():
        log.produce_batch(topic, records)
    return sent


def publish(df: DataFrame, settings: Settings, alerts: Callable[[dict], Alert]) -> dict[str, int]:
    """Send one alert per row of ``df`` (``alerts(row)``), each at most once (``send_once``), from
    the executors; returns how many were sent, by topic."""
    url, bootstrap = settings.online_store.url, settings.eventlog.kafka_bootstrap

    def send(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        client, log = _clients(url, bootstrap)
        for batch in batches:
            sent = Counter(topic for _, topic, _, _ in send_once(client, log, [alerts(r) for r in batch.to_pylist()]))
            yield pa.RecordBatch.from_pydict({"topic": list(sent), "sent": list(sent.values())}, schema=SENT)

    counts = df.mapInArrow(send, "topic string, sent bigint").groupBy("topic").agg(F.sum("sent").alias("n"))
    return {r["topic"]: r["n"] for r in counts.collect()}
