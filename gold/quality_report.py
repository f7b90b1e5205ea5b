"""``python -m gold.quality_report report [--days N]`` (``make quality-report``): the browsable data-quality report.

Validates the newest N event dates (default 7) of silver.transactions and of the gold daily tables that have a
suite, read with Spark's Delta reader, with a file-backed Great Expectations context under
``<state>/quality/gx``: one Checkpoint per table whose action builds the GX Data Docs. Prints a pass/fail line
per suite and the ``file://…/index.html`` of the Data Docs (which keep every earlier run too).

The stream's own per-batch results stay in ``quality.expectation_results`` (what Prometheus and Grafana read).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from lakehouse import quality
from lakehouse.config import Settings, get_settings
from lakehouse.storage import storage_options

DEFAULT_DAYS = 7
DATASOURCE = "lakehouse"
BATCH = "newest days"
# the report may show a few unexpected values per expectation (it is no stream: collecting 20 values is fine)
REPORT_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}


def checked_tables() -> dict[str, quality.Suite]:
    """{table: its suite}: silver.transactions and the gold daily aggregates."""
    from gold.expectations import SUITES
    from silver.expectations import TRANSACTIONS

    return {"silver.transactions": TRANSACTIONS, **SUITES}


def table_uri(settings: Settings, table: str) -> str:
    layer, name = table.split(".", 1)
    return settings.table_uri(layer, name)


def existing(settings: Settings, names: list[str]) -> list[str]:
    """The tables of ``names`` that exist (read from their Delta logs with delta-rs: no Spark needed to say no)."""
    out = []
    for name in names:
        uri = table_uri(settings, name)
        if DeltaTable.is_deltatable(uri, storage_options=storage_options(settings, uri)):
            out.append(name)
    return out


@dataclass(frozen=True)
class SuiteSummary:
    table: str
    suite: str
    first_day: date
    last_day: date
    rows: int
    evaluated: int
    met: int
    failed: list[str]

    @property
    def success(self) -> bool:
        return not self.failed

    def line(self) -> str:
        verdict = "passed" if self.success else f"FAILED: {', '.join(self.failed)}"
        table = "" if self.table == self.suite else f" of {self.table}"
        return (
            f"{self.suite}: {self.met}/{self.evaluated} expectations met on {self.rows} rows{table} dated "
            f"{self.first_day}..{self.last_day}, {verdict}"
        )


def context(settings: Settings):
    """The file-backed GX context of the report (created on first use; usage statistics and progress bars off)."""
    gx = quality.gx()
    root = settings.state_path / "quality"
    root.mkdir(parents=True, exist_ok=True)
    ctx = gx.get_context(mode="file", project_root_dir=str(root))
    ctx.variables.analytics_enabled = False
    ctx.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    ctx.variables.save()
    return ctx


def _batch_definition(ctx, table: str):
    try:
        source = ctx.data_sources.get(DATASOURCE)
    except (KeyError, ValueError, LookupError):
        source = ctx.data_sources.add_spark(DATASOURCE, persist=False)
    try:
        asset = source.get_asset(table)
    except LookupError:
        asset = source.add_dataframe_asset(table)
    try:
        return asset.get_batch_definition(BATCH)
    except (KeyError, LookupError):
        return asset.add_batch_definition_whole_dataframe(BATCH)


def _newest_days(df: DataFrame, days: int) -> tuple[DataFrame, date, date] | None:
    """The rows of the newest ``days`` event dates (None for an empty table)."""
    last = df.agg(F.max("event_date")).first()[0]
    if last is None:
        return None
    first = last - timedelta(days=days - 1)
    return df.where(F.col("event_date") >= F.lit(first)), first, last


def _check_table(ctx, spark: SparkSession, settings: Settings, table: str, suite: quality.Suite, days: int):
    gx = quality.gx()
    df = spark.read.format("delta").load(table_uri(settings, table))
    newest = _newest_days(df, days)
    if newest is None:
        return None
    df, first, last = newest
    data = suite.frame(df).persist()
    try:
        gx_suite = ctx.suites.add_or_update(suite.gx_suite())
        definition = ctx.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=table, data=_batch_definition(ctx, table), suite=gx_suite)
        )
        checkpoint = ctx.checkpoints.add_or_update(
            gx.Checkpoint(
                name=f"quality report {table}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="update data docs")],
                result_format=REPORT_RESULT_FORMAT,
            )
        )
        params = {}
        col = suite.freshness_column
        if col is not None:  # (a missing or non-time column gets a bound too: GX reports the expectation failed)
            fresh_after = datetime.now(UTC) - timedelta(seconds=suite.max_staleness_s)
            bound = quality.freshness_bound(data.schema[col].dataType, fresh_after) if col in data.columns else None
            params[quality.freshness_parameter(col)] = fresh_after if bound is None else bound
        run = checkpoint.run(batch_parameters={"dataframe": data}, expectation_parameters=params)
        (validation,) = run.run_results.values()
        results = validation.results
        failed = [r.expectation_config.meta.get("check", r.expectation_config.type) for r in results if not r.success]
        rows = max((r.result or {}).get("element_count", 0) for r in results) if results else 0
        return SuiteSummary(table, suite.name, first, last, rows, len(results), len(results) - len(failed), failed)
    finally:
        data.unpersist()


def report(spark: SparkSession, settings: Settings, days: int = DEFAULT_DAYS) -> tuple[str, list[SuiteSummary]]:
    """Validate the newest ``days`` of every checked table that exists and has rows; (Data Docs index URL,
    one summary per suite). Raises FileNotFoundError when there is nothing to check."""
    suites = checked_tables()
    found = existing(settings, list(suites))
    if not found:
        raise FileNotFoundError(
            f"no checked table under {settings.lakehouse.root} yet ({', '.join(suites)}): run `make stream` or "
            "`make backfill` first"
        )
    ctx = context(settings)
    summaries = []
    for table in found:
        summary = _check_table(ctx, spark, settings, table, suites[table], days)
        if summary is not None:
            summaries.append(summary)
    if not summaries:
        raise FileNotFoundError(f"the checked tables have no rows yet ({', '.join(found)}): nothing to validate")
    (site,) = ctx.get_docs_sites_urls()[:1]
    return site["site_url"], summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gold.quality_report", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="validate the newest days of the checked tables and build GX Data Docs")
    r.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"newest event dates (default {DEFAULT_DAYS})")
    args = parser.parse_args(argv)
    if args.days < 1:
        parser.error("--days must be at least 1")

    settings = get_settings()
    suites = checked_tables()
    if not existing(settings, list(suites)):  # said before a Spark session is started for nothing
        raise SystemExit(
            f"quality report: no checked table under {settings.lakehouse.root} yet ({', '.join(suites)}): "
            "run `make stream` or `make backfill` first"
        )
    from lakehouse.spark import get_spark

    spark = get_spark(settings, "quality-report")
    try:
        url, summaries = report(spark, settings, args.days)
    except FileNotFoundError as exc:
        raise SystemExit(f"quality report: {exc}") from None
    finally:
        spark.stop()
    for s in summaries:
        print(s.line())
    print(f"Data Docs: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
