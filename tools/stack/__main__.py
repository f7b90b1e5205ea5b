"""``python -m tools.stack up|down|status``: the embedded stack of the current profile;
``cluster-up|cluster-down``: its Spark standalone cluster; ``cluster-run CMD...``: a command submitted to it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from lakehouse import eventlog
from lakehouse.config import Settings, get_settings
from tools.stack.cluster import cluster_env, cluster_services
from tools.stack.postgres import ensure_database
from tools.stack.process import ProcessManager, ServiceError
from tools.stack.services import stack_services


def start(settings: Settings, services: list) -> None:
    manager = ProcessManager(settings.state_path)
    for svc in services:
        if svc.name == "mlflow":
            ensure_database(settings.mlflow.backend_store_uri)
        t0 = time.monotonic()
        print(f"  {svc.name:<13} {manager.start(svc)} in {time.monotonic() - t0:.1f} s  {svc.endpoint}", flush=True)


def up(settings: Settings) -> None:
    start(settings, stack_services(settings))
    log = eventlog.from_settings(settings)
    eventlog.ensure_topics(log, settings)
    log.close()
    print(f"  topics        {', '.join(t.name for t in settings.eventlog.topics.all())}")


def down(settings: Settings, services: list | None = None) -> None:
    manager = ProcessManager(settings.state_path)
    if services is None:  # everything: the cluster (when it runs), then the stack
        cluster = [svc for svc in cluster_services(settings) if manager.pid(svc.name)]
        services = [*stack_services(settings), *cluster]
    for svc in reversed(services):
        print(f"  {svc.name:<13} {manager.stop(svc)}", flush=True)


def status(settings: Settings) -> bool:
    manager = ProcessManager(settings.state_path)
    all_up = True
    for svc in stack_services(settings):
        ok = svc.healthy()
        all_up &= ok
        pid = manager.pid(svc.name)
        owner = f"pid {pid}" if pid else "external" if ok else "-"
        print(f"  {svc.name:<13} {'UP' if ok else 'DOWN':<5} {owner:<12} {svc.endpoint}")
    if all_up:
        from lakehouse.streaming import consumer_lag
        from lakehouse.topology import consumers

        log = eventlog.from_settings(settings)
        lags = consumer_lag(settings, log)
        consumer = {topic: query for query, topic in consumers(settings).items()}
        for topic in settings.eventlog.topics.all():
            try:
                ends = log.end_offsets(topic.name)
            except eventlog.EventLogError as exc:
                all_up = False
                print(f"  topic {topic.name:<14} MISSING ({exc})")
                continue
            offsets = " ".join(f"{p}:{e}" for p, e in sorted(ends.items()))
            line = f"  topic {topic.name:<14} {sum(ends.values()):>10} records, end offsets {offsets}"
            if topic.name in consumer:
                lag = lags.get(consumer[topic.name])
                line += f"; {consumer[topic.name]} lag {'- (never ran)' if lag is None else lag}"
            print(line)
        log.close()
    return all_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "cluster-up", "cluster-down", "cluster-run"])
    parser.add_argument("run", nargs=argparse.REMAINDER, help="cluster-run: the command to run against the cluster")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "cluster-run":
        if not args.run:
            parser.error("cluster-run needs a command, e.g. cluster-run python -m lakehouse.pipeline")
        return subprocess.call(args.run, env={**os.environ, **cluster_env(settings)})
    print(f"stack '{settings.profile}' (state in {settings.state_path})")
    try:
        if args.command == "up":
            up(settings)
        elif args.command == "down":
            down(settings)
        elif args.command == "cluster-up":
            start(settings, cluster_services(settings))
            print("  submit with: python -m tools.stack cluster-run python -m lakehouse.pipeline")
        elif args.command == "cluster-down":
            down(settings, cluster_services(settings))
        else:
            return 0 if status(settings) else 1
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
