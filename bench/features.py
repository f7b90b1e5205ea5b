"""The feature-layer benchmark, on its own tables and online-store keys.

1. Online: generated transactions go through the online engine in one process (``transactions_batch``: the steps
   the stream's stateful operators run, without Spark; batches of 2,000:
   transactions/s), their states are written to Redis; then single requests of new transactions are computed
   as the API does (``RequestFeatures``: one pipelined Redis read + the online engine), p50/p99 per request.
2. Offline: the same transactions (with their labels) as a silver table; ``build-training-set`` over it
   (Spark window functions, chunked by days): transactions/s.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from bench.run import percentiles, report
from features import online
from features.request import ReferenceLookup, RequestFeatures
from features.store import OnlineStore
from lakehouse import delta
from lakehouse.catalog import TRANSACTIONS
from lakehouse.config import Settings, isolated
from lakehouse.tables import ensure
from silver import reference
from tools.traffic.generator import GeneratorConfig, TrafficGenerator

BATCH = 2000
PLACE_KEYS = ("transaction_id", "terminal_id", "merchant_id")


def _silver_table(txs: list[dict], labels: dict[str, dict]) -> pa.Table:
    """Generated transactions as silver rows (the columns the features need; the rest null)."""
    cols = {f.name: [] for f in TRANSACTIONS.schema}
    for tx in txs:
        label = labels.get(tx["transaction_id"], {})
        row = {
            **tx,
            "event_time": datetime.fromtimestamp(tx["event_time"] / 1000, UTC),
            "event_date": datetime.fromtimestamp(tx["event_time"] / 1000, UTC).date(),
            "label": label.get("label"),
            "label_reported_at": (datetime.fromtimestamp(label["reported_at"] / 1000, UTC) if label else None),
        }
        for name in cols:
            cols[name].append(row.get(name))
    return pa.table(cols, schema=TRANSACTIONS.schema)


@dataclass
class FeatureLake:
    """What the features bench leaves for the next benches: its isolated lakehouse (settings and the process
    environment that selects it), the days of its training set, and the fresh transactions it requested, whose
    cards' states stay in the online store until ``clear``."""

    settings: Settings
    env: dict[str, str]
    days: list
    fresh: list[dict]

    def clear(self) -> None:
        OnlineStore(self.settings).clear()


def run(settings: Settings, n: int, requests: int = 5000) -> tuple[list[dict], dict, FeatureLake]:
    """The feature figures, and the lake it leaves (see ``FeatureLake``)."""
    root = Path(tempfile.mkdtemp(prefix="bench-features-"))
    iso, iso_env = isolated(root, "bench-features")
    reference.load(iso)
    lookup = ReferenceLookup(iso)
    gen = TrafficGenerator(GeneratorConfig(seed=7, rate=1, customers=5000, label_delay_days=2)).events()
    txs, labels = [], {}
    while len(txs) < n + requests:
        kind, event = next(gen)
        if kind == "transaction":
            txs.append(event)
        else:
            labels[event["transaction_id"]] = event
    history, fresh = txs[:n], txs[n:]

    rows = []
    states: dict = {}

    def state(entity: str, key: str) -> dict:
        return states.setdefault((entity, key), online.NEW_STATE[entity]())

    retention = online.raw_retention_ms(settings.streaming.allowed_lateness_s)
    enriched = [{**lookup.enrich(t), "ts": t["event_time"]} for t in history]
    by_id = {t["transaction_id"]: t for t in history}
    fraud = sorted(
        (
            {**{k: by_id[t][k] for k in PLACE_KEYS}, "reported_ms": lb["reported_at"]}
            for t, lb in labels.items()
            if lb["label"] == "fraud" and t in by_id
        ),
        key=lambda f: f["reported_ms"],
    )
    t0 = time.perf_counter()
    j = 0
    for i in range(0, len(enriched), BATCH):
        chunk = enriched[i : i + BATCH]
        k = j
        while k < len(fraud) and fraud[k]["reported_ms"] <= chunk[-1]["ts"]:
            k += 1
        online.transactions_batch(state, chunk, fraud[j:k], retention)
        j = k
        if (i // BATCH) % 100 == 99:
            print(f"    online engine: {i + len(chunk):,}/{n:,} transactions", flush=True)
    rows.append(report("features: online engine in one process (batches of 2000)", n, time.perf_counter() - t0))

    store = OnlineStore(iso)
    store.clear()
    t0 = time.perf_counter()
    keys = list(states)
    for i in range(0, len(keys), 1000):
        store.save({k: states[k] for k in keys[i : i + 1000]}, "bench")
    rows.append(report("features: states -> Redis (pipelined)", len(keys), time.perf_counter() - t0))

    api = RequestFeatures(iso, lookup)
    latencies, reads = [], []
    for tx in fresh:
        t1 = time.perf_counter()
        result = api.compute(tx)
        latencies.append((time.perf_counter() - t1) * 1000)
        reads.append(result.online_ms)
        assert result.status == "ok"
    request = {"requests": len(fresh), **percentiles(latencies), "redis_read": percentiles(reads)}
    print(
        f"  features: request (Redis read + compute)      p50 {request['p50_ms']} ms  p99 {request['p99_ms']} ms"
        f"  (Redis read p50 {request['redis_read']['p50_ms']} ms)",
        flush=True,
    )

    # offline: the history as silver, then a training set over its days
    from features.training_set import build
    from lakehouse.spark import get_spark

    uri = ensure(iso, TRANSACTIONS)
    table = _silver_table(history, labels)
    delta.write_batch(iso, uri, table, app_id="bench", batch_id=0, partition_by=TRANSACTIONS.partition_by)
    days = sorted({d for d in table.column("event_date").to_pylist()})
    spark = get_spark(iso, "bench-features")
    try:
        t0 = time.perf_counter()
        out = build(spark, iso, days[0], days[-1], timedelta(days=7))
        rows.append(report("features: build-training-set (Spark)", out["rows"], time.perf_counter() - t0))
    finally:
        spark.stop()
    return rows, request, FeatureLake(iso, iso_env, days, fresh)
