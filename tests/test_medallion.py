"""The whole medallion on real services: Kafka → bronze → silver → features → decisions → gold on the S3 server,
run as `make stream` runs it, with no micro-batch collected to the driver.

Two passes of ``python -m lakehouse.pipeline --available-now`` (a real process each) over generated traffic; the
second pass adds repeats of recent transactions, one event beyond the allowed lateness and malformed records.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections import Counter

import duckdb
import pytest
from support import run

from lakehouse import delta, eventlog, topology
from lakehouse.config import Settings, isolated
from lakehouse.maintenance import as_of

START = "2026-03-02T08:00:00Z"
PIPELINE = ("--no-traffic", "--available-now", "--stages", "bronze,silver,features,gold")


@pytest.fixture(scope="module")
def medallion(stack, tmp_path_factory):
    """Settings (and the matching environment) of an isolated lakehouse: own topics and checkpoints, its tables on
    the stack's S3 server over ``s3a://`` (as the local profile's are), and a Spark driver that refuses any result
    over 1 MB: a stage collecting a micro-batch to the driver fails the run."""
    root = tmp_path_factory.mktemp("medallion")
    tables = f"s3a://{stack.s3.bucket}/tests/{root.name}-{uuid.uuid4().hex[:8]}"
    overrides = {
        "LAKEHOUSE__STREAMING__ALLOWED_LATENESS_S": "600",
        "LAKEHOUSE__LAKEHOUSE__ROOT": tables,
        "LAKEHOUSE__SPARK__CONF": json.dumps({"spark.driver.maxResultSize": "1m"}),
        # no model is registered under these names: rules and statistics decide (the models' path is in
        # test_decisions_stream)
        **{
            f"LAKEHOUSE__MODELS__{role}_NAME": f"medallion-{root.name}-{role.lower()}"
            for role in ("SUPERVISED", "UNSUPERVISED", "MARKET")
        },
    }
    settings, env = isolated(root, "medallion", overrides)
    log = eventlog.from_settings(settings)
    eventlog.ensure_topics(log, settings)
    yield settings, {**os.environ, **env}, log
    log.close()


def table(settings: Settings, layer: str, name: str, version: int | None = None):
    return delta.read_arrow(settings, settings.table_uri(layer, name), version)


def dropped(settings: Settings) -> Counter:
    """Transactions silver counted but did not insert, by why."""
    out = Counter()
    for s in table(settings, "silver", "stream_batches").to_pylist():
        if s["query"] == "silver.transactions":
            out.update(
                duplicate=s["duplicates_in_batch"] + s["duplicates_seen_before"],
                late=s["late"],
                quarantined=s["quarantined"],
            )
    return +out


def test_medallion_end_to_end(medallion):
    settings, env, log = medallion
    topic = settings.eventlog.topics.transactions.name
    run(env, "-m", "tools.traffic", "generate", "--rate", "1.5", "--start", START, "--days", "0.07",
        "--speedup", "0", "--label-delay-days", "0.005", "--with-market", "--seed", "11")  # fmt: skip
    first = run(env, "-m", "lakehouse.pipeline", *PIPELINE)
    # the run started exactly the queries of the topology (each printed its first batch)
    assert set(re.findall(r"^\[([a-z_]+\.[a-z_]+)\] batch 0:", first, re.M)) == {q.name for q in topology.QUERIES}
    assert "[silver.transactions] batch 0" in first and "[gold.daily] batch 0" in first
    assert "[features.transactions] batch 0" in first
    # silver's first batch is all of bronze: collecting it to the driver would have broken the 1 MB limit
    payloads = table(settings, "bronze", "transactions").column("payload")
    assert sum(len(p) for p in payloads.to_pylist()) > 2 * 1024 * 1024

    silver_v1 = table(settings, "silver", "transactions")
    ids = silver_v1.column("transaction_id").to_pylist()
    assert len(ids) == len(set(ids)) > 1000
    dropped_v1 = dropped(settings)
    # repeats of the 25 most recent transactions (within the watermark), one transaction 40 min older than the
    # newest (beyond the 10 min allowed lateness) and two malformed records
    raw = [r for p, end in log.end_offsets(topic).items() for r in log.read(topic, p, 0, end)]
    events = sorted((json.loads(r.value) for r in raw), key=lambda e: e["event_time"])
    repeats = events[-25:]
    late = {**events[-1], "transaction_id": "late-one", "event_time": events[-1]["event_time"] - 40 * 60_000}
    log.produce_batch(topic, [(e["card_id"], json.dumps(e).encode()) for e in [*repeats, late]])
    log.produce_batch(topic, [(b"x", b"{broken"), (b"x", b'{"transaction_id": "no-fields"}')])
    second = run(env, "-m", "lakehouse.pipeline", *PIPELINE)
    assert "late" in second

    silver = table(settings, "silver", "transactions")
    ids = silver.column("transaction_id").to_pylist()
    assert len(ids) == len(set(ids)) == silver_v1.num_rows  # no repeat inserted, the late one not either
    assert dropped(settings) - dropped_v1 == Counter({"duplicate": 25, "late": 1})
    late_rows = table(settings, "silver", "late_events").to_pylist()
    assert [(r["event_id"], r["reason"]) for r in late_rows] == [("late-one", "beyond_allowed_lateness")]
    assert late_rows[0]["lateness_s"] > 1000
    dead = table(settings, "bronze", "dead_letter").to_pylist()
    assert Counter(d["reason"] for d in dead) == Counter({"malformed_json": 1, "schema_required": 1})

    # every bronze transaction is in silver exactly once (bronze holds the repeats and the late one too)
    bronze_rows = table(settings, "bronze", "transactions").num_rows
    assert bronze_rows == silver.num_rows + sum(dropped(settings).values())

    # labels: every label whose transaction is in silver was merged in, with when it became known
    labels = {r["transaction_id"]: r for r in table(settings, "silver", "labels").to_pylist()}
    labelled = {r["transaction_id"]: r for r in silver.to_pylist() if r["label"] is not None}
    assert labelled and set(labelled) == set(labels) & set(ids)
    assert all(r["labeled_at"] is not None and r["label"] == labels[t]["label"] for t, r in labelled.items())
    # every silver transaction has its feature vector, computed once, in Spark's state store
    vectors = table(settings, "features", "transactions")
    assert sorted(vectors.column("transaction_id").to_pylist()) == sorted(ids)
    assert (
        vectors.column("card_tx_count_24h").null_count == 0 and max(vectors.column("card_tx_count_24h").to_pylist()) > 1
    )
    assert table(settings, "features", "market_ticks").num_rows == table(settings, "silver", "market_ticks").num_rows
    # one decision per transaction, made on the executors; each review or block raised one alert
    decisions = table(settings, "gold", "decisions").to_pylist()
    assert sorted(d["transaction_id"] for d in decisions) == sorted(ids)
    assert all(d["model_name"] is None and d["rules_version"] and d["latency_ms"] >= 0 for d in decisions)
    flagged = {d["transaction_id"] for d in decisions if d["decision"] != "approve"}
    topics = (settings.eventlog.topics.fraud_alerts.name, settings.eventlog.topics.fraud_review.name)
    alerts = [json.loads(r.value)["transaction_id"] for t in topics for p, end in log.end_offsets(t).items()
              for r in log.read(t, p, 0, end)]  # fmt: skip
    assert flagged and sorted(alerts) == sorted(flagged)
    # enrichment from the reference tables
    assert all(r["mcc_category"] for r in silver.to_pylist())

    # time travel: the version before the label MERGE holds the same transactions without labels
    history = delta.history(settings, settings.table_uri("silver", "transactions"))
    first_insert = min(h["version"] for h in history if h.get("operation") == "MERGE")
    before = as_of(settings, settings.table_uri("silver", "transactions"), version=first_insert)
    assert before.num_rows > 0 and before.column("label").null_count == before.num_rows

    # gold equals an independent computation over silver (DuckDB over Arrow)
    gold = {r["event_date"]: r for r in table(settings, "gold", "fraud_summary_daily").to_pylist()}
    expected = duckdb.sql(
        "SELECT event_date, count(*) n, sum(amount) amt, count(*) FILTER (WHERE label = 'fraud') f, "
        "coalesce(sum(amount) FILTER (WHERE label = 'fraud'), 0) famt FROM silver GROUP BY 1"
    ).fetchall()
    assert len(gold) == len(expected) > 0
    for day, n, amt, f, famt in expected:
        g = gold[day]
        assert (g["total_count"], g["fraud_count"]) == (n, f)
        assert g["total_amount"] == pytest.approx(amt) and g["fraud_amount"] == pytest.approx(famt)
    cards = table(settings, "gold", "card_daily")
    assert sum(cards.column("txn_count").to_pylist()) == silver.num_rows
    market = table(settings, "gold", "market_risk_daily").to_pylist()
    assert market and all(m["low"] <= m["open"] <= m["high"] and m["tick_count"] > 1 for m in market)
