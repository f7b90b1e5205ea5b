"""The SparkSession of every job (with the JVM parts `make install` fetched), and the event log as a stream."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from lakehouse.config import Settings

DELTA = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    # a table's snapshot is rebuilt with 50 tiny tasks by default, and VACUUM lists files with 10,000: on two
    # cores both cost seconds for nothing
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
}


def s3a_conf(settings: Settings) -> dict[str, str]:
    """Hadoop S3A on the configured S3 endpoint (the stack's SeaweedFS, MinIO, or AWS), for ``s3a://`` tables and
    checkpoints. Delta's default log store for ``s3a`` (S3SingleDriverLogStore) is right for one writer per table."""
    s3 = settings.s3
    return {
        "spark.hadoop.fs.s3a.endpoint": s3.endpoint_url,
        "spark.hadoop.fs.s3a.endpoint.region": s3.region,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(s3.endpoint_url.startswith("https://")).lower(),
        "spark.hadoop.fs.s3a.access.key": s3.access_key,
        "spark.hadoop.fs.s3a.secret.key": s3.secret_key,
        "spark.hadoop.fs.s3a.aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
    }


def get_spark(settings: Settings, app_name: str = "fraud-lakehouse") -> SparkSession:
    """A SparkSession configured from settings (local mode by default, workers on this interpreter)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    sp = settings.spark
    if sp.master.startswith(("local", "spark://127.0.0.1:", "spark://localhost:")):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # else the driver binds (and warns about) eth0
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
        # the feature operators' state (transformWithState needs RocksDB)
        .config(
            "spark.sql.streaming.stateStore.providerClass",
            "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider",
        )
        # the stages' queries share the cores: FAIR lets a small silver job run between bronze's tasks
        .config("spark.scheduler.mode", "FAIR")
        .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + str(settings.state_path / "derby"))
    )
    jars = {"spark.jars": ",".join(spark_jars(settings))}
    for key, value in {**DELTA, **s3a_conf(settings), **jars, **sp.conf}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark


def spark_jars(settings: Settings) -> list[str]:
    """Every jar of ``spark.jars_dir`` (Maven's, fetched by `make install`): a missing folder is a clear error,
    not a query that fails on its first Kafka read."""
    folder = settings.path(settings.spark.jars_dir)
    jars = sorted(str(p) for p in folder.glob("*.jar"))
    if not any("spark-sql-kafka" in Path(j).name for j in jars):
        raise RuntimeError(f"no Spark jars in {folder}: run `make install` (it fetches them from Maven with mvn)")
    return jars


def read_event_stream(
    spark: SparkSession, settings: Settings, topic: str, max_records_per_trigger: int | None = None
) -> DataFrame:
    """A streaming DataFrame of one Kafka topic (key, value, topic, partition, offset, timestamp, timestampType)
    through Spark's Kafka source; offsets live in the query's checkpoint."""
    reader = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.eventlog.kafka_bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", "earliest")
        .option("failOnDataLoss", "true")
    )
    if max_records_per_trigger:
        reader = reader.option("maxOffsetsPerTrigger", str(max_records_per_trigger))
    return reader.load()
