"""Prometheus for the stream: the exporter ``make stream`` starts, and a local Prometheus to scrape it and the API.

``Monitor.start(spark, settings)`` serves ``lakehouse.metrics`` (with the quality counters) on
``metrics.host:metrics.port``, adds a ``StreamingQueryListener`` that turns every query's progress into metrics,
and measures the bronze queries' consumer lag every ``metrics.lag_interval_s``.

``python -m lakehouse.observability config`` writes a prometheus.yml for this profile's ports;
``python -m lakehouse.observability prometheus`` runs Debian's ``prometheus`` with it (``make prometheus``).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry, start_http_server
from pyspark.sql.streaming import StreamingQueryListener

from lakehouse import metrics
from lakehouse.config import Settings, get_settings
from lakehouse.topology import consumers

log = logging.getLogger(__name__)

# sample names a metric family of each type exposes (prometheus_client adds ``_created`` to counters and
# histograms)
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exposed_registry() -> CollectorRegistry:
    """What the stream's exporter serves: ``lakehouse.metrics`` and ``lakehouse.quality``'s counters."""
    from lakehouse import quality

    registry = CollectorRegistry()
    registry.register(metrics.REGISTRY)
    registry.register(quality.REGISTRY)
    return registry


def metric_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name the registry's metric families can expose (also those without samples yet)."""
    return {f"{family.name}{s}" for family in registry.collect() for s in _SUFFIXES.get(family.type, ("",))}


class ProgressListener(StreamingQueryListener):
    """Every query's progress into ``lakehouse.metrics``; a bronze query's committed offsets for the lag."""

    def __init__(self, topics: dict[str, str]):
        super().__init__()
        self.topics = topics  # bronze query -> topic
        self.names: dict[str, str] = {}  # query id -> name (a terminated event carries the id only)
        self.committed: dict[str, dict[str, int]] = {}  # bronze query -> partition -> next offset

    def onQueryStarted(self, event) -> None:
        name = event.name or str(event.id)
        self.names[str(event.id)] = name
        metrics.set_active(name, True)

    def onQueryProgress(self, event) -> None:
        try:
            self.progress(json.loads(event.progress.json))
        except Exception:  # metrics must never stop a query
            log.exception("could not record a query's progress")

    def progress(self, progress: dict) -> None:
        metrics.observe_progress(progress)
        name = progress.get("name")
        if name in self.topics and (offsets := metrics.source_offsets(progress, self.topics[name])) is not None:
            self.committed[name] = offsets

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        name = self.names.get(str(event.id), str(event.id))
        metrics.set_active(name, False, failed=event.exception is not None)


@dataclass
class LagPoller:
    """Every ``interval_s``: each bronze query's lag, its topic's end offsets minus what it committed."""

    topics: dict[str, str]  # bronze query -> topic
    committed: Callable[[str], dict[str, int] | None]
    end_offsets: Callable[[str], dict]
    interval_s: float
    stopped: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        for query, topic in self.topics.items():
            done = self.committed(query)
            if done is None:
                continue
            try:
                metrics.CONSUMER_LAG.labels(topic).set(metrics.lag(self.end_offsets(topic), done))
            except Exception as exc:  # the log unreachable: the gauge keeps its last value
                log.warning("consumer lag of %s: %s", topic, exc)

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.poll()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="lag-poller", daemon=True)
        thread.start()
        return thread


def checkpoint_offsets(settings: Settings, query: str) -> dict[str, int] | None:
    """A query's committed offsets from its local checkpoint (before its first progress in this process)."""
    from lakehouse.streaming import checkpoint_dir, committed_offsets

    checkpoint = checkpoint_dir(settings, query)
    if "://" in checkpoint:
        return None
    try:
        return committed_offsets(checkpoint)
    except (OSError, ValueError, IndexError):
        return None


class Monitor:
    """The pipeline's exporter, progress listener and lag poller."""

    def __init__(self, spark, settings: Settings):
        from lakehouse import eventlog

        cfg = settings.metrics
        self.spark, self.settings = spark, settings
        topics = consumers(settings)
        self.listener = ProgressListener(topics)
        self.log = eventlog.from_settings(settings)
        self.poller = LagPoller(
            topics,
            lambda q: self.listener.committed.get(q) or checkpoint_offsets(settings, q),
            self.log.end_offsets,
            cfg.lag_interval_s,
        )
        self.server = None
        try:
            self.server, _ = start_http_server(cfg.port, cfg.host, registry=exposed_registry())
            print(f"metrics: http://{cfg.host}:{cfg.port}/metrics", file=sys.stderr, flush=True)
        except OSError as exc:  # another process has the port: the stream runs without its exporter
            log.warning("metrics exporter not started on %s:%s: %s", cfg.host, cfg.port, exc)
        spark.streams.addListener(self.listener)
        self.poller.start()

    @classmethod
    def start(cls, spark, settings: Settings) -> Monitor | None:
        return cls(spark, settings) if settings.metrics.enabled else None

    def stop(self) -> None:
        self.poller.stopped.set()
        try:
            self.spark.streams.removeListener(self.listener)
        except Exception as exc:  # the session may be stopping
            log.debug("removing the progress listener: %s", exc)
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.log.close()


# --- a Prometheus on this machine ----------------------------------------------------------------------------


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def local_targets(settings: Settings) -> dict[str, str]:
    """Scrape job -> host:port of this profile's stream exporter and API."""
    return {
        "stream": f"{_local(settings.metrics.host)}:{settings.metrics.port}",
        "api": f"{_local(settings.api.host)}:{settings.api.port}",
    }


def prometheus_config(targets: dict[str, str], scrape_interval_s: float) -> str:
    """A prometheus.yml scraping ``/metrics`` of each job's target (the shape of ops/prometheus/prometheus.yml)."""
    interval = f"{max(1, round(scrape_interval_s * 1000))}ms"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def prometheus_command(config: Path, data_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    return [binary, f"--config.file={config}", f"--storage.tsdb.path={data_dir}",
            f"--web.listen-address={host}:{port}"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lakehouse.observability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    cfg = sub.add_parser("config", help="print (or write) a prometheus.yml for this profile's stream and API")
    cfg.add_argument("--out", type=Path, default=None)
    sub.add_parser("prometheus", help="run prometheus scraping this profile's stream and API, until Ctrl-C")
    args = parser.parse_args(argv)
    settings = get_settings()
    text = prometheus_config(local_targets(settings), settings.metrics.scrape_interval_s)
    if args.command == "config":
        if args.out is None:
            print(text, end="")
        else:
            args.out.write_text(text)
        return 0
    root = settings.state_path / "prometheus"
    root.mkdir(parents=True, exist_ok=True)
    (root / "prometheus.yml").write_text(text)
    command = prometheus_command(root / "prometheus.yml", root / "data", settings.metrics.prometheus_port)
    print(f"prometheus on http://127.0.0.1:{settings.metrics.prometheus_port} scraping {local_targets(settings)}",
          file=sys.stderr)  # fmt: skip
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 0


# --- PromQL ------------------------------------------------------------------------------------------------

_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless",
    "inf", "nan",
}  # fmt: skip
_CLAUSES = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = _CLAUSES.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


if __name__ == "__main__":
    sys.exit(main())
