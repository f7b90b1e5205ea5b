"""``python -m monitoring report [--from YYYY-MM-DD --to YYYY-MM-DD] [--out DIR] [--no-alerts]``: the model
and data monitoring report of a period (default: the newest ``monitoring.default_days`` of gold.decisions).
Progress goes to stderr; the summary (paths, alerts, gaps) is printed as JSON. Exits 1 when a section could not
be computed (the report is written all the same, saying why)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from datetime import date
from pathlib import Path

from lakehouse.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitoring", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("report", help="write the HTML monitoring report (and PNG plots) of a period")
    r.add_argument("--from", dest="start", type=date.fromisoformat, help="first event date")
    r.add_argument("--to", dest="end", type=date.fromisoformat, help="last event date")
    r.add_argument("--out", type=Path, help="output directory (default: <models.reports_dir>/monitoring/FROM_TO)")
    r.add_argument("--no-alerts", action="store_true", help="compute the alerts but do not raise them")
    args = parser.parse_args(argv)

    # MLflow retries an unreachable registry for minutes by default: the report says so sooner (a gap)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from monitoring import report, sources

    settings = get_settings()
    start, end = args.start, args.end
    try:
        if start is None or end is None:
            first, last = sources.default_period(settings, settings.monitoring.default_days)
            start, end = start or first, end or last
        with contextlib.redirect_stdout(sys.stderr):
            summary = report.build(settings, start, end, args.out, raise_alerts=not args.no_alerts)
    except (FileNotFoundError, ValueError) as exc:  # no decisions (yet, or in the period), a reversed period
        raise SystemExit(f"monitoring report: {exc}") from None
    keys = ("period", "report", "metrics", "transactions", "drift_reference", "alerts_sent", "plots", "gaps")
    print(json.dumps({k: summary[k] for k in keys}, indent=2, default=str))
    return 1 if summary["gaps"] else 0


if __name__ == "__main__":
    sys.exit(main())
