"""Data quality on Spark DataFrames: Great Expectations suites that quarantine, never crash.

``run`` validates one micro-batch (a Spark DataFrame the caller has persisted) against a ``Suite`` with Great
Expectations' Spark execution engine, which computes every expectation's counts as aggregates on the executors,
and splits the batch into the rows that meet every row-level expectation and the quarantined rest (each with the
checks it failed). The split is a lazy Spark DataFrame over the batch: every row-level expectation type the
suites use has a translation into the Spark condition GX counts with (``ROW_CONDITIONS``, the same null
semantics; a parity test holds the two together), so no row is collected to the driver. A check that cannot be
tied to rows (a missing column, a wrong dtype, an expectation that errors, a suite that errors) fails the whole
batch. Freshness is a table-level check: it is reported, never quarantines.

``record`` writes the per-expectation results to ``quality.expectation_results`` and the quarantined rows to
``silver.quarantine`` (exactly once per batch, with Spark's Delta writer) and counts failures in Prometheus
counters exported as a node-exporter textfile (and served by the stream's exporter,
``lakehouse.observability``). ``python -m gold.quality_report report`` (``make quality-report``) validates the
newest days of the checked tables and builds GX Data Docs (``gold.quality_report``).

Check names are ``<column>:<check>`` for column checks (``amount:not_nullable``, ``amount:dtype``,
``channel:accepted_values``) and the bare check name for checks of several columns; an expectation is named
by ``meta={"check": ...}`` or gets a default name from its type (``default_name``).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import reduce
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry, Counter, write_to_textfile
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lakehouse import delta
from lakehouse.catalog import EXPECTATION_RESULTS, QUARANTINE
from lakehouse.config import Settings
from lakehouse.tables import TableSpec, ensure

log = logging.getLogger(__name__)

FAILED_CHECKS_SEP = ";"
SUITE_ERROR = "suite_error"
# GX's per-expectation counts without any of its unexpected-value samples (``limit(0)``: no Spark job)
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0}
BOOLEAN_ONLY = {"result_format": "BOOLEAN_ONLY"}

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


# --- Great Expectations, imported on first use -------------------------------------------------------------------

_GX: ModuleType | None = None
_GX_LOCK = threading.RLock()


def gx() -> ModuleType:
    """The ``great_expectations`` module, imported on first use (it takes ~3 s, so processes that only need the
    tables or the counters of this module don't pay for it), with usage statistics off."""
    global _GX
    if _GX is None:
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # nothing phones home
        main = sys.modules.get("__main__")
        # GX imports pyspark.sql.connect, which mistakes `python -c` (a __main__ without __file__ or __spec__)
        # for its own doctest run and calls sys.exit(0) when grpc is missing: the process would end silently
        fake_file = (
            main is not None
            and getattr(main, "__spec__", None) is None
            and not hasattr(main, "__file__")
            and not hasattr(sys, "ps1")
        )
        if fake_file:
            main.__file__ = "<string>"
        try:
            import great_expectations
            import great_expectations.expectations
        finally:
            if fake_file:
                del main.__file__
        _GX = great_expectations
    return _GX


def _gxe() -> ModuleType:
    return gx().expectations


# --- Suites ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Derived:
    """A helper column that expectations may compare (Spark SQL ``expression`` of the batch's ``inputs``), e.g.
    the date of ``event_time`` to compare with ``event_date``. Added to the batch GX validates; the row-level
    split evaluates the same expression."""

    column: str
    expression: str
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class Check:
    """One expectation of a suite as ``run`` uses it."""

    name: str
    column: str | None  # the column it reports on (None for checks of several columns)
    kind: str  # "batch" (fails the whole batch), "row" (quarantines rows), "freshness" (reported only)
    expectation: Any  # the GX expectation
    reads: tuple[str, ...]  # the batch's columns it needs (a derived column counts as its inputs)


BATCH_LEVEL = ("ExpectColumnToExist", "ExpectColumnValuesToBeOfType")


@dataclass(frozen=True, eq=False)
class Suite:
    """A named list of GX expectations plus an optional table-level freshness check.

    Row-level expectations must be of a type ``ROW_CONDITIONS`` translates (with ``mostly`` unset and no
    ``row_condition``: a quarantined row is one GX counts as unexpected); ``ExpectColumnToExist`` and
    ``ExpectColumnValuesToBeOfType`` (a pyspark.sql.types name) are batch-level. A column that is missing or of
    another type than declared fails the batch; the expectations reading it are then not evaluated (reported
    with 0 failed of 0 rows).

    Freshness passes when the newest ``freshness_column`` value is at most ``max_staleness_s`` seconds older
    than ``now`` (an empty batch is fresh; a date is fresh until its end): GX's ``ExpectColumnMaxToBeBetween``
    with the bound passed as a parameter at each run.
    """

    name: str
    expectations: Sequence[Any]
    freshness_column: str | None = None
    max_staleness_s: float | None = None
    derived: Sequence[Derived] = ()
    checks: tuple[Check, ...] = field(init=False, repr=False)
    # GX suites built from this one (per set of checks evaluated), built once and reused across runs
    _gx_suites: dict = field(init=False, repr=False, compare=False, hash=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.freshness_column is not None and self.max_staleness_s is None:
            raise ValueError(f"suite {self.name!r}: freshness_column needs max_staleness_s")
        gxe = _gxe()
        derived = {d.column: d for d in self.derived}
        found: list[Check] = []
        for exp in self.expectations:
            kind = type(exp).__name__
            if not isinstance(exp, gxe.Expectation):
                raise TypeError(f"suite {self.name!r}: {exp!r} is not a Great Expectations expectation")
            if kind not in BATCH_LEVEL and kind not in ROW_CONDITIONS:
                supported = ", ".join(sorted([*BATCH_LEVEL, *ROW_CONDITIONS]))
                raise ValueError(
                    f"suite {self.name!r}: {kind} is not supported (no Spark row condition for it); "
                    f"supported: {supported}"
                )
            if getattr(exp, "mostly", 1) not in (None, 1, 1.0) or getattr(exp, "row_condition", None):
                raise ValueError(f"suite {self.name!r}: {kind} with `mostly` or a `row_condition` is not supported")
            if kind == "ExpectColumnValuesToBeOfType" and not hasattr(T, exp.type_):
                raise ValueError(f"suite {self.name!r}: {exp.type_!r} is not a pyspark.sql.types type")
            name = (exp.meta or {}).get("check") or default_name(exp)
            if name is None:
                raise ValueError(f"suite {self.name!r}: name the {kind} with meta={{'check': ...}}")
            exp = exp.copy(deep=True)  # the suite's own copy, named (Data Docs show the name in the notes)
            exp.meta = {**(exp.meta or {}), "check": name}
            exp.notes = exp.notes or [f"check `{name}`"]
            cols = _columns(exp)
            unknown = [c for c in cols if c.startswith("__") and c not in derived]
            if unknown:
                raise ValueError(f"suite {self.name!r}: {name} reads undeclared derived columns {unknown}")
            reads = tuple(dict.fromkeys(i for c in cols for i in (derived[c].inputs if c in derived else (c,))))
            column = exp.column if hasattr(exp, "column") else None
            found.append(Check(name, column, "batch" if kind in BATCH_LEVEL else "row", exp, reads))
        if self.freshness_column is not None:
            col = self.freshness_column
            exp = gxe.ExpectColumnMaxToBeBetween(
                column=col,
                min_value={"$PARAMETER": freshness_parameter(col)},
                meta={"check": f"{col}:freshness"},
                notes=[f"check `{col}:freshness`: the newest value at most {self.max_staleness_s:g} s old"],
            )
            found.append(Check(f"{col}:freshness", col, "freshness", exp, (col,)))
        names = [c.name for c in found]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"suite {self.name!r}: duplicate check names {duplicates}; name the checks")
        object.__setattr__(self, "checks", tuple(found))

    @property
    def batch_level(self) -> frozenset[str]:
        return frozenset(c.name for c in self.checks if c.kind == "batch")

    @property
    def dtypes(self) -> dict[str, type]:
        """{column: the pyspark type class its dtype expectation wants}."""
        return {
            c.column: getattr(T, c.expectation.type_) for c in self.checks if _kind(c) == "ExpectColumnValuesToBeOfType"
        }

    def gx_suite(self, name: str | None = None, skip: frozenset[str] = frozenset()):
        """A GX ExpectationSuite of this suite's expectations but ``skip`` (fresh copies: GX binds them)."""
        exps = [copy.deepcopy(c.expectation) for c in self.checks if c.name not in skip]
        return gx().ExpectationSuite(name=name or self.name, expectations=exps, meta={"lakehouse_suite": self.name})

    def frame(self, df: DataFrame, unusable: set[str] | frozenset[str] = frozenset()) -> DataFrame:
        """``df`` with the derived columns whose inputs it has, and not ``unusable`` (what GX validates)."""
        have = set(df.columns) - set(unusable)
        extra = {d.column: F.expr(d.expression) for d in self.derived if set(d.inputs) <= have}
        return df.withColumns(extra) if extra else df


def _kind(check: Check) -> str:
    return type(check.expectation).__name__


def _columns(exp) -> list[str]:
    """The columns an expectation reads (as its kwargs name them)."""
    out = []
    for key in ("column", "column_A", "column_B"):
        if getattr(exp, key, None) is not None:
            out.append(getattr(exp, key))
    out.extend(getattr(exp, "column_list", None) or [])
    return out


def default_name(exp) -> str | None:
    """The check name of an unnamed expectation (None where there is no sensible default)."""
    kind, col = type(exp).__name__, getattr(exp, "column", None)
    if kind == "ExpectColumnValuesToBeBetween":
        lo, hi = exp.min_value, exp.max_value
        if hi is None:
            check = f"greater_than({lo})" if exp.strict_min else f"greater_than_or_equal_to({lo})"
        elif lo is None:
            check = f"less_than({hi})" if exp.strict_max else f"less_than_or_equal_to({hi})"
        elif not exp.strict_min and not exp.strict_max:
            check = f"in_range({lo}, {hi})"
        else:
            check = f"between({lo}, {hi})"
        return f"{col}:{check}"
    simple = {
        "ExpectColumnToExist": "column_in_dataframe",
        "ExpectColumnValuesToBeOfType": "dtype",
        "ExpectColumnValuesToNotBeNull": "not_nullable",
        "ExpectColumnValuesToBeInSet": "accepted_values",
        "ExpectColumnValuesToMatchRegex": "matches_regex",
    }
    if kind in simple:
        return f"{col}:{simple[kind]}"
    if kind == "ExpectCompoundColumnsToBeUnique":
        return "multiple_fields_uniqueness"
    return None


def freshness_parameter(column: str) -> str:
    """The GX suite parameter that gives a run its freshness bound (``ExpectColumnMaxToBeBetween``'s min_value)."""
    return f"{column}_fresh_after"


# --- Row conditions: what GX counts as unexpected, as Spark Columns ------------------------------------------------


def _col(name: str, derived: dict[str, Derived]) -> Column:
    return F.expr(derived[name].expression) if name in derived else F.col(name)


def _not_null(exp, c) -> Column:
    # column_values.nonnull: no null filter, unexpected = ~isNotNull
    return c(exp.column).isNull()


def _column_map(expected: Callable[[Any, Column], Column]) -> Callable:
    """A column-map expectation: GX skips nulls (unexpected = isNotNull & ~expected; a null outcome is not
    counted)."""

    def unexpected(exp, c) -> Column:
        col = c(exp.column)
        return col.isNotNull() & ~expected(exp, col)

    return unexpected


def _between(exp, col: Column) -> Column:
    lo, hi = exp.min_value, exp.max_value
    conds = []
    if lo is not None:
        conds.append(col > F.lit(lo) if exp.strict_min else col >= F.lit(lo))
    if hi is not None:
        conds.append(col < F.lit(hi) if exp.strict_max else col <= F.lit(hi))
    return reduce(lambda a, b: a & b, conds)


def _pair_domain(exp, a: Column, b: Column) -> Column:
    """The rows a column-pair expectation looks at (GX's ``ignore_row_if``)."""
    ignore = exp.ignore_row_if
    if ignore == "both_values_are_missing":
        return ~(a.isNull() & b.isNull())
    if ignore == "either_value_is_missing":
        return ~(a.isNull() | b.isNull())
    if ignore == "neither":
        return F.lit(True)
    raise ValueError(f"ignore_row_if {ignore!r}")


def _pair_equal(exp, c) -> Column:
    a, b = c(exp.column_A), c(exp.column_B)
    return _pair_domain(exp, a, b) & ~a.eqNullSafe(b)


def _pair_greater(exp, c) -> Column:
    a, b = c(exp.column_A), c(exp.column_B)
    ok = ((a >= b) | a.eqNullSafe(b)) if exp.or_equal else (a > b)
    return _pair_domain(exp, a, b) & ~ok


def _compound_unique(exp, c) -> Column:
    cols = [c(name) for name in exp.column_list]
    ignore = exp.ignore_row_if
    if ignore == "all_values_are_missing":
        domain = ~reduce(lambda x, y: x & y, [x.isNull() for x in cols])
    elif ignore == "any_value_is_missing":
        domain = ~reduce(lambda x, y: x | y, [x.isNull() for x in cols])
    elif ignore == "never":
        domain = F.lit(True)
    else:
        raise ValueError(f"ignore_row_if {ignore!r}")
    # GX counts within the rows of its domain; the domain depends on the key only, so a key's rows are all in it
    # or all out of it and the count over the whole batch is the same
    return domain & (F.count(F.lit(1)).over(Window.partitionBy(F.struct(*cols))) > 1)


# expectation type -> (expectation, column accessor) -> Spark Column true where GX counts the row as unexpected
ROW_CONDITIONS: dict[str, Callable[[Any, Callable[[str], Column]], Column]] = {
    "ExpectColumnValuesToNotBeNull": _not_null,
    "ExpectColumnValuesToBeBetween": _column_map(_between),
    "ExpectColumnValuesToBeInSet": _column_map(lambda exp, col: col.isin(list(exp.value_set))),
    "ExpectColumnValuesToMatchRegex": _column_map(lambda exp, col: col.rlike(exp.regex)),
    "ExpectColumnPairValuesToBeEqual": _pair_equal,
    "ExpectColumnPairValuesAToBeGreaterThanB": _pair_greater,
    "ExpectCompoundColumnsToBeUnique": _compound_unique,
}


def unexpected(suite: Suite, check: Check) -> Column:
    """The Spark condition that is true exactly on the rows GX counts as unexpected for ``check`` (never null)."""
    derived = {d.column: d for d in suite.derived}
    cond = ROW_CONDITIONS[_kind(check)](check.expectation, lambda name: _col(name, derived))
    return F.coalesce(cond, F.lit(False))


# --- Running a suite ---------------------------------------------------------------------------------------------


@dataclass
class QualityResult:
    """The outcome of one suite on one micro-batch: ``passed`` and ``quarantined`` are lazy DataFrames over it."""

    suite: str
    run_at: datetime
    total_rows: int
    passed: DataFrame
    quarantined: DataFrame  # the batch's columns + failed_checks
    results: list[dict]
    # rows in ``quarantined`` when known without a Spark job (0, or the whole batch); else None
    quarantined_rows: int | None = None

    @property
    def success(self) -> bool:
        return all(r["success"] for r in self.results)

    @property
    def failed_checks(self) -> list[str]:
        return [r["check"] for r in self.results if not r["success"]]


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def freshness_bound(dtype: T.DataType, fresh_after: datetime) -> datetime | date | None:
    """The smallest newest value that is fresh, as GX compares it with the column's max (None: not a time column).

    PySpark returns a TimestampType value as a naive local time, a TimestampNTZType one as naive UTC; a date is
    fresh until its end."""
    if isinstance(dtype, T.TimestampType):
        return datetime.fromtimestamp(fresh_after.timestamp())
    if isinstance(dtype, T.TimestampNTZType):
        return fresh_after.astimezone(UTC).replace(tzinfo=None)
    if isinstance(dtype, T.DateType):
        last_stale = (fresh_after - timedelta(days=1)).date()  # fresh: newest + 1 day >= fresh_after
        day_start = datetime.combine(last_stale, datetime.min.time(), UTC)
        return last_stale if day_start + timedelta(days=1) >= fresh_after else last_stale + timedelta(days=1)
    return None


@dataclass(frozen=True)
class _Outcome:
    success: bool
    unexpected: int | None  # GX's unexpected_count (row-level checks)
    error: str | None  # GX raised on this expectation


_CONTEXT: Any = None
_BATCHES: Any = None


def _batch_definition():
    """The batch definition of the process's ephemeral GX context: a Spark datasource (not persisting: the caller
    has), one dataframe asset, the whole dataframe as the batch."""
    global _CONTEXT, _BATCHES
    if _BATCHES is None:
        context = gx().get_context(mode="ephemeral")
        context.variables.progress_bars = gx().data_context.types.base.ProgressBarsConfig(globally=False)
        source = context.data_sources.add_spark("lakehouse", persist=False)
        _BATCHES = source.add_dataframe_asset("batch").add_batch_definition_whole_dataframe("whole")
        _CONTEXT = context
    return _BATCHES


def _validate(
    suite: Suite, df: DataFrame, skip: frozenset[str], params: dict, result_format: dict
) -> tuple[dict[str, _Outcome], int | None]:
    """GX's validation of ``df`` (with the derived columns) with the suite's expectations but ``skip``:
    {check: outcome}, and the batch's row count as GX counted it (None when no column-map expectation reported it)."""
    with _GX_LOCK:  # one context for the process; queries validate one at a time
        batches = _batch_definition()
        gx_suite = suite._gx_suites.get(skip)
        if gx_suite is None:
            if len(suite._gx_suites) >= _MAX_VARIANTS:
                suite._gx_suites.clear()
            gx_suite = suite._gx_suites[skip] = suite.gx_suite(f"{suite.name} [{len(suite._gx_suites)}]", skip)
        batch = batches.get_batch(batch_parameters={"dataframe": df})
        validation = batch.validate(gx_suite, result_format=result_format, expectation_parameters=params)
    outcomes, rows = {}, None
    for r in validation.results:
        result = r.result or {}
        error = _error(r.exception_info)
        outcomes[r.expectation_config.meta["check"]] = _Outcome(bool(r.success), result.get("unexpected_count"), error)
        if r.expectation_config.type in _ALL_ROWS and "element_count" in result:
            rows = result["element_count"]
    return outcomes, rows


def _error(info: dict | None) -> str | None:
    """The error of an expectation GX could not evaluate (None if it could): ``exception_info`` is either one
    {raised_exception, exception_message, ...} or, when a metric failed, one such dict per failed metric."""
    if not info:
        return None
    infos = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for one in infos:
        text = f"{one.get('exception_message') or ''}\n{one.get('exception_traceback') or ''}".strip()
        if one.get("raised_exception", True) and text:
            # the JVM's root cause says more than py4j's "An error occurred while calling ..."
            causes = re.findall(r"Caused by: (.+)", text)
            return (causes[-1] if causes else text.splitlines()[0]).strip()[:300]
    return None


# GX's result of these counts every row of the batch in element_count (pair and multicolumn ones may not)
_ALL_ROWS = {
    "expect_column_values_to_not_be_null",
    "expect_column_values_to_be_between",
    "expect_column_values_to_be_in_set",
    "expect_column_values_to_match_regex",
}
_MAX_VARIANTS = 64


def _gx_outcomes(
    suite: Suite, df: DataFrame, skip: frozenset[str], params: dict
) -> tuple[dict[str, _Outcome], int | None]:
    """GX's outcome of every expectation but ``skip``, with unexpected counts for the row-level ones that failed.

    The whole suite runs with BOOLEAN_ONLY (GX's counts in ~3 aggregate Spark jobs); only when row-level
    expectations failed do those run again with BASIC for their counts (BASIC also asks each column-map
    expectation for its unexpected values: a Spark query planned per expectation, ~45 ms each, even with
    ``partial_unexpected_count`` 0)."""
    outcomes, _ = _validate(suite, df, skip, params, BOOLEAN_ONLY)
    kinds = {c.name: c.kind for c in suite.checks}
    failing = {n for n, o in outcomes.items() if kinds[n] == "row" and not o.success and o.error is None}
    if not failing:
        return outcomes, None
    others = frozenset(c.name for c in suite.checks if c.name not in failing)
    counted, rows = _validate(suite, df, others, {}, RESULT_FORMAT)
    return {**outcomes, **counted}, rows


def run(suite: Suite, df: DataFrame, now: datetime) -> QualityResult:
    """Check one micro-batch (persist it first: GX scans it and so do ``passed`` and ``quarantined``): the rows
    passing every row-level expectation, the quarantined rest (with a ``failed_checks`` column), and one result per
    expectation (``failed_count`` rows of ``total_count``; the table-level freshness check counts the batch as
    one). Collects no row to the driver: GX computes counts, the split is lazy."""
    now = _utc(now)
    types = {f.name: f.dataType for f in df.schema.fields}
    dtypes = suite.dtypes
    unusable = {c for c in {r for ch in suite.checks for r in ch.reads} if c not in types}
    unusable |= {c for c, t in dtypes.items() if c in types and not isinstance(types[c], t)}

    # batch-level checks from the schema (GX checks them too: the parity test holds the two together)
    whole: set[str] = set()
    skip: set[str] = set()
    for ch in suite.checks:
        kind = _kind(ch)
        if kind == "ExpectColumnToExist":
            if ch.column not in types:
                whole.add(ch.name)
        elif kind == "ExpectColumnValuesToBeOfType":
            if ch.column not in types:
                skip.add(ch.name)
            elif ch.column in unusable:
                whole.add(ch.name)
        elif set(ch.reads) & unusable:
            skip.add(ch.name)

    params, fresh_check = {}, next((c for c in suite.checks if c.kind == "freshness"), None)
    if fresh_check is not None and fresh_check.name not in skip:
        bound = freshness_bound(types[fresh_check.column], now - timedelta(seconds=suite.max_staleness_s))
        if bound is None:
            skip.add(fresh_check.name)
        else:
            params[freshness_parameter(fresh_check.column)] = bound

    t0 = time.monotonic()
    try:
        # batch-level checks are schema checks (GX's are too: table.columns and column types, no Spark job); left
        # out of GX's run they save its per-expectation overhead (~15 % of a run); the parity test holds the two
        # verdicts together
        outcomes, n = _gx_outcomes(suite, suite.frame(df, unusable), frozenset(skip | suite.batch_level), params)
    except Exception:  # a broken suite must not stop the stream: the whole batch is quarantined
        log.exception("quality suite %s failed to run", suite.name)
        outcomes, n = None, None
    log.debug("suite %s validated in %.2f s", suite.name, time.monotonic() - t0)
    if n is None:
        n = df.count()

    results, flags = [], []
    for ch in suite.checks:
        if ch.kind == "batch" and ch.name not in skip:
            failed = ch.name in whole
            results.append(_result(suite.name, ch.name, ch.column, n if failed else 0, n))
        elif outcomes is None or ch.name in skip:
            if ch.kind == "freshness":  # a missing or mistyped time column is not fresh (an empty batch is)
                results.append(_result(suite.name, ch.name, ch.column, int(n > 0), 1))
            else:  # not evaluated: 0 failed of 0 checked
                results.append(_result(suite.name, ch.name, ch.column, 0, 0))
        elif ch.kind == "freshness":
            out = outcomes[ch.name]
            fresh = n == 0 or (out.success and out.error is None)
            results.append(_result(suite.name, ch.name, ch.column, int(not fresh), 1))
        else:
            out = outcomes[ch.name]
            if out.error is not None or (not out.success and not out.unexpected):
                # the expectation errored (GX caught it): its rows can't be told, the batch fails
                log.warning("quality suite %s: %s failed to run: %s", suite.name, ch.name, out.error)
                whole.add(ch.name)
                results.append(_result(suite.name, ch.name, ch.column, n, n))
                continue
            failed = out.unexpected or 0
            if failed:
                flags.append((ch.name, unexpected(suite, ch)))
            results.append(_result(suite.name, ch.name, ch.column, failed, n))
    if outcomes is None:
        whole.add(SUITE_ERROR)
        results.append(_result(suite.name, SUITE_ERROR, None, n, n))
    passed, quarantined, count = _split(df, flags, sorted(whole), n)
    return QualityResult(suite.name, now, n, passed, quarantined, results, count)


def _split(
    df: DataFrame, flags: list[tuple[str, Column]], whole: list[str], n: int
) -> tuple[DataFrame, DataFrame, int | None]:
    """(passed, quarantined, quarantined rows if known): lazy DataFrames over ``df``."""
    cols = [F.col(f"`{c}`") for c in df.columns]
    none = F.lit(False)
    if not flags and not whole:
        return df, df.where(none).select(*cols, F.lit(None).cast("string").alias("failed_checks")), 0
    keys = [f"__quality_{i}" for i in range(len(flags))]
    flagged = df.select(*cols, *[cond.alias(k) for (_, cond), k in zip(flags, keys, strict=True)]) if flags else df
    named = sorted(
        [*((name, F.col(k)) for (name, _), k in zip(flags, keys, strict=True)), *((w, F.lit(True)) for w in whole)]
    )
    failed_checks = F.concat_ws(FAILED_CHECKS_SEP, *[F.when(cond, F.lit(name)) for name, cond in named])
    if whole:
        return df.where(none), flagged.select(*cols, failed_checks.alias("failed_checks")), n
    bad = reduce(lambda a, b: a | b, [F.col(k) for k in keys])
    passed = flagged.where(~bad).select(*cols)
    return passed, flagged.where(bad).select(*cols, failed_checks.alias("failed_checks")), None


def _result(suite: str, check: str, column: str | None, failed: int, total: int) -> dict:
    return {
        "suite": suite,
        "check": check,
        "column": column,
        "failed_count": int(failed),
        "total_count": int(total),
        "success": failed == 0,
    }


# --- Recording ---------------------------------------------------------------------------------------------------

_ENSURED: set[str] = set()


def _ensure(settings: Settings, spec: TableSpec) -> str:
    uri = spec.uri(settings)
    if uri not in _ENSURED:
        ensure(settings, spec)
        _ENSURED.add(uri)
    return uri


RESULTS_SCHEMA = T.StructType(
    [
        T.StructField("run_at", T.TimestampType()),
        T.StructField("suite", T.StringType()),
        T.StructField("table_name", T.StringType()),
        T.StructField("query_id", T.StringType()),
        T.StructField("batch_id", T.LongType()),
        T.StructField("check_name", T.StringType()),
        T.StructField("column_name", T.StringType()),
        T.StructField("failed_count", T.LongType()),
        T.StructField("total_count", T.LongType()),
        T.StructField("success", T.BooleanType()),
        T.StructField("run_date", T.DateType()),
    ]
)


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
    """Write a batch's results and quarantined rows exactly once (Spark's Delta writer, an app transaction per
    table) and count failures in the metrics.

    Returns False when the batch had already been recorded (a replay): nothing is written or counted twice."""
    suite_name = suite if isinstance(suite, str) else suite.name
    # one query may check several tables (or suites) per batch: each needs its own app transaction
    quality_app_id = f"{app_id}/quality/{suite_name}/{table_name}"
    run_at, run_date = result.run_at, result.run_at.date()
    spark = result.passed.sparkSession
    results_uri = _ensure(settings, EXPECTATION_RESULTS)
    # the results commit marks a recorded batch (written last: a crash before it records the batch again); since
    # 0, commit_of's flag says whether the commit exists
    _, recorded = delta.commit_of(spark, results_uri, quality_app_id, batch_id, 0, search=200)
    if recorded:
        return False

    quarantined = result.quarantined_rows
    if quarantined != 0:
        q = result.quarantined
        data = [c for c in q.columns if c != "failed_checks"]
        quarantine = q.select(
            F.lit(suite_name).alias("suite"),
            F.lit(table_name).alias("table_name"),
            F.col("failed_checks"),
            F.to_json(F.struct(*[F.col(f"`{c}`") for c in data])).alias("row_json"),
            F.lit(run_at).cast("timestamp").alias("quarantined_at"),
            F.lit(run_date).alias("quarantine_date"),
        )
        q_uri = _ensure(settings, QUARANTINE)
        started_ms = int(time.time() * 1000)
        delta.write_batch_spark(
            quarantine, q_uri, app_id=quality_app_id, batch_id=batch_id, partition_by=QUARANTINE.partition_by
        )
        if quarantined is None:
            quarantined = delta.commit_of(spark, q_uri, quality_app_id, batch_id, started_ms, search=200)[0]

    res = result.results
    keys = ("check", "column", "failed_count", "total_count", "success")
    rows = [(run_at, suite_name, table_name, app_id, batch_id, *(r[k] for k in keys), run_date) for r in res]
    table = spark.createDataFrame(rows, RESULTS_SCHEMA).coalesce(1)  # one row per expectation: one file
    delta.write_batch_spark(
        table, results_uri, app_id=quality_app_id, batch_id=batch_id, partition_by=EXPECTATION_RESULTS.partition_by
    )
    for r in res:  # every expectation gets a series (at 0 until it fails), so rate() has data
        CHECKS_FAILED.labels(suite_name, r["check"]).inc(0 if r["success"] else 1)
    ROWS_QUARANTINED.labels(suite_name).inc(quarantined or 0)
    path = metrics_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), REGISTRY)
    return True
