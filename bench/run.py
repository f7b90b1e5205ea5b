"""``make bench``: throughput and memory of the parts built so far, printed and written to bench/results/.

Measures, on the current profile's stack: traffic generation, contract validation, event-log produce and
read, the bronze stream (event log → Spark → Delta) end to end, the whole pipeline process (event log →
bronze → silver → features → decisions) for sustained throughput and event-time-to-silver and -to-decision
latency (bench/medallion.py, scoring with the models bench's registered models), the feature layer: online
engine, per-request Redis read + compute, training-set build (bench/features.py), and the models: fitting,
scoring, decisions (bench/models.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime

from bench.memory import rss_mb
from lakehouse import PROJECT_ROOT, delta, eventlog
from lakehouse.config import get_settings
from lakehouse.contracts import Limits, decode, encode
from tools.stack.process import ProcessManager
from tools.stack.services import stack_services
from tools.traffic.generator import GeneratorConfig, TrafficGenerator
from training import registry

RESULTS = PROJECT_ROOT / "bench" / "results"


def machine() -> dict:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(mem_gb, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "java": java,
    }


def service_rss_mb(settings) -> dict[str, int]:
    """Resident memory of each stack service this stack started (with its child processes)."""
    manager = ProcessManager(settings.state_path)
    pids = {svc.name.replace("-", "_"): manager.pid(svc.name) for svc in stack_services(settings)}
    return {name: rss_mb(pid) for name, pid in pids.items() if pid}


def timed(label: str, n: int, fn) -> dict:
    t0 = time.perf_counter()
    fn()
    return report(label, n, time.perf_counter() - t0)


def percentiles(ms: list[float]) -> dict:
    """p50, p99 and p99.9 of latencies in milliseconds."""
    q = statistics.quantiles(ms, n=1000)
    return {"p50_ms": round(q[499], 3), "p99_ms": round(q[989], 3), "p999_ms": round(q[998], 3)}


def report(label: str, n: int, dt: float) -> dict:
    """One throughput figure, printed and returned as a result row."""
    print(f"  {label:<44} {n:>9} events {dt:>8.2f} s {n / dt:>12,.0f} events/s", flush=True)
    return {"what": label, "events": n, "seconds": round(dt, 3), "events_per_s": round(n / dt)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--medallion-events", type=int, default=200_000, help="backlog drained through silver")
    parser.add_argument("--live-rate", type=float, default=2000, help="live transactions/s asked (latency figures)")
    parser.add_argument("--live-seconds", type=float, default=60)
    parser.add_argument("--max-records-per-trigger", type=int, default=50_000)
    parser.add_argument("--api-rate", type=float, default=1000, help="offered requests/s for the API latency")
    parser.add_argument("--api-seconds", type=float, default=30)
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn workers (also measured with one)")
    parser.add_argument("--features-events", type=int, default=1_000_000, help="transactions for the feature figures")
    args = parser.parse_args(argv)
    settings = get_settings()
    n = args.events
    print(f"bench on profile '{settings.profile}': {n} transactions")
    cfg = GeneratorConfig(seed=99, rate=500, customers=5000)
    events: list = []
    gen = TrafficGenerator(cfg).events()
    rows = [timed("generate (synthetic traffic)", n, lambda: events.extend(next(gen) for _ in range(n)))]
    payloads = [(kind, e, encode(e)) for kind, e in events]
    now = max(e.get("event_time", 0) for _, e, _ in payloads) + 1000
    rows.append(timed("validate (contracts.decode)", n, lambda: [decode(k, p, now_ms=now) for k, _, p in payloads]))

    log = eventlog.from_settings(settings)
    topic = f"bench-{int(time.time())}"
    log.create_topic(topic, settings.eventlog.topics.transactions.partitions)
    records = [(e["card_id"], p) for _, e, p in payloads]

    def produce():
        for i in range(0, len(records), 1000):
            log.produce_batch(topic, records[i : i + 1000])

    rows.append(timed("event log produce (batches of 1000)", n, produce))
    ends = log.end_offsets(topic)
    rows.append(timed("event log read", n, lambda: [sum(1 for _ in log.read(topic, p, 0, e)) for p, e in ends.items()]))

    # bronze end to end: the stream of `topic` into a fresh Delta table
    from bronze.transforms import accepted, dead_letters, validate_records
    from lakehouse.spark import get_spark, read_event_stream
    from lakehouse.streaming import Output, checkpoint_dir, start_to_delta

    spark = get_spark(settings, "bench")
    uri = settings.table_uri("bench", topic)
    name = f"bench.{topic}"

    def bronze():
        source = read_event_stream(spark, settings, topic, 50_000)
        good, bad = Output(name, uri, ("event_date",)), Output(f"{name}.dead", f"{uri}_dead_letter")
        limits = Limits.from_settings(settings)

        def outputs(validated):
            return [(good, accepted(validated)), (bad, dead_letters(validated))]

        def stage(batch):
            return validate_records(batch, "transaction", limits)

        q = start_to_delta(settings, name, source, outputs, stage=stage, trigger={"availableNow": True})
        q.awaitTermination()

    rows.append(timed("bronze stream: log -> validate -> Delta", n, bronze))
    assert delta.read_arrow(settings, uri, columns=["source_offset"]).num_rows == n
    spark.stop()
    shutil.rmtree(checkpoint_dir(settings, name), ignore_errors=True)
    if "://" not in uri:
        shutil.rmtree(uri, ignore_errors=True)
    print("features (online engine, Redis requests, training-set build):", flush=True)
    from bench import features

    feature_rows, feature_request, lake = features.run(settings, args.features_events)
    rows += feature_rows
    print("models (fit, batch and single-request scoring of the MLflow pyfuncs):", flush=True)
    from bench import models

    model_rows, model_scoring = models.run(lake.settings, lake.days[0], lake.days[-1])
    rows += model_rows
    print("medallion (the pipeline process, event log -> bronze -> silver -> decisions):", flush=True)
    from bench import medallion

    registered = model_scoring.pop("registered")
    medallion_rows, latency = medallion.run(
        settings, args.medallion_events, args.live_rate, args.live_seconds, args.max_records_per_trigger, registered
    )
    rows += medallion_rows
    print(f"api (uvicorn + wrk on loopback, scoring with the registered models, {args.api_rate:.0f}/s):", flush=True)
    from bench import api

    env = {**lake.env, **{f"LAKEHOUSE__MODELS__{k.upper()}": v for k, v in registered.items()}}
    api_scoring = api.run(settings, env, lake.fresh, args.api_rate, args.api_seconds, args.api_workers)
    lake.clear()
    mc = registry.client(settings)
    for name in (registered["supervised_name"], registered["unsupervised_name"]):
        mc.delete_registered_model(name)
    memory = {
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "pipeline_peak_rss_mb": latency.pop("pipeline_peak_rss_mb"),
        "api_rss_mb": api_scoring[f"workers_{args.api_workers}"].get("api_rss_mb"),
    }
    memory |= {f"{name}_rss_mb": rss for name, rss in service_rss_mb(settings).items()}
    log.delete_topic(topic)
    print(f"  memory: {memory}")
    result = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": settings.profile,
        "machine": machine(),
        "throughput": rows,
        "silver_latency": {k: v for k, v in latency.items() if k != "decisions"},
        "decision_latency": latency["decisions"],
        "feature_request": feature_request,
        "model_scoring": model_scoring,
        "api_scoring": api_scoring,
        "memory": memory,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for path in (RESULTS / f"pipeline-{stamp}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {RESULTS / 'latest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
