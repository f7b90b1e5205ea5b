"""The stream's Prometheus metrics: one registry for the pipeline process, and the functions that update it.

Queries' progress (``observe_progress``, fed by ``lakehouse.observability``'s listener), rows written by the
Delta sinks, silver's late and duplicate rows, decisions, alerts, model versions, scoring latency and market
anomalies. The data quality counters live in ``lakehouse.quality.REGISTRY`` and are exposed with these
(``lakehouse.observability.exposed_registry``). The API's metrics are ``serving.api.Metrics``.
"""

from __future__ import annotations

import json
import threading
from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()
DEAD_LETTER_TABLE = "bronze.dead_letter"

# --- queries (from their progress) ------------------------------------------------------------------------
INPUT_ROWS = Counter(
    "lakehouse_stream_input_rows", "Rows read by a streaming query's micro-batches.", ["query"], registry=REGISTRY
)
INPUT_RATE = Gauge(
    "lakehouse_stream_input_rows_per_second", "Arrival rate of a query's last micro-batch.", ["query"],
    registry=REGISTRY,
)  # fmt: skip
PROCESSED_RATE = Gauge(
    "lakehouse_stream_processed_rows_per_second", "Processing rate of a query's last micro-batch.", ["query"],
    registry=REGISTRY,
)  # fmt: skip
BATCH_DURATION = Histogram(
    "lakehouse_stream_batch_duration_seconds", "Duration of a query's micro-batches.", ["query"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300), registry=REGISTRY,
)  # fmt: skip
LAST_PROGRESS = Gauge(
    "lakehouse_stream_last_batch_timestamp_seconds", "When a query's last micro-batch ran (Unix time).", ["query"],
    registry=REGISTRY,
)  # fmt: skip
ACTIVE = Gauge("lakehouse_stream_query_active", "1 while a query runs, 0 once it stopped.", ["query"],
               registry=REGISTRY)  # fmt: skip
FAILURES = Counter("lakehouse_stream_query_failures", "Queries that stopped with an error.", ["query"],
                   registry=REGISTRY)  # fmt: skip
CONSUMER_LAG = Gauge(
    "lakehouse_stream_consumer_lag", "Records of a topic not yet committed to bronze.", ["topic"], registry=REGISTRY
)

# --- tables (from the sinks) -------------------------------------------------------------------------------
ROWS_WRITTEN = Counter(
    "lakehouse_stream_rows_written", "Rows committed to a Delta table by a query.", ["query", "table"],
    registry=REGISTRY,
)  # fmt: skip
DEAD_LETTERS = Counter(
    "lakehouse_stream_dead_letters", "Records that broke their contract, by bronze table.", ["table"],
    registry=REGISTRY,
)  # fmt: skip
LATE = Counter(
    "lakehouse_stream_late_events", "Rows behind the watermark (to silver.late_events), by silver table.", ["table"],
    registry=REGISTRY,
)  # fmt: skip
DUPLICATES = Counter("lakehouse_stream_duplicates", "Repeated rows not inserted, by silver table.", ["table"],
                     registry=REGISTRY)  # fmt: skip
WATERMARK = Gauge(
    "lakehouse_stream_watermark_timestamp_seconds", "A silver table's event-time watermark (Unix time).", ["table"],
    registry=REGISTRY,
)  # fmt: skip

# --- decisions ---------------------------------------------------------------------------------------------
HISTOGRAM_BUCKETS = {
    "probability": (0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 0.99),
    "scoring": (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1),
    "latency": (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
}
DECISIONS = Counter(
    "fraud_decisions", "Stream decisions, by outcome and the model role that acted.", ["decision", "route"],
    registry=REGISTRY,
)  # fmt: skip
SHADOW = Counter(
    "fraud_shadow_decisions", "Stream decisions with the other model's (shadow) decision beside them.",
    ["decision", "shadow_decision"], registry=REGISTRY,
)  # fmt: skip
PROBABILITY = Histogram(
    "fraud_model_probability", "Fraud probabilities of the supervised models, by role.", ["role"],
    buckets=HISTOGRAM_BUCKETS["probability"], registry=REGISTRY,
)  # fmt: skip
SCORING = Histogram(
    "fraud_scoring_latency_seconds", "Time to score one transaction in the stream (its batch's mean).",
    buckets=HISTOGRAM_BUCKETS["scoring"], registry=REGISTRY,
)  # fmt: skip
DECISION_LATENCY = Histogram(
    "fraud_decision_latency_seconds", "From the event log to the decision, per transaction.",
    buckets=HISTOGRAM_BUCKETS["latency"], registry=REGISTRY,
)  # fmt: skip
ALERTS = Counter("fraud_alerts_published", "Review and block alerts sent, by decision.", ["decision"],
                 registry=REGISTRY)  # fmt: skip
MODEL_ERRORS = Counter("fraud_model_errors", "Model failures (a tier or batch went unscored), by stage.", ["stage"],
                       registry=REGISTRY)  # fmt: skip
MODEL_INFO = Gauge(
    "fraud_model_version_info", "The model versions in use (1), by role.", ["role", "model", "version"],
    registry=REGISTRY,
)  # fmt: skip
MARKET_ANOMALIES = Counter("fraud_market_anomalies", "Anomalous market ticks, by symbol.", ["symbol"],
                           registry=REGISTRY)  # fmt: skip

_lock = threading.Lock()
_last_batch: dict[str, int] = {}  # query name -> last batch id observed (progress can repeat a batch id)
_models: dict[str, tuple[str, str]] = {}  # role -> (model, version) currently exported


def observe_progress(progress: dict) -> bool:
    """Update the query metrics from one ``StreamingQueryProgress`` (as a dict, like ``query.lastProgress``).

    Returns False (and counts nothing) for a batch id already observed."""
    name = progress.get("name") or progress.get("id") or "unnamed"
    batch = int(progress.get("batchId", -1))
    with _lock:
        if _last_batch.get(name) == batch:
            return False
        _last_batch[name] = batch
    INPUT_ROWS.labels(name).inc(max(0, int(progress.get("numInputRows") or 0)))
    INPUT_RATE.labels(name).set(_number(progress.get("inputRowsPerSecond")))
    PROCESSED_RATE.labels(name).set(_number(progress.get("processedRowsPerSecond")))
    ms = progress.get("batchDuration") or (progress.get("durationMs") or {}).get("triggerExecution") or 0
    BATCH_DURATION.labels(name).observe(ms / 1000)
    if stamp := progress.get("timestamp"):
        LAST_PROGRESS.labels(name).set(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    return True


def _number(value) -> float:
    """A progress rate as a float (Spark reports NaN or nothing for an empty trigger)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if out == out else 0.0


def source_offsets(progress: dict, topic: str) -> dict[str, int] | None:
    """The end offsets (partition -> next offset) that a bronze query's batch committed for ``topic``: the event
    log source's ``{"0": n}`` or Kafka's ``{"<topic>": {"0": n}}``; None without them."""
    for source in progress.get("sources") or []:
        end = source.get("endOffset")
        if isinstance(end, str):
            try:
                end = json.loads(end)
            except json.JSONDecodeError:
                continue
        if not isinstance(end, dict):
            continue
        if topic in end and isinstance(end[topic], dict):
            end = end[topic]
        if all(isinstance(v, int) for v in end.values()):
            return {str(p): int(o) for p, o in end.items()}
    return None


def lag(ends: dict, committed: dict[str, int]) -> int:
    """Records between the committed offsets and the log's end offsets, over every partition."""
    return sum(max(0, int(e) - committed.get(str(p), 0)) for p, e in ends.items())


def set_active(query: str, active: bool, failed: bool = False) -> None:
    ACTIVE.labels(query).set(1 if active else 0)
    if failed:
        FAILURES.labels(query).inc()


def observe_written(query: str, table: str, rows: int) -> None:
    """Rows a query committed to a Delta table; the dead letter's count under the bronze table they came from."""
    ROWS_WRITTEN.labels(query, table).inc(rows)
    if table == DEAD_LETTER_TABLE:
        DEAD_LETTERS.labels(query.removeprefix("bronze.")).inc(rows)


def observe_silver(table: str, late: int, duplicates: int, watermark: datetime | None) -> None:
    """A silver batch's late and repeated rows and the watermark it left."""
    LATE.labels(table).inc(late)
    DUPLICATES.labels(table).inc(duplicates)
    if watermark is not None:
        WATERMARK.labels(table).set(watermark.timestamp())


def observe_decisions(observations: Iterable[dict]) -> None:
    """A batch's decisions as ``serving.stream.observations`` aggregated them on the executors: rows of
    (``metric``, labels ``a`` and ``b``, ``n`` observations, their sum ``total``), each histogram row inside one
    bucket (so ``n`` observations of its mean land in the right bucket and keep the exact sum)."""
    histograms = {"probability": PROBABILITY, "scoring": SCORING, "latency": DECISION_LATENCY}
    for o in observations:
        metric, n = o["metric"], o["n"]
        if metric == "decision":
            DECISIONS.labels(o["a"], o["b"]).inc(n)
        elif metric == "shadow":
            SHADOW.labels(o["a"], o["b"]).inc(n)
        elif metric in histograms:
            h = histograms[metric].labels(o["a"]) if metric == "probability" else histograms[metric]
            for _ in range(n):
                h.observe(o["total"] / n)


def observe_alerts(decisions: Iterable[str]) -> None:
    for decision, n in Tally(decisions).items():
        ALERTS.labels(decision).inc(n)


def observe_model_errors(stage: str, errors: int) -> None:
    MODEL_ERRORS.labels(stage).inc(errors)


def observe_anomalies(by_symbol: dict[str, int]) -> None:
    for symbol, n in by_symbol.items():
        MARKET_ANOMALIES.labels(symbol).inc(n)


def set_models(models: dict[str, object | None]) -> None:
    """The models in use by role (objects with ``name`` and ``version``, or None): one info series each."""
    with _lock:
        for role, model in models.items():
            new = None if model is None else (str(model.name), str(model.version))
            old = _models.get(role)
            if new == old:
                continue
            if old is not None:
                MODEL_INFO.remove(role, *old)
                del _models[role]
            if new is not None:
                MODEL_INFO.labels(role, *new).set(1)
                _models[role] = new
