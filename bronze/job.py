"""The bronze streaming job: each topic of the event log → its bronze Delta table, bad records → dead letter.

One query per topic; each micro-batch validates every record against its contract and writes the valid
ones to ``bronze.<table>`` and the others to ``bronze.dead_letter``, both exactly once.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from bronze.transforms import accepted, dead_letters, validate_records
from lakehouse.config import Settings
from lakehouse.contracts import Limits
from lakehouse.spark import read_event_stream
from lakehouse.streaming import Output, start_to_delta

# topic setting -> (bronze table, contract kind)
BRONZE_TABLES = {
    "transactions": ("transactions", "transaction"),
    "labels": ("labels", "label"),
    "market_ticks": ("market_ticks", "market_tick"),
}


def outputs_for(settings: Settings, table: str, kind: str):
    limits = Limits.from_settings(settings)
    good = Output(f"bronze.{table}", settings.table_uri("bronze", table), ("event_date",))
    bad = Output("bronze.dead_letter", settings.table_uri("bronze", "dead_letter"), ("log_date",))

    def outputs(batch: DataFrame):
        validated = validate_records(batch, kind, limits)
        return [(good, accepted(validated)), (bad, dead_letters(validated))]

    return outputs


def start(
    spark: SparkSession, settings: Settings, trigger: dict | None = None, max_records_per_trigger: int | None = None
) -> list[StreamingQuery]:
    max_records_per_trigger = max_records_per_trigger or settings.streaming.max_records_per_trigger
    queries = []
    for topic_attr, (table, kind) in BRONZE_TABLES.items():
        topic = getattr(settings.eventlog.topics, topic_attr).name
        source = read_event_stream(spark, settings, topic, max_records_per_trigger)
        queries.append(
            start_to_delta(settings, f"bronze.{table}", source, outputs_for(settings, table, kind), trigger=trigger)
        )
    return queries
