"""The bronze streaming job: each Kafka topic → its bronze Delta table, bad records → dead letter.

One query per topic (Spark's Kafka source); each micro-batch validates every record against its contract on
the executors and writes the valid ones to ``bronze.<table>`` and the others to ``bronze.dead_letter``, both
exactly once with Spark's Delta writer.
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


def outputs_for(settings: Settings, table: str):
    """The valid rows to ``bronze.<table>``, the others to ``bronze.dead_letter``."""
    good = Output(f"bronze.{table}", settings.table_uri("bronze", table), ("event_date",))
    bad = Output("bronze.dead_letter", settings.table_uri("bronze", "dead_letter"), ("log_date",))

    def outputs(validated: DataFrame):
        return [(good, accepted(validated)), (bad, dead_letters(validated))]

    return outputs


def validator(settings: Settings, kind: str):
    """Each record of a micro-batch checked against the ``kind`` contract (on the executors)."""
    limits = Limits.from_settings(settings)
    return lambda batch: validate_records(batch, kind, limits)


def start(
    spark: SparkSession, settings: Settings, trigger: dict | None = None, max_records_per_trigger: int | None = None
) -> list[StreamingQuery]:
    max_records_per_trigger = max_records_per_trigger or settings.streaming.max_records_per_trigger
    queries = []
    for topic_attr, (table, kind) in BRONZE_TABLES.items():
        topic = getattr(settings.eventlog.topics, topic_attr).name
        source = read_event_stream(spark, settings, topic, max_records_per_trigger)
        name = f"bronze.{table}"
        outputs = outputs_for(settings, table)
        queries.append(
            start_to_delta(settings, name, source, outputs, stage=validator(settings, kind), trigger=trigger)
        )
    return queries
