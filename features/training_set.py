"""Point-in-time-correct training sets from the Delta history (``python -m features build-training-set``).

Every vector is computed as of its transaction's own event time by ``features.offline`` (earlier events and
fraud labels reported before that time only), over silver.transactions read with its 30-day look-back. The
label is what was known by the cut-off (the day after ``end`` plus ``label_delay``): 1 if a fraud label was
reported by then, else 0, and ``label_known`` says whether any label was. The range is built a chunk of days at
a time (``features.training_chunk_days``), each chunk's partitions replaced, so memory stays bounded and a
failed build resumes by re-running.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features import offline
from lakehouse import delta
from lakehouse.catalog import TRANSACTIONS, training_set
from lakehouse.config import Settings
from lakehouse.feature_definitions import FEATURE_VERSION, LOOKBACK
from lakehouse.tables import conform_df, ensure


def label_cutoff(end: date, label_delay: timedelta) -> datetime:
    return datetime.combine(end + timedelta(days=1), dtime(), UTC) + label_delay


def _silver(spark: SparkSession, settings: Settings, start: date, end: date) -> DataFrame:
    return delta.read_days(spark, TRANSACTIONS.uri(settings), start, end)


def training_rows(tx: DataFrame, labels: DataFrame, start: date, end: date, cutoff: datetime) -> DataFrame:
    """Pure: the training vectors of ``tx``'s transactions dated ``start``..``end`` (``tx`` holds their
    history), labelled as known at ``cutoff``; ``labels`` are the fraud-label events the features may count."""
    feats = offline.transaction_features(tx, labels.where(F.col("_ts") < int(cutoff.timestamp() * 1000)))
    feats = feats.where(F.col("event_date").between(F.lit(start), F.lit(end)))
    known = F.col("label_reported_at").isNotNull() & (F.col("label_reported_at") <= F.lit(cutoff))
    label = tx.select(
        "transaction_id",
        "amount",
        F.when(known & (F.col("label") == "fraud"), 1).otherwise(0).cast("int").alias("label"),
        known.alias("label_known"),
        F.when(known, F.col("label_reported_at")).alias("label_reported_at"),
        F.when(known, F.col("label_scenario")).alias("label_scenario"),
    )
    return feats.join(label, "transaction_id").withColumn("label_cutoff", F.lit(cutoff))


def build(
    spark: SparkSession,
    settings: Settings,
    start: date,
    end: date,
    label_delay: timedelta,
    table: str = "training_set",
    chunk_days: int | None = None,
) -> dict:
    """Build (or rebuild) the training set ``features.<table>`` for event dates ``start``..``end``."""
    spec = training_set(table)
    uri = ensure(settings, spec)
    cutoff = label_cutoff(end, label_delay)
    chunk = timedelta(days=chunk_days or settings.features.training_chunk_days)
    horizon = timedelta(days=settings.streaming.label_horizon_days)
    total, t_all, lo = 0, time.monotonic(), start
    while lo <= end:
        t0 = time.monotonic()
        hi = min(lo + chunk - timedelta(days=1), end)
        history = lo - timedelta(days=LOOKBACK.tiles // 24 + 1)
        tx = _silver(spark, settings, history, hi)
        # labels of older transactions can be reported inside the window: read them further back
        labels = offline.fraud_label_events(_silver(spark, settings, history - horizon, hi))
        rows = conform_df(
            training_rows(tx, labels, lo, hi, cutoff),
            spec,
            feature_version=F.lit(FEATURE_VERSION),
            built_at=F.current_timestamp(),
        )
        app_id, run, started_ms = f"training-set/{table}", time.time_ns(), int(time.time() * 1000)
        delta.write_batch_spark(rows, uri, app_id=app_id, batch_id=run, partition_by=spec.partition_by,
                                replace_where=delta.days_predicate(lo, hi))  # fmt: skip
        n = delta.commit_of(spark, uri, app_id, run, started_ms)[0]
        total += n
        elapsed = time.monotonic() - t0
        print(
            f"training set {spec.full_name}: {lo}..{hi} {n} vectors in {elapsed:.1f} s "
            f"({n / max(elapsed, 1e-9):,.0f}/s); {total} so far",
            file=sys.stderr,
            flush=True,
        )
        lo = hi + timedelta(days=1)
    elapsed = time.monotonic() - t_all
    return {"table": spec.full_name, "rows": total, "seconds": elapsed, "cutoff": cutoff.isoformat()}
