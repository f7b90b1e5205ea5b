"""The whole streaming topology in one place: every query `make stream` runs, what it reads and where it writes.

``lakehouse.pipeline`` starts the stages in ``STAGES`` order (each stage package's ``job.start`` starts its
queries, named as here); ``python -m lakehouse.topology`` prints this table. Tables are the catalog's full names
(``lakehouse.catalog``), ``kafka:<topic>`` the topic of the setting ``eventlog.topics.<topic>``,
``redis:online-store`` the online feature store. ``tests/test_topology.py`` holds it to the catalog and the
settings, ``tests/test_medallion.py`` to the queries a real run starts.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from lakehouse.config import Settings


@dataclass(frozen=True)
class Query:
    """One streaming query: its name (and checkpoint folder), the stage package that starts it, its inputs and
    outputs, and what each micro-batch does."""

    name: str
    stage: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    does: str


SILVER_QUALITY = ("silver.quarantine", "quality.expectation_results", "silver.late_events", "silver.stream_batches")
QUERIES = (
    Query("bronze.transactions", "bronze", ("kafka:transactions",), ("bronze.transactions", "bronze.dead_letter"),
          "checks each record against its contract; bad ones go to dead letter with the reason"),
    Query("bronze.labels", "bronze", ("kafka:labels",), ("bronze.labels", "bronze.dead_letter"),
          "the same for label events"),
    Query("bronze.market_ticks", "bronze", ("kafka:market_ticks",), ("bronze.market_ticks", "bronze.dead_letter"),
          "the same for market ticks"),
    Query("silver.transactions", "silver",
          ("bronze.transactions", "bronze.labels", "silver.ref_mcc", "silver.ref_countries", "silver.ref_merchants",
           "silver.ref_terminals", "silver.ref_devices"),
          ("silver.transactions", "silver.labels", *SILVER_QUALITY),
          "types, deduplicates, enriches and quality-checks transactions; upserts labels and MERGEs them in"),
    Query("silver.market_ticks", "silver", ("bronze.market_ticks",),
          ("silver.market_ticks", "silver.late_events", "silver.stream_batches"),
          "types and deduplicates ticks"),
    Query("features.transactions", "features", ("silver.transactions",),
          ("features.transactions", "redis:online-store", "gold.decisions", "kafka:fraud_alerts",
           "kafka:fraud_review", "kafka:risk_alerts"),
          "card/terminal/merchant features in Spark's state store, then scoring on the executors: decisions and "
          "alerts"),
    Query("features.market", "features", ("silver.market_ticks",),
          ("features.market_ticks", "redis:online-store", "gold.market_anomalies", "kafka:risk_alerts"),
          "per-symbol features in Spark's state store, then the market model: anomalies and risk alerts"),
    Query("gold.daily", "gold", ("silver.transactions", "gold.decisions"),
          ("gold.card_daily", "gold.merchant_daily", "gold.mcc_daily", "gold.fraud_summary_daily",
           "gold.model_comparison"),
          "recomputes the days whose transactions or decisions changed"),
    Query("gold.market", "gold", ("silver.market_ticks",), ("gold.market_risk_daily",),
          "recomputes the days whose ticks changed"),
)  # fmt: skip
STAGES = tuple(dict.fromkeys(q.stage for q in QUERIES))  # each a package whose ``job.start`` starts its queries


def consumers(settings: Settings) -> dict[str, str]:
    """Each query that consumes the event log -> the name of the topic it reads."""
    return {q.name: getattr(settings.eventlog.topics, e.removeprefix("kafka:")).name
            for q in QUERIES for e in q.reads if e.startswith("kafka:")}  # fmt: skip


def table() -> str:
    """The topology as a Markdown table."""
    lines = ["| query | reads | writes | each micro-batch |", "|---|---|---|---|"]
    for q in QUERIES:
        lines.append(f"| `{q.name}` | {', '.join(q.reads)} | {', '.join(q.writes)} | {q.does} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")
