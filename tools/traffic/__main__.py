"""``python -m tools.traffic``: generate synthetic traffic, market ticks, or replay a file.

  generate --rate N --duration S --fraud-rate F --seed K   live card traffic (event time = now)
  generate ... --start 2026-01-01 --days 14 --speedup 0     history, as fast as the log takes it
  market --rate N --duration S                             market ticks
  replay FILE --mapping conf/mappings/NAME.yaml --speedup X
Add ``--out FILE.jsonl`` to write the events to a file instead of the event log.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from lakehouse import eventlog
from lakehouse.config import get_settings
from lakehouse.contracts import TIME_FIELDS
from lakehouse.eventlog.producer import send
from tools.traffic.generator import GeneratorConfig, TrafficGenerator
from tools.traffic.market import MarketConfig, MarketGenerator
from tools.traffic.replay import Mapping, Replayer, ReplayError, read_table


def _start_ms(text: str | None) -> int:
    if not text:
        return int(time.time() * 1000)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int((dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp() * 1000)


def merge(*streams: Iterable[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """Merge time-ordered ``(kind, event)`` streams into one, by event time."""
    return heapq.merge(*streams, key=lambda ke: ke[1][TIME_FIELDS[ke[0]]])


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    tr = settings.traffic
    parser = argparse.ArgumentParser(
        prog="python -m tools.traffic",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="synthetic card traffic with fraud scenarios and delayed labels")
    gen.add_argument("--rate", type=float, default=tr.rate, help="mean transactions per second")
    gen.add_argument("--duration", type=float, default=None, help="seconds of wall time (default: until Ctrl-C)")
    gen.add_argument("--fraud-rate", type=float, default=tr.fraud_rate)
    gen.add_argument("--seed", type=int, default=tr.seed)
    gen.add_argument("--customers", type=int, default=tr.customers)
    gen.add_argument("--label-delay-days", type=float, default=tr.label_delay_days)
    gen.add_argument("--start", default=None, help="event time of the first event (ISO date; default now)")
    gen.add_argument("--days", type=float, default=None, help="generate this many days of event time, then stop")
    gen.add_argument("--speedup", type=float, default=1.0, help="event-time speed-up; 0 = as fast as possible")
    gen.add_argument("--max-events", type=int, default=None)
    gen.add_argument("--with-market", action="store_true", help="also send market ticks")
    mk = sub.add_parser("market", help="market price ticks with injected anomalies")
    mk.add_argument("--rate", type=float, default=tr.market_rate, help="ticks per second per symbol")
    mk.add_argument("--duration", type=float, default=None)
    mk.add_argument("--seed", type=int, default=tr.seed)
    mk.add_argument("--start", default=None)
    mk.add_argument("--days", type=float, default=None)
    mk.add_argument("--speedup", type=float, default=1.0)
    mk.add_argument("--max-events", type=int, default=None)
    rp = sub.add_parser("replay", help="replay an external CSV/Parquet of transactions")
    rp.add_argument("file")
    rp.add_argument("--mapping", required=True)
    rp.add_argument("--speedup", type=float, default=0.0, help="event-time speed-up; 0 = as fast as possible")
    rp.add_argument(
        "--on-error", choices=["fail", "skip"], default="fail", help="on a bad row: stop, or skip and report"
    )
    rp.add_argument("--max-events", type=int, default=None)
    for p in (gen, mk, rp):
        p.add_argument("--out", default=None, help="write JSON lines here instead of the event log")
    args = parser.parse_args(argv)

    errors: list[str] = []
    duration = getattr(args, "duration", None)
    try:
        if args.command == "generate":
            start = _start_ms(args.start)
            until = start + int(args.days * 86_400_000) if args.days else None
            cfg = GeneratorConfig(
                seed=args.seed,
                start_ms=start,
                rate=args.rate,
                fraud_rate=args.fraud_rate,
                customers=args.customers,
                label_delay_days=args.label_delay_days,
            )
            streams = [TrafficGenerator(cfg).events(until)]
            if args.with_market:
                streams.append(
                    MarketGenerator(
                        MarketConfig(
                            seed=args.seed,
                            start_ms=start,
                            rate=tr.market_rate,
                            symbols=tuple(tr.market_symbols),
                        )
                    ).events(until)
                )
            events = merge(*streams)
        elif args.command == "market":
            start = _start_ms(args.start)
            until = start + int(args.days * 86_400_000) if args.days else None
            events = MarketGenerator(
                MarketConfig(seed=args.seed, start_ms=start, rate=args.rate, symbols=tuple(tr.market_symbols))
            ).events(until)
        else:
            replayer = Replayer(Mapping.load(args.mapping))
            events = replayer.events(read_table(args.file), on_error=args.on_error, errors=errors)
        if args.out:
            n = 0
            with open(args.out, "w") as f:
                for kind, event in events:
                    f.write(json.dumps({"kind": kind, "event": event}) + "\n")
                    n += 1
                    if args.max_events and n >= args.max_events:
                        break
            print(f"wrote {n} events to {args.out}", file=sys.stderr)
        else:
            log = eventlog.from_settings(settings)
            eventlog.ensure_topics(log, settings)
            send(events, log, settings, speedup=args.speedup, duration_s=duration, max_events=args.max_events)
            log.close()
    except ReplayError as exc:
        print(f"replay error: {exc}", file=sys.stderr)
        return 2
    except eventlog.EventLogError as exc:  # e.g. the log stayed down past traffic.outage_give_up_s
        print(f"event log error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    for err in errors[:20]:
        print(f"skipped {err}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} rows skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
