"""``python -m features``: build a training set, or print the feature catalogue / online-store status.

python -m features build-training-set --start 2026-03-01 --end 2026-03-28 --label-delay 7d
python -m features catalogue
python -m features online-status
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, timedelta

from lakehouse.config import get_settings

DURATION = re.compile(r"^(\d+)([dhm])$")


def duration(text: str) -> timedelta:
    """``7d``, ``12h`` or ``30m``."""
    m = DURATION.match(text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 7d, 12h or 30m")
    n, unit = int(m.group(1)), m.group(2)
    return {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m features", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-training-set", help="point-in-time feature vectors with labels known by a cut-off")
    b.add_argument("--start", type=date.fromisoformat, required=True, help="first event date (YYYY-MM-DD)")
    b.add_argument("--end", type=date.fromisoformat, required=True, help="last event date, inclusive")
    b.add_argument("--label-delay", type=duration, default=timedelta(days=7), help="labels known by end + this")
    b.add_argument("--table", default="training_set", help="output table features.<TABLE>")
    b.add_argument("--chunk-days", type=int, default=None, help="days built per Spark job")
    sub.add_parser("catalogue", help="print every feature (Markdown)")
    sub.add_parser("online-status", help="the stream's last write to the online store")
    args = parser.parse_args(argv)
    settings = get_settings()

    if args.command == "catalogue":
        from lakehouse.feature_definitions import markdown

        print(markdown())
        return 0
    if args.command == "online-status":
        from features.store import OnlineStore

        print(json.dumps(OnlineStore(settings).meta(), indent=2))
        return 0
    if args.end < args.start:
        parser.error("--end is before --start")
    from features.training_set import build
    from lakehouse.spark import get_spark

    spark = get_spark(settings, "build-training-set")
    try:
        report = build(spark, settings, args.start, args.end, args.label_delay, args.table, args.chunk_days)
    finally:
        spark.stop()
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
