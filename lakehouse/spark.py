"""The SparkSession of every job, and reading the event log as a stream (same columns on either backend)."""

from __future__ import annotations

import os
import sys

from pyspark.sql import DataFrame, SparkSession

from lakehouse.config import Settings


def get_spark(settings: Settings, app_name: str = "fraud-lakehouse") -> SparkSession:
    """A SparkSession configured from settings (local mode by default, workers on this interpreter)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    sp = settings.spark
    builder = (
        SparkSession.builder.appName(app_name)
        .master(sp.master)
        .config("spark.sql.shuffle.partitions", str(sp.shuffle_partitions))
        .config("spark.driver.memory", sp.driver_memory)
        .config("spark.ui.enabled", str(sp.ui_enabled).lower())
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
        # the stages' queries share the cores: FAIR lets a small silver job run between bronze's tasks
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + str(settings.state_path / "derby"))
    )
    if sp.extra_jars:
        builder = builder.config("spark.jars", ",".join(sp.extra_jars))
    if settings.lakehouse.delta_writer == "spark":
        builder = builder.config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension").config(
            "spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog"
        )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    from lakehouse.delta_source import DeltaRsDataSource
    from lakehouse.spark_source import EventLogDataSource

    spark.dataSource.register(EventLogDataSource)
    spark.dataSource.register(DeltaRsDataSource)
    return spark


def read_event_stream(
    spark: SparkSession, settings: Settings, topic: str, max_records_per_trigger: int | None = None
) -> DataFrame:
    """A streaming DataFrame of one topic, with Kafka's source columns (key, value, topic, partition, offset,
    timestamp, timestampType) whichever backend is configured."""
    ev = settings.eventlog
    if ev.backend == "kafka":
        reader = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", ev.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest")
            .option("failOnDataLoss", "true")
        )
        if max_records_per_trigger:
            reader = reader.option("maxOffsetsPerTrigger", str(max_records_per_trigger))
        return reader.load()
    reader = spark.readStream.format("eventlog").option("url", ev.redis_url).option("topic", topic)
    if max_records_per_trigger:
        reader = reader.option("maxRecordsPerTrigger", str(max_records_per_trigger))
    return reader.load()
