"""No streaming stage collects a micro-batch to the driver: bronze, silver and gold run with a driver that refuses
any result over 1 MB (``spark.driver.maxResultSize``), on batches several times that size."""

from __future__ import annotations

import json
import os

import pytest
from support import run

from lakehouse import delta, eventlog
from lakehouse.config import isolated

START = "2026-03-09T08:00:00Z"
LIMIT = "1m"
# the feature and decision stages still collect their batch (Part 9 step c2 moves them into Spark's state)
EXECUTOR_STAGES = "bronze,silver,gold"


@pytest.fixture(scope="module")
def lake(stack, tmp_path_factory):
    root = tmp_path_factory.mktemp("no-collect")
    conf = json.dumps({"spark.driver.maxResultSize": LIMIT})
    settings, env = isolated(root, "nocollect", {"LAKEHOUSE__SPARK__CONF": conf})
    log = eventlog.from_settings(settings)
    eventlog.ensure_topics(log, settings)
    yield settings, {**os.environ, **env}
    log.close()


def test_bronze_silver_and_gold_never_collect_a_batch(lake, spark):
    settings, env = lake
    run(env, "-m", "lakehouse.traffic", "generate", "--rate", "3", "--start", START, "--days", "0.05",
        "--speedup", "0", "--label-delay-days", "0.005", "--seed", "5")  # fmt: skip
    out = run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now", "--stages", EXECUTOR_STAGES)
    assert "maxResultSize" not in out
    bronze = delta.read(spark, settings.table_uri("bronze", "transactions"))
    payload_bytes = bronze.selectExpr("sum(length(payload))").first()[0]
    assert payload_bytes > 4 * 1024 * 1024  # collecting any batch of them to the driver would have failed the run
    silver = delta.read(spark, settings.table_uri("silver", "transactions"))
    assert bronze.count() >= silver.count() > 10_000
    days = [r.event_date for r in silver.select("event_date").distinct().collect()]
    gold = delta.read(spark, settings.table_uri("gold", "fraud_summary_daily"))
    assert sorted(r.event_date for r in gold.collect()) == sorted(days)
    assert gold.selectExpr("sum(total_count)").first()[0] == silver.count()
