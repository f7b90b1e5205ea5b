"""``make stream``: synthetic traffic into the event log and the streaming pipeline out of it, until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time

from lakehouse.config import get_settings
from lakehouse.spark import get_spark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.pipeline", description=__doc__)
    parser.add_argument("--no-traffic", action="store_true", help="only run the pipeline")
    parser.add_argument("--rate", type=float, default=None, help="transactions per second of the traffic")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--available-now", action="store_true", help="process what the log holds, then exit")
    args = parser.parse_args(argv)
    settings = get_settings()
    traffic = None
    if not args.no_traffic:
        rate = args.rate or settings.traffic.rate
        traffic = subprocess.Popen(
            [sys.executable, "-m", "lakehouse.traffic", "generate", "--rate", str(rate), "--with-market"]
        )
        print(f"traffic: {rate:.0f} transactions/s + market ticks (pid {traffic.pid})", file=sys.stderr)
    spark = get_spark(settings, "fraud-lakehouse-stream")
    from bronze import job as bronze_job

    trigger = {"availableNow": True} if args.available_now else None
    queries = bronze_job.start(spark, settings, trigger=trigger)
    print(
        f"pipeline: {len(queries)} streaming queries running; tables under {settings.lakehouse.root}; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while True:
            for q in queries:
                if q.exception() is not None:
                    raise RuntimeError(f"query {q.name} failed: {q.exception()}")
            if (deadline is not None and time.monotonic() >= deadline) or not any(q.isActive for q in queries):
                break
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping...", file=sys.stderr)
    finally:
        if traffic is not None and traffic.poll() is None:
            traffic.send_signal(signal.SIGINT)
            traffic.wait(timeout=30)
        for q in queries:
            q.stop()
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
