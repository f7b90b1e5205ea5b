"""Data quality expectations on micro-batches: pandera (Polars backend) suites that quarantine, never crash.

``run`` validates one Arrow micro-batch against a ``Suite`` and splits it into the rows that meet every
row-level check and the quarantined rest (each with the checks it failed); a check that cannot be tied to
rows (a wrong dtype, a missing column, a check that errors) fails the whole batch. Freshness is a
table-level check: it is reported, never quarantines. ``record`` writes the per-expectation results to
``quality.expectation_results`` and the quarantined rows to ``silver.quarantine`` (exactly once per batch)
and counts failures in Prometheus counters exported as a node-exporter textfile (and served by the stream's
exporter, ``lakehouse.observability``).

Check names are ``<column>:<check>`` for column checks (``amount:not_nullable``, ``amount:dtype``,
``channel:accepted_values``) and the bare check name for dataframe-level checks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pandera.backends.polars.builtin_checks  # noqa: F401  (registers the built-in checks for Polars data)
import polars as pl
import pyarrow as pa
from pandera.backends.polars.checks import PolarsCheckBackend
from pandera.config import config_context
from pandera.constants import CHECK_OUTPUT_KEY
from pandera.errors import SchemaErrors
from pandera.polars import DataFrameSchema, PolarsData
from prometheus_client import CollectorRegistry, Counter, write_to_textfile

from lakehouse import delta, tables
from lakehouse.config import Settings
from lakehouse.tables import TS, TableSpec

log = logging.getLogger(__name__)

EXPECTATION_RESULTS = tables.register(
    TableSpec(
        "quality",
        "expectation_results",
        pa.schema(
            [
                pa.field("run_at", TS),
                pa.field("suite", pa.string()),
                pa.field("table_name", pa.string()),
                pa.field("query_id", pa.string()),
                pa.field("batch_id", pa.int64()),
                pa.field("check_name", pa.string()),
                pa.field("column_name", pa.string()),
                pa.field("failed_count", pa.int64()),
                pa.field("total_count", pa.int64()),
                pa.field("success", pa.bool_()),
                pa.field("run_date", pa.date32()),
            ]
        ),
        ("run_date",),
        "One row per expectation per checked micro-batch: failed and total counts, success.",
    )
)

QUARANTINE = tables.register(
    TableSpec(
        "silver",
        "quarantine",
        pa.schema(
            [
                pa.field("suite", pa.string()),
                pa.field("table_name", pa.string()),
                pa.field("failed_checks", pa.string()),
                pa.field("row_json", pa.string()),
                pa.field("quarantined_at", TS),
                pa.field("quarantine_date", pa.date32()),
            ]
        ),
        ("quarantine_date",),
        "Rows that failed a row-level expectation (or a batch-level one), as JSON, with the failed checks.",
    )
)

FAILED_CHECKS_SEP = ";"
_FAILURES_SCHEMA = {"index": pl.Int64, "name": pl.String, "column": pl.String}
SUITE_ERROR = "suite_error"

REGISTRY = CollectorRegistry()
CHECKS_FAILED = Counter(
    "lakehouse_quality_checks_failed",
    "Expectations that failed, one per failing expectation per checked micro-batch.",
    ["suite", "check"],
    registry=REGISTRY,
)
ROWS_QUARANTINED = Counter(
    "lakehouse_quality_rows_quarantined",
    "Rows quarantined by a quality suite.",
    ["suite"],
    registry=REGISTRY,
)


@dataclass(frozen=True)
class Suite:
    """A named pandera-polars schema plus an optional table-level freshness check.

    Freshness passes when the newest ``freshness_column`` value is at most ``max_staleness_s`` seconds
    older than ``now`` (an empty batch is fresh). Only the columns the schema declares (and the freshness
    column) are validated, so dataframe-level checks may use those only (all columns for a strict schema).
    """

    name: str
    schema: DataFrameSchema
    freshness_column: str | None = None
    max_staleness_s: float | None = None
    # every (check name, column) the suite reports on, in order
    expectations: tuple[tuple[str, str | None], ...] = field(init=False, repr=False)
    freshness_check: str | None = field(init=False, repr=False)
    # whether the checks can run as one Polars query (see ``_validate``)
    fast: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.freshness_column is not None and self.max_staleness_s is None:
            raise ValueError(f"suite {self.name!r}: freshness_column needs max_staleness_s")
        found = _expectations(self.schema)
        freshness = None if self.freshness_column is None else f"{self.freshness_column}:freshness"
        if freshness is not None:
            found.append((freshness, self.freshness_column))
        names = [n for n, _ in found]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"suite {self.name!r}: duplicate check names {duplicates}; name the checks")
        object.__setattr__(self, "expectations", tuple(found))
        object.__setattr__(self, "freshness_check", freshness)
        object.__setattr__(self, "fast", _fast_path_supported(self.schema))

    def columns(self, available: list[str]) -> list[str]:
        """The columns of a batch (with columns ``available``) that the suite reads."""
        if self.schema.strict:
            return available
        wanted = {*self.schema.columns, *(self.schema.unique or ()), self.freshness_column}
        return [c for c in available if c in wanted]


@dataclass(frozen=True)
class QualityResult:
    """The outcome of one suite on one micro-batch."""

    suite: str
    run_at: datetime
    total_rows: int
    passed: pa.Table
    quarantined: pa.Table
    results: list[dict]

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)

    @property
    def failed_checks(self) -> list[str]:
        return [r["check"] for r in self.results if not r["success"]]


def _check_id(check) -> str:
    """Pandera's identifier of a check in failure cases: its error, else its name, else str()."""
    return check.error if check.error is not None else (check.name if check.name is not None else str(check))


def _expectations(schema: DataFrameSchema) -> list[tuple[str, str | None]]:
    """Every (check name, column) a schema asserts, in schema order."""
    out: list[tuple[str, str | None]] = []
    for name, col in schema.columns.items():
        if col.required:
            out.append((f"{name}:column_in_dataframe", name))
        if col.dtype is not None:
            out.append((f"{name}:dtype", name))
        if not col.nullable:
            out.append((f"{name}:not_nullable", name))
        if col.unique:
            out.append((f"{name}:field_uniqueness", name))
        out.extend((f"{name}:{_check_id(c)}", name) for c in col.checks)
    if schema.unique:
        out.append(("multiple_fields_uniqueness", None))
    out.extend((_check_id(c), None) for c in schema.checks)
    return out


def _named_failures(failure_cases: pl.DataFrame) -> pl.DataFrame:
    """Pandera failure cases reduced to (index, name, column); index is null for whole-batch failures."""
    check, column = pl.col("check"), pl.col("column")
    is_column = pl.col("schema_context") == "Column"
    col_name = (
        pl.when(check == "column_in_dataframe")
        .then(pl.col("failure_case"))
        .when(is_column)
        .then(column)
        .otherwise(pl.lit(None, pl.String))
    )
    base = (
        pl.when(check.str.starts_with("dtype("))
        .then(pl.lit("dtype"))
        .when(check.str.starts_with("coerce_dtype("))
        .then(pl.lit("coerce_dtype"))
        .otherwise(check)
    )
    return failure_cases.select(
        pl.col("index").cast(pl.Int64),
        pl.when(col_name.is_not_null()).then(pl.concat_str(col_name, pl.lit(":"), base)).otherwise(base).alias("name"),
        col_name.alias("column"),
    )


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _freshness(suite: Suite, df: pl.DataFrame, rows: int, now: datetime) -> bool:
    """True when the newest freshness value is within max staleness of ``now`` (an empty batch is fresh)."""
    col = suite.freshness_column
    if rows == 0:
        return True
    if col not in df.columns or not isinstance(df.schema[col], pl.Datetime | pl.Date):
        return False
    newest = df.get_column(col).max()
    if newest is None:
        return False
    if isinstance(newest, datetime):
        newest = _utc(newest)
    elif isinstance(newest, date):  # a day is fresh until its end
        newest = datetime.combine(newest, time(), UTC) + timedelta(days=1)
    return (now - newest).total_seconds() <= suite.max_staleness_s


def _failures(rows: list[tuple[int | None, str, str | None]] | None = None) -> pl.DataFrame:
    return pl.DataFrame(rows or [], schema=_FAILURES_SCHEMA, orient="row")


def _pandera_failures(suite: Suite, df: pl.DataFrame) -> pl.DataFrame:
    """Validate with pandera (``lazy=True``): its failure cases as (index, name, column), never raising."""
    try:
        with config_context(validation_enabled=True, validation_depth="SCHEMA_AND_DATA"):
            suite.schema.validate(df, lazy=True)
    except SchemaErrors as exc:
        return _named_failures(exc.failure_cases)
    except Exception:  # a broken suite must not stop the stream: the whole batch is quarantined
        log.exception("quality suite %s failed to run", suite.name)
        return _failures([(None, SUITE_ERROR, None)])
    return _failures()


def _fast_path_supported(schema: DataFrameSchema) -> bool:
    """Whether ``_fast_failures`` reproduces pandera's validation of ``schema`` (no parsing, coercion, ...)."""
    if schema.strict or schema.ordered or schema.coerce or schema.add_missing_columns or schema.drop_invalid_rows:
        return False
    if getattr(schema, "parsers", None) or not all(isinstance(u, str) for u in schema.unique or ()):
        return False
    checks = list(schema.checks)
    for col in schema.columns.values():
        if col.regex or col.coerce or col.default is not None or getattr(col, "parsers", None):
            return False
        checks.extend(col.checks)
    return not any(c.raise_warning or c.n_failure_cases is not None for c in checks)


def _check_output(check, lf: pl.LazyFrame, key: str) -> pl.LazyFrame | bool:
    """One pandera check's per-row outcome as pandera computes it (nulls pass when ``ignore_na``)."""
    out = PolarsCheckBackend(check).apply(PolarsData(lf, key))
    if isinstance(out, bool):
        return out
    ok = pl.col(CHECK_OUTPUT_KEY)
    return out.select(ok | ok.is_null() if check.ignore_na else ok.fill_null(False))


def _fast_failures(suite: Suite, df: pl.DataFrame) -> pl.DataFrame | None:
    """The failures pandera would report, from one Polars query instead of one per check (pandera's own
    check functions, null and NaN semantics). None when a column is missing or mistyped: pandera reports that."""
    schema, lf = suite.schema, df.lazy()
    steps: list[tuple[str, str | None, pl.LazyFrame | bool]] = []  # (check name, column, per-row outcome)
    for name, col in schema.columns.items():
        if name not in df.schema:
            if col.required:
                return None
            continue
        dtype = df.schema[name]
        if col.dtype is not None and not col.dtype.check(dtype, PolarsData(lf.select(name), name)):
            return None
        if not col.nullable:  # like pandera, NaN counts as null in a float column
            present = pl.col(name).is_not_null()
            if dtype in {pl.Float32, pl.Float64}:
                present = present & pl.col(name).is_not_nan()
            steps.append((f"{name}:not_nullable", name, lf.select(present)))
        if col.unique:
            steps.append((f"{name}:field_uniqueness", name, lf.select(pl.col(name).is_duplicated().not_())))
        steps.extend((f"{name}:{_check_id(c)}", name, _check_output(c, lf, name)) for c in col.checks)
    unique = [c for c in schema.unique or () if c in df.schema]
    if unique:
        steps.append(("multiple_fields_uniqueness", None, lf.select(pl.struct(unique).is_duplicated().not_())))
    steps.extend((_check_id(c), None, _check_output(c, lf, "*")) for c in schema.checks)

    found = [_failures([(None, name, column) for name, column, out in steps if out is False])]
    per_row = {f"_{i}": step for i, step in enumerate(s for s in steps if not isinstance(s[2], bool))}
    if per_row and df.height:
        outcomes = [out.select(pl.first().alias(key)) for key, (_, _, out) in per_row.items()]
        ok = pl.concat(outcomes, how="horizontal").collect()
        bad = ok.with_row_index("index").filter(~pl.all_horizontal(list(per_row)))
        if bad.height:
            failed = bad.unpivot(index="index", variable_name="key", value_name="ok").filter(~pl.col("ok"))
            step = pl.col("key")
            names = {key: name for key, (name, _, _) in per_row.items()}
            columns = {key: column for key, (_, column, _) in per_row.items()}
            found.append(
                failed.select(
                    pl.col("index").cast(pl.Int64),
                    step.replace_strict(names, return_dtype=pl.String).alias("name"),
                    step.replace_strict(columns, return_dtype=pl.String).alias("column"),
                )
            )
    return pl.concat(found)


def _validate(suite: Suite, df: pl.DataFrame) -> pl.DataFrame:
    """The batch's failures as (index, name, column); index is null for a failure of the whole batch.

    Pandera runs each check as its own Polars query (~0.5 ms each, ~100 per suite); when the schema allows,
    the same checks run as one query, and pandera validates only when a column is missing or mistyped.
    """
    if suite.fast:
        try:
            found = _fast_failures(suite, df)
        except Exception:  # e.g. a check erroring on this data: pandera reports it as that check's failure
            log.warning("fast path of suite %s failed; validating with pandera", suite.name, exc_info=True)
        else:
            if found is not None:
                return found
    return _pandera_failures(suite, df)


def run(suite: Suite, table: pa.Table, now: datetime) -> QualityResult:
    """Check one micro-batch: the rows passing every row-level check, the quarantined rest (with a
    ``failed_checks`` column), and one result per expectation (``failed_count`` rows of ``total_count``;
    the table-level freshness check counts the batch as one)."""
    now = _utc(now)
    n = table.num_rows
    df = pl.from_arrow(table.select(suite.columns(table.column_names)), rechunk=False)
    failures = _validate(suite, df)

    counts: dict[str, int] = {}
    columns: dict[str, str | None] = {}
    indices = np.empty(0, dtype=np.int64)
    failed_checks = pa.array([], pa.string())
    if failures.height:
        whole = failures.filter(pl.col("index").is_null()).get_column("name").unique().to_list()
        rows = failures.filter(pl.col("index").is_not_null()).select("index", "name")
        counts = dict(rows.group_by("name").agg(pl.col("index").n_unique()).iter_rows())
        counts.update({name: n for name in whole})
        columns = dict(failures.select("name", "column").unique("name").iter_rows())
        if whole and n:  # a batch-level failure quarantines every row (listing its row-level failures too)
            everyone = pl.DataFrame({"index": pl.int_range(n, dtype=pl.Int64, eager=True)})
            rows = pl.concat([rows, everyone.join(pl.DataFrame({"name": whole}), how="cross")])
        per_row = rows.group_by("index").agg(pl.col("name").unique().sort().str.join(FAILED_CHECKS_SEP)).sort("index")
        indices = per_row.get_column("index").to_numpy()
        failed_checks = per_row.get_column("name").to_arrow().cast(pa.string())

    results = []
    for name, column in suite.expectations:
        if name == suite.freshness_check:
            failed, total = int(not _freshness(suite, df, n, now)), 1
        else:
            failed, total = counts.pop(name, 0), n
        results.append(_result(suite.name, name, column, failed, total))
    # failures the suite does not list up front (a suite error, a strict schema's extra column, ...)
    results.extend(_result(suite.name, name, columns.get(name), failed, n) for name, failed in counts.items())

    quarantined = table.take(pa.array(indices, pa.int64())).append_column(
        pa.field("failed_checks", pa.string()), failed_checks
    )
    passed = table
    if len(indices):
        keep = np.ones(n, dtype=bool)
        keep[indices] = False
        mask = pa.array(keep)
        passed = pa.Table.from_arrays([c.filter(mask) for c in table.columns], schema=table.schema)
    return QualityResult(suite.name, now, n, passed, quarantined, results)


def _result(suite: str, check: str, column: str | None, failed: int, total: int) -> dict:
    return {
        "suite": suite,
        "check": check,
        "column": column,
        "failed_count": int(failed),
        "total_count": int(total),
        "success": failed == 0,
    }


_ENSURED: set[str] = set()


def _ensure(settings: Settings, spec: TableSpec) -> str:
    uri = spec.uri(settings)
    if uri not in _ENSURED:
        tables.ensure(settings, spec)
        _ENSURED.add(uri)
    return uri


def _row_json(quarantined: pa.Table) -> pa.Array:
    data = pl.from_arrow(quarantined.drop_columns(["failed_checks"]), rechunk=False)
    return data.select(pl.struct(pl.all()).struct.json_encode()).to_series().to_arrow().cast(pa.string())


def metrics_path(settings: Settings) -> Path:
    return settings.state_path / "metrics" / "quality.prom"


def record(
    settings: Settings,
    result: QualityResult,
    *,
    suite: Suite | str,
    table_name: str,
    app_id: str,
    batch_id: int,
) -> bool:
    """Write a batch's results and quarantined rows exactly once and count failures in the metrics.

    Returns False when the batch had already been recorded (a replay): nothing is written or counted twice.
    """
    suite_name = suite if isinstance(suite, str) else suite.name
    # one query may check several tables (or suites) per batch: each needs its own app transaction
    quality_app_id = f"{app_id}/quality/{suite_name}/{table_name}"
    run_at, run_date = result.run_at, result.run_at.date()

    q = result.quarantined
    if q.num_rows:
        rows = pa.table(
            {
                "suite": pa.array([suite_name] * q.num_rows, pa.string()),
                "table_name": pa.array([table_name] * q.num_rows, pa.string()),
                "failed_checks": q.column("failed_checks").cast(pa.string()),
                "row_json": _row_json(q),
                "quarantined_at": pa.array([run_at] * q.num_rows, TS),
                "quarantine_date": pa.array([run_date] * q.num_rows, pa.date32()),
            },
            schema=QUARANTINE.schema,
        )
        delta.write_batch(
            settings,
            _ensure(settings, QUARANTINE),
            rows,
            app_id=quality_app_id,
            batch_id=batch_id,
            partition_by=QUARANTINE.partition_by,
        )

    res = result.results
    results = pa.table(
        {
            "run_at": pa.array([run_at] * len(res), TS),
            "suite": pa.array([suite_name] * len(res), pa.string()),
            "table_name": pa.array([table_name] * len(res), pa.string()),
            "query_id": pa.array([app_id] * len(res), pa.string()),
            "batch_id": pa.array([batch_id] * len(res), pa.int64()),
            "check_name": pa.array([r["check"] for r in res], pa.string()),
            "column_name": pa.array([r["column"] for r in res], pa.string()),
            "failed_count": pa.array([r["failed_count"] for r in res], pa.int64()),
            "total_count": pa.array([r["total_count"] for r in res], pa.int64()),
            "success": pa.array([r["success"] for r in res], pa.bool_()),
            "run_date": pa.array([run_date] * len(res), pa.date32()),
        },
        schema=EXPECTATION_RESULTS.schema,
    )
    written = delta.write_batch(
        settings,
        _ensure(settings, EXPECTATION_RESULTS),
        results,
        app_id=quality_app_id,
        batch_id=batch_id,
        partition_by=EXPECTATION_RESULTS.partition_by,
    )
    if written:
        for r in res:  # every expectation gets a series (at 0 until it fails), so rate() has data
            CHECKS_FAILED.labels(suite_name, r["check"]).inc(0 if r["success"] else 1)
        ROWS_QUARANTINED.labels(suite_name).inc(q.num_rows)
        path = metrics_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), REGISTRY)
    return written
