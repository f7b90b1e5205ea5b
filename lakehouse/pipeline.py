"""``make stream``: synthetic traffic into the event log and the streaming pipeline out of it, until Ctrl-C.

The pipeline is every stage's queries in one Spark application: bronze (event log → bronze Delta), silver
(bronze → silver), features (silver → online store, feature vectors and decisions) and gold (silver → gold);
``lakehouse.topology`` lists each query with what it reads and writes.
``--available-now`` runs the stages one after the other over what the log holds, then exits (a catch-up or a
test run).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import subprocess
import sys
import time

from lakehouse.config import get_settings
from lakehouse.observability import Monitor
from lakehouse.spark import get_spark
from lakehouse.topology import STAGES

MAX_RESTARTS = 5
_ACTIVE: list = []  # the running queries, also while a stage is starting (so Ctrl-C can stop them)


def start_stages(spark, settings, stages) -> list:
    """Start the stages in order (each query starts once the previous one has initialised its sources)."""
    _ACTIVE.clear()
    for stage in stages:
        _ACTIVE.extend(stage(spark, settings))
    print(
        f"pipeline: {len(_ACTIVE)} streaming queries running; tables under {settings.lakehouse.root}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    return list(_ACTIVE)


def supervise(queries: list, deadline: float | None):
    """Wait until the deadline (None: forever) or until a query fails; returns the failed query, if any."""
    while True:
        for q in queries:
            if q.exception() is not None:
                return q
        if (deadline is not None and time.monotonic() >= deadline) or not any(q.isActive for q in queries):
            return None
        time.sleep(1)


def stop_all(queries: list) -> None:
    for q in queries:
        try:
            q.stop()
        except Exception as exc:  # a failed query may refuse a clean stop; the others must still stop
            print(f"stopping {q.name}: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.pipeline", description=__doc__)
    parser.add_argument("--no-traffic", action="store_true", help="only run the pipeline")
    parser.add_argument("--rate", type=float, default=None, help="transactions per second of the traffic")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument(
        "--available-now", action="store_true", help="process what the log holds through every stage, then exit"
    )
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated stages to run, in this order: {','.join(STAGES)} (default: all)",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := [s for s in chosen if s not in STAGES]:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    settings = get_settings()
    traffic = None
    if not args.no_traffic:
        rate = args.rate or settings.traffic.rate
        traffic = subprocess.Popen(
            [sys.executable, "-m", "tools.traffic", "generate", "--rate", str(rate), "--with-market"]
        )
        print(f"traffic: {rate:.0f} transactions/s + market ticks (pid {traffic.pid})", file=sys.stderr)
    spark = get_spark(settings, "fraud-lakehouse-stream")
    stages = [importlib.import_module(f"{name}.job").start for name in STAGES if name in chosen]
    if args.available_now:
        for stage in stages:
            for q in stage(spark, settings, trigger={"availableNow": True}):
                q.awaitTermination()
        spark.stop()
        return 0
    deadline = time.monotonic() + args.duration if args.duration else None
    restarts = 0
    monitor = Monitor.start(spark, settings)  # Prometheus exporter on metrics.host:metrics.port
    try:
        while True:
            queries = start_stages(spark, settings, stages)
            failed = supervise(queries, deadline)
            stop_all(queries)
            if failed is None:
                break
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise RuntimeError(f"query {failed.name} failed {restarts} times: {failed.exception()}")
            # every sink is idempotent per batch, so restarting from the checkpoints loses and repeats nothing
            print(
                f"query {failed.name} failed ({str(failed.exception()).splitlines()[0]}); "
                f"restarting the pipeline in {10 * restarts} s ({restarts}/{MAX_RESTARTS})",
                file=sys.stderr,
            )
            time.sleep(10 * restarts)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        if traffic is not None and traffic.poll() is None:
            traffic.send_signal(signal.SIGINT)
            traffic.wait(timeout=30)
        stop_all(_ACTIVE)
        if monitor is not None:
            monitor.stop()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
