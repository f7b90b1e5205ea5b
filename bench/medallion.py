"""The medallion benchmark: the real pipeline process, event log → bronze → silver → features → decisions, on
its own topics and tables, scoring with the registered models named by ``models`` (the models bench's).

1. Sustained throughput: ``events`` generated transactions (plus their labels) are put in the log first; the
   pipeline then drains them. Rate = transactions / (last silver, or decisions, commit - first bronze commit),
   so JVM start-up is not counted.
2. Latency: with the pipeline caught up, live traffic at ``rate``/s (event time = now) for ``seconds``; each
   silver row's latency is its silver commit timestamp (from the change feed) - its event time; each decision's
   is its ``decided_at`` - its event time (and ``latency_ms``, from the event log's append time).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from bench.memory import PeakRss
from bench.run import report
from lakehouse import delta, eventlog
from lakehouse.config import Settings, isolated


def _rows(settings: Settings, layer: str = "silver", table: str = "transactions") -> int:
    uri = settings.table_uri(layer, table)
    if not delta.table_exists(settings, uri):
        return 0
    return pc.sum(pa.table(delta.open_table(settings, uri).get_add_actions(flatten=True))["num_records"]).as_py() or 0


def _commit_times(settings: Settings, layer: str, table: str) -> list[tuple[int, float]]:
    return sorted(
        (h["version"], h["timestamp"] / 1000)
        for h in delta.history(settings, settings.table_uri(layer, table))
        if h.get("operation") != "CREATE TABLE"
    )


def _wait_for(
    settings: Settings,
    n: int,
    timeout: float,
    proc: subprocess.Popen,
    table: tuple[str, str] = ("silver", "transactions"),
) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pipeline exited with {proc.returncode}")
        rows = _rows(settings, *table)
        if rows != last:
            print(f"    {'.'.join(table)}: {rows:,}/{n:,} rows", flush=True)
            last = rows
        if rows >= n:
            return
        time.sleep(2)
    raise TimeoutError(f"{'.'.join(table)} has {last} of {n} rows after {timeout:.0f} s")


def run(
    settings: Settings, events: int, rate: float, seconds: float, max_records: int, models: dict[str, str]
) -> tuple[list[dict], dict]:
    """Returns throughput rows and the latency figures (silver and decisions)."""
    root = Path(tempfile.mkdtemp(prefix="bench-medallion-", dir=settings.state_path))
    bs, env = isolated(
        root,
        f"benchm-{int(time.time())}",
        {
            "LAKEHOUSE__STREAMING__MAX_RECORDS_PER_TRIGGER": str(max_records),
            "LAKEHOUSE__STREAMING__TRIGGER_SECONDS": "1",
            "LAKEHOUSE__STREAMING__GOLD_TRIGGER_SECONDS": "60",
            **{f"LAKEHOUSE__MODELS__{k.upper()}": v for k, v in models.items()},
        },
    )
    log = eventlog.from_settings(bs)
    eventlog.ensure_topics(log, bs)
    full_env = {**os.environ, **env}
    gen = [sys.executable, "-m", "tools.traffic", "generate", "--seed", "7", "--speedup", "0"]
    subprocess.run([*gen, "--max-events", str(events), "--start", "2026-03-02T00:00:00Z"], env=full_env, check=True)
    txns = sum(log.end_offsets(bs.eventlog.topics.transactions.name).values())
    rows: list[dict] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "lakehouse.pipeline", "--no-traffic"],
        env=full_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "pipeline.log", "w"),  # noqa: SIM115 - closed with the process
    )
    peak = PeakRss(proc.pid, interval_s=2.0)  # the driver, Spark's JVM and its Python workers
    try:
        peak.start()
        _wait_for(bs, txns, 1800, proc)
        first_bronze = _commit_times(bs, "bronze", "transactions")[0][1]
        silver_commits = _commit_times(bs, "silver", "transactions")
        dt = silver_commits[-1][1] - first_bronze
        rows.append(report("log -> bronze -> silver (sustained)", txns, dt))
        _wait_for(bs, txns, 1800, proc, ("gold", "decisions"))
        decided = _commit_times(bs, "gold", "decisions")
        rows.append(report("log -> ... -> features -> decisions (sustained)", txns, decided[-1][1] - first_bronze))
        drained_version = silver_commits[-1][0]
        live = subprocess.run(
            [*gen[:-2], "--rate", str(rate), "--duration", str(seconds)], env=full_env, capture_output=True, text=True
        )
        if live.returncode != 0:
            raise RuntimeError(live.stderr[-2000:])
        total = sum(log.end_offsets(bs.eventlog.topics.transactions.name).values())
        _wait_for(bs, total, 600, proc)
        latency = _latency(bs, drained_version, rate, seconds, total - txns)
        _wait_for(bs, total, 600, proc, ("gold", "decisions"))
        latency["decisions"] = _decision_latency(bs, decided[-1][0])
    finally:
        peak.stop()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        for topic in (bs.eventlog.topics.transactions, bs.eventlog.topics.labels, bs.eventlog.topics.market_ticks):
            log.delete_topic(topic.name)
        log.close()
        shutil.copy(root / "pipeline.log", settings.state_path / "bench-pipeline.log")
        shutil.rmtree(root, ignore_errors=True)
    print(f"  pipeline process tree peak resident memory: {peak.mb} MB")
    return rows, {**latency, "pipeline_peak_rss_mb": peak.mb}


def _latency(settings: Settings, after_version: int, rate: float, seconds: float, n: int) -> dict:
    changes = pa.table(
        delta.open_table(settings, settings.table_uri("silver", "transactions"))
        .load_cdf(starting_version=after_version + 1, columns=["event_time", "_commit_timestamp", "_change_type"])
        .read_all()
    )
    inserts = pc.equal(changes["_change_type"].cast(pa.string()), "insert")
    changes = changes.drop_columns(["_change_type"]).filter(inserts)
    visible = pc.cast(changes["_commit_timestamp"], pa.timestamp("ms")).cast(pa.int64())
    event = pc.cast(pc.cast(changes["event_time"], pa.timestamp("ms", tz="UTC")), pa.int64())
    lat = pc.divide(pc.cast(pc.subtract(visible, event), pa.float64()), 1000.0)
    q = pc.quantile(lat, q=[0.5, 0.99]).to_pylist()
    figures = {
        "rate_per_s": rate,
        "offered_per_s": round(n / seconds, 1),  # what the generator really sent, not what it was asked for
        "seconds": seconds,
        "transactions": n,
        "p50_s": round(q[0], 3),
        "p99_s": round(q[1], 3),
        "max_s": round(pc.max(lat).as_py(), 3),
    }
    print(
        f"  latency event time -> visible in silver, {n / seconds:,.0f} tx/s offered ({rate:,.0f}/s asked): "
        f"p50 {q[0]:.2f} s, p99 {q[1]:.2f} s"
    )
    return figures


def _decision_latency(settings: Settings, after_version: int) -> dict:
    """Event time → decision and event log → decision of the decisions committed after ``after_version``."""
    uri = settings.table_uri("gold", "decisions")
    rows = pa.table(
        delta.open_table(settings, uri)
        .load_cdf(starting_version=after_version + 1, columns=["event_time", "decided_at", "latency_ms", "model_name"])
        .read_all()
    )
    ms = pa.timestamp("ms", tz="UTC")
    event = pc.cast(pc.cast(rows["event_time"], ms, safe=False), pa.int64())
    decided = pc.cast(pc.cast(rows["decided_at"], ms, safe=False), pa.int64())
    lat = pc.divide(pc.cast(pc.subtract(decided, event), pa.float64()), 1000.0)
    q = pc.quantile(lat, q=[0.5, 0.99]).to_pylist()
    from_log = pc.quantile(rows["latency_ms"], q=[0.5, 0.99]).to_pylist()
    figures = {
        "decisions": rows.num_rows,
        "scored_by": sorted({m for m in rows["model_name"].to_pylist() if m}),
        "p50_s": round(q[0], 3),
        "p99_s": round(q[1], 3),
        "max_s": round(pc.max(lat).as_py(), 3),
        "from_log_p50_s": round(from_log[0] / 1000, 3),
        "from_log_p99_s": round(from_log[1] / 1000, 3),
    }
    print(f"  latency event time -> decision: p50 {q[0]:.2f} s, p99 {q[1]:.2f} s "
          f"(from the event log: p50 {figures['from_log_p50_s']:.2f} s, p99 {figures['from_log_p99_s']:.2f} s), "
          f"scored by {figures['scored_by']}")  # fmt: skip
    return figures
