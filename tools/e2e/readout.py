"""What the run reads back (the event log and the Delta tables, without Spark) and the summary's figures."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from lakehouse import delta
from lakehouse.config import Settings
from lakehouse.eventlog.producer import TOPIC_OF_KIND
from tools.e2e.invariants import FLAGGED

TABLES = [
    ("bronze", "transactions"),
    ("bronze", "labels"),
    ("bronze", "market_ticks"),
    ("bronze", "dead_letter"),
    ("silver", "transactions"),
    ("silver", "labels"),
    ("silver", "market_ticks"),
    ("silver", "late_events"),
    ("silver", "quarantine"),
    ("features", "transactions"),
    ("features", "market_ticks"),
    ("gold", "decisions"),
    ("gold", "card_daily"),
    ("gold", "merchant_daily"),
    ("gold", "mcc_daily"),
    ("gold", "fraud_summary_daily"),
    ("gold", "market_risk_daily"),
    ("gold", "market_anomalies"),
]


def _rows(settings: Settings, layer: str, name: str, columns: list[str] | None = None) -> list[dict]:
    uri = settings.table_uri(layer, name)
    return delta.read_arrow(settings, uri, columns=columns).to_pylist() if delta.table_exists(settings, uri) else []


def _log(log, topic: str) -> list[dict]:
    return [
        {
            "topic": topic,
            "partition": r.partition,
            "offset": r.offset,
            "key": (r.key or b"").decode(errors="replace"),
            "value": r.value,
        }
        for p, end in log.end_offsets(topic).items()
        for r in log.read(topic, p, 0, end)
    ]


def read_all(settings: Settings, log) -> dict:
    """The log's records and every table the invariants and the summary need."""
    topics = settings.eventlog.topics
    where = ["source_topic", "source_partition", "source_offset"]
    out: dict = {"log": [], "bronze": []}
    for attr in TOPIC_OF_KIND.values():
        topic = getattr(topics, attr).name
        out["log"] += _log(log, topic)
        out["bronze"] += [
            {"topic": r["source_topic"], "partition": r["source_partition"], "offset": r["source_offset"]}
            for r in _rows(settings, "bronze", attr, where)
        ]
    out["dead_letter"] = [
        {
            "topic": r["source_topic"],
            "partition": r["source_partition"],
            "offset": r["source_offset"],
            "key": r["key"] or "",
            "reason": r["reason"],
        }
        for r in _rows(settings, "bronze", "dead_letter", [*where, "key", "reason"])
    ]
    out["silver"] = _rows(
        settings,
        "silver",
        "transactions",
        ["transaction_id", "event_time", "event_date", "amount", "label", "label_scenario", "labeled_at"],
    )
    out["vectors"] = [r["transaction_id"] for r in _rows(settings, "features", "transactions", ["transaction_id"])]
    out["batches"] = [b for b in _rows(settings, "silver", "stream_batches") if b["query"] == "silver.transactions"]
    out["silver_ticks"] = _rows(settings, "silver", "market_ticks", ["symbol", "event_time"])
    out["decisions"] = _rows(
        settings,
        "gold",
        "decisions",
        ["transaction_id", "decision", "model_name", "model_version", "scoring_ms", "log_time", "decided_at"],
    )
    out["fraud_summary"] = _rows(settings, "gold", "fraud_summary_daily")
    out["card_daily_count"] = sum(r["txn_count"] for r in _rows(settings, "gold", "card_daily", ["txn_count"]))
    out["market_tick_count"] = sum(
        r["tick_count"] for r in _rows(settings, "gold", "market_risk_daily", ["tick_count"])
    )
    out["alerts"] = [
        json.loads(r["value"])["transaction_id"]
        for topic in (topics.fraud_alerts.name, topics.fraud_review.name)
        for r in _log(log, topic)
    ]
    out["counts"] = {
        f"{layer}.{name}": delta.open_table(settings, uri).to_pyarrow_dataset().count_rows()
        if delta.table_exists(settings, uri := settings.table_uri(layer, name))
        else 0
        for layer, name in TABLES
    }
    return out


def percentiles(values, qs=(50, 95, 99)) -> dict[str, float]:
    values = np.asarray(list(values), dtype=float)
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in qs} if values.size else {}


def figures(run, traffic, t: dict) -> dict:
    """The summary's figures: counts per table, dead letters by reason, decisions per part, detection per fraud
    scenario of the scored traffic, latencies."""
    scored = set(traffic.scored.ids())
    fraud = {e["transaction_id"]: e["scenario"] for e in traffic.events("label") if e["label"] == "fraud"}
    decision = {d["transaction_id"]: d for d in t["decisions"]}
    detection = {}
    for scenario in sorted(run.scenarios):
        ids = [i for i, s in fraud.items() if s == scenario and i in scored]
        flagged = sum(decision[i]["decision"] in FLAGGED for i in ids if i in decision)
        detection[scenario] = {
            "fraud": len(ids),
            "flagged": flagged,
            "recall": round(flagged / len(ids), 3) if ids else None,
        }
    genuine = [d for i, d in decision.items() if i in scored and i not in fraud]
    in_stream = [d for i, d in decision.items() if i in scored]
    answers = run.api.get("answers", {})
    agree = [a["decision"] == decision[i]["decision"] for i, a in answers.items() if i in decision]
    return {
        "tables": t["counts"],
        "dead_letter_reasons": dict(Counter(d["reason"] for d in t["dead_letter"]).most_common()),
        "decisions": {
            part: dict(Counter(d["decision"] for i, d in decision.items() if (i in scored) == (part == "scored")))
            for part in ("history", "scored")
        },
        "detection_scored": detection,
        "false_positive_rate_scored": round(sum(d["decision"] in FLAGGED for d in genuine) / max(1, len(genuine)), 4),
        "latency": {
            "log_to_decision_s": percentiles((d["decided_at"] - d["log_time"]).total_seconds() for d in in_stream),
            "stream_scoring_ms": percentiles(d["scoring_ms"] for d in in_stream),
            "api_ms": percentiles(run.api.get("latencies_ms", [])),
        },
        "api_stream_agreement": round(sum(agree) / len(agree), 3) if agree else None,
    }
