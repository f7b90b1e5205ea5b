"""``make e2e`` / ``python -m tools.e2e``: the end-to-end acceptance run; exit 1 on a broken invariant.

Prints a one-page summary and writes it, with every figure, to ``<root>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from lakehouse.config import get_settings
from tools.e2e.processes import RunError
from tools.e2e.run import Options, execute


def summary_page(run, checks, figures: dict) -> str:
    """The one-page summary: invariants, faults, counts per table, decisions, detection, latencies."""
    lines = [f"end-to-end run under {run.root}", "", "invariants"]
    lines += [
        f"  {'PASS' if c.ok else 'FAIL'}  {c.name}" + (f"\n        {c.detail}" if c.detail else "") for c in checks
    ]
    lines += ["", "faults"]
    lines += [
        f"  SIGKILL {i + 1} ({k['part']}): {k['after_s']} s after start, {k['commits']} commits in that run"
        for i, k in enumerate(run.kills)
    ]
    if run.outage:
        o = run.outage
        lines.append(
            f"  event log down {o['seconds']} s while {o['events']} records were produced; "
            f"bronze committed again {o['resumed_after_s']} s after; producer errors {len(o['producer_errors'])}"
        )
    lines += ["", "rows per table"]
    lines += [f"  {name:<30} {n:>9,}" for name, n in figures["tables"].items()]
    lines += ["", f"dead letter by reason: {figures['dead_letter_reasons']}"]
    lines += [f"decisions: history {figures['decisions']['history']}, scored {figures['decisions']['scored']}"]
    m = run.models
    lines += [
        f"champion {m.get('name')} v{m.get('version')}; test metrics {m.get('test_metrics')}",
        "",
        "detection per fraud scenario (scored traffic, review or block)",
    ]
    lines += [
        f"  {s:<22} {d['flagged']:>4} / {d['fraud']:<4} {'' if d['recall'] is None else format(d['recall'], '.0%')}"
        for s, d in figures["detection_scored"].items()
    ]
    lines += [f"  false-positive rate on genuine scored transactions: {figures['false_positive_rate_scored']:.2%}", ""]
    lat = figures["latency"]
    lines += [
        f"latency: log to decision {lat['log_to_decision_s']} s (crashes included); stream scoring_ms "
        f"{lat['stream_scoring_ms']} ms (as recorded per decision); API {lat['api_ms']} ms per call (client side)",
        f"API and stream agree on {figures['api_stream_agreement']} of the API-scored transactions "
        "(the API scored them before the stream saw the earlier ones)",
        "",
        "wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in run.steps.items()),
    ]
    failed = sum(not c.ok for c in checks)
    lines.append(f"\n{'ALL INVARIANTS HOLD' if not failed else f'{failed} INVARIANT(S) BROKEN'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    o = Options()
    parser = argparse.ArgumentParser(prog="python -m tools.e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=o.transactions, help="transactions in all (about)")
    parser.add_argument("--history-days", type=float, default=o.history_days, help="days the models learn from (≥ 2)")
    parser.add_argument("--scored-days", type=float, default=o.scored_days, help="days of traffic scored after")
    parser.add_argument("--start", type=datetime.fromisoformat, default=o.start, help="first event time (UTC)")
    parser.add_argument("--fraud-rate", type=float, default=o.fraud_rate)
    parser.add_argument("--customers", type=int, default=o.customers)
    parser.add_argument("--seed", type=int, default=o.seed)
    parser.add_argument("--kills", type=int, default=o.kills, help="SIGKILLs of the pipeline at random points")
    parser.add_argument("--log-outage-s", type=float, default=o.log_outage_s, help="event log down this long (0: no)")
    parser.add_argument("--api-requests", type=int, default=o.api_requests)
    parser.add_argument("--root", type=Path, default=None, help="the run's directory (default .state/e2e/<time>)")
    args = parser.parse_args(argv)
    if args.history_days < 2:
        parser.error("--history-days must be at least 2 (a day to train on, a day to test)")
    opts = Options(**{k: v for k, v in vars(args).items()})
    try:
        run, checks, figures = execute(get_settings(), opts)
    except RunError as exc:
        print(f"e2e: the run could not complete: {exc}", file=sys.stderr)
        return 2
    page = summary_page(run, checks, figures)
    print(page)
    out = {
        "ok": all(c.ok for c in checks),
        "checks": [c.__dict__ for c in checks],
        "figures": figures,
        "kills": run.kills,
        "outage": run.outage,
        "models": run.models,
        "steps": run.steps,
        "scenarios": run.scenarios,
        "api": {k: v for k, v in run.api.items() if k != "answers"},
    }
    (run.root / "summary.json").write_text(json.dumps(out, indent=2, default=str))
    (run.root / "summary.txt").write_text(page + "\n")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
