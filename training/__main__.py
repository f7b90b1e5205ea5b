"""``python -m training``: train and register the models, re-evaluate a registered version, move aliases.

python -m training train [--start 2026-03-01 --end 2026-03-21] [--train-days 7 --test-days 7 --label-delay-days 7]
python -m training evaluate --model fraud-xgboost@champion --start 2026-03-15 --end 2026-03-21
python -m training promote --model fraud-xgboost [--version 3]
python -m training models
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import date

from lakehouse.config import get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="build the sets, fit XGBoost and Isolation Forest, evaluate, register")
    t.add_argument("--start", type=date.fromisoformat, help="first training date (default: fit the newest days)")
    t.add_argument("--end", type=date.fromisoformat, help="last date the test period may use")
    t.add_argument("--train-days", type=int, default=None)
    t.add_argument("--test-days", type=int, default=None)
    t.add_argument(
        "--label-delay-days",
        type=int,
        default=None,
        help="labels known this long after a period; also the gap between train and test",
    )
    t.add_argument("--no-build", action="store_true", help="reuse the training/evaluation sets already built")
    e = sub.add_parser("evaluate", help="re-evaluate a registered version on a period")
    e.add_argument("--model", required=True, help="NAME@ALIAS, NAME/VERSION or NAME (its champion)")
    e.add_argument("--start", type=date.fromisoformat, required=True)
    e.add_argument("--end", type=date.fromisoformat, required=True)
    e.add_argument("--label-delay-days", type=int, default=None)
    e.add_argument("--no-build", action="store_true")
    p = sub.add_parser("promote", help="point the champion alias at a version (default: the challenger)")
    p.add_argument("--model", required=True)
    p.add_argument("--version", default=None)
    sub.add_parser("models", help="registered versions and their aliases")
    args = parser.parse_args(argv)

    with contextlib.redirect_stdout(sys.stderr):
        out = run(args, parser)
    print(json.dumps(out, indent=2, default=str))
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict:
    """The command's result (MLflow's own messages go to stderr: stdout is the JSON result only)."""
    settings = get_settings()
    if args.command == "train":
        from training.train import train

        if (args.start is None) != (args.end is None):
            parser.error("give both --start and --end, or neither")
        out = train(
            settings,
            args.start,
            args.end,
            train_days=args.train_days,
            test_days=args.test_days,
            label_delay_days=args.label_delay_days,
            build=not args.no_build,
        )
        for kind in ("xgboost", "isolation_forest"):
            out[kind].pop("fitted")
        return out
    if args.command == "evaluate":
        from training.evaluate import evaluate

        out = evaluate(settings, args.model, args.start, args.end, args.label_delay_days, rebuild=not args.no_build)
        out["metrics"] = {k: v for k, v in out["metrics"].items() if isinstance(v, int | float)}
        return out
    from training import registry

    mc = registry.client(settings)
    if args.command == "promote":
        return registry.promote(mc, args.model, args.version)
    return registry.describe(mc, [settings.models.supervised_name, settings.models.unsupervised_name])


if __name__ == "__main__":
    sys.exit(main())
