"""lakehouse/metrics.py and lakehouse/observability.py: progress, rows, decisions and models into Prometheus
metrics; a StreamingQueryListener on a real query; the dashboards' PromQL against the metric names the project
defines; the compose wiring; and a real Prometheus (Debian's ``prometheus``) scraping the stream's exporter and
the API's /metrics."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prometheus_client import generate_latest, start_http_server
from support import free_port

from lakehouse import PROJECT_ROOT, metrics, quality
from lakehouse.config import Settings
from lakehouse.observability import (
    LagPoller,
    ProgressListener,
    exposed_registry,
    local_targets,
    metric_names,
    prometheus_command,
    prometheus_config,
    promql_metrics,
)

DASHBOARDS = PROJECT_ROOT / "ops" / "grafana" / "dashboards"
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}  # what Prometheus adds per target
R = metrics.REGISTRY


def value(name: str, **labels) -> float:
    return R.get_sample_value(name, labels) or 0.0


def progress(name: str, batch: int, rows: int = 100, **fields) -> dict:
    """A StreamingQueryProgress as Spark's JSON has it (only the fields the metrics read)."""
    return {
        "id": "q-1", "runId": "r-1", "name": name, "timestamp": "2024-05-01T12:00:00.500Z", "batchId": batch,
        "batchDuration": 1500, "numInputRows": rows, "inputRowsPerSecond": 50.0, "processedRowsPerSecond": 66.7,
        "durationMs": {"triggerExecution": 1500}, "sources": [], **fields,
    }  # fmt: skip


# --- pure updates ---------------------------------------------------------------------------------------------


def test_progress_counts_rows_rates_and_batch_duration_once_per_batch():
    assert metrics.observe_progress(progress("t.progress", 0, rows=100))
    assert metrics.observe_progress(progress("t.progress", 1, rows=40, inputRowsPerSecond="NaN"))
    assert not metrics.observe_progress(progress("t.progress", 1, rows=40))  # the same batch again
    assert value("lakehouse_stream_input_rows_total", query="t.progress") == 140
    assert value("lakehouse_stream_input_rows_per_second", query="t.progress") == 0.0
    assert value("lakehouse_stream_processed_rows_per_second", query="t.progress") == pytest.approx(66.7)
    assert value("lakehouse_stream_batch_duration_seconds_count", query="t.progress") == 2
    assert value("lakehouse_stream_batch_duration_seconds_sum", query="t.progress") == pytest.approx(3.0)
    assert value("lakehouse_stream_batch_duration_seconds_bucket", query="t.progress", le="1.0") == 0
    assert value("lakehouse_stream_batch_duration_seconds_bucket", query="t.progress", le="2.0") == 2
    stamp = datetime(2024, 5, 1, 12, 0, 0, 500000, UTC).timestamp()
    assert value("lakehouse_stream_last_batch_timestamp_seconds", query="t.progress") == stamp


def test_source_offsets_of_the_event_log_and_kafka_sources():
    assert metrics.source_offsets({"sources": [{"endOffset": {"0": 12, "1": 3}}]}, "tx") == {"0": 12, "1": 3}
    kafka = {"sources": [{"endOffset": {"tx": {"0": 7, "1": 9}}}]}
    assert metrics.source_offsets(kafka, "tx") == {"0": 7, "1": 9}
    assert metrics.source_offsets({"sources": [{"endOffset": '{"0": 5}'}]}, "tx") == {"0": 5}
    assert metrics.source_offsets({"sources": [{"endOffset": None}]}, "tx") is None
    assert metrics.source_offsets({"sources": []}, "tx") is None
    assert metrics.lag({0: 20, 1: 5, 2: 4}, {"0": 12, "1": 5}) == 8 + 0 + 4


def test_listener_keeps_bronze_offsets_and_lag_poller_sets_the_gauge():
    listener = ProgressListener({"bronze.t_lag": "t-lag-topic"})
    listener.progress(progress("bronze.t_lag", 3, sources=[{"endOffset": {"0": 10, "1": 4}}]))
    assert listener.committed == {"bronze.t_lag": {"0": 10, "1": 4}}
    ends = {"t-lag-topic": {0: 15, 1: 4}}
    poller = LagPoller({"bronze.t_lag": "t-lag-topic", "bronze.t_none": "t-none"}, listener.committed.get,
                       ends.__getitem__, interval_s=0.05)  # fmt: skip
    poller.poll()
    assert value("lakehouse_stream_consumer_lag", topic="t-lag-topic") == 5
    assert R.get_sample_value("lakehouse_stream_consumer_lag", {"topic": "t-none"}) is None  # never committed
    ends["t-lag-topic"] = {0: 30, 1: 6}
    thread = poller.start()
    deadline = time.monotonic() + 5
    while value("lakehouse_stream_consumer_lag", topic="t-lag-topic") != 22 and time.monotonic() < deadline:
        time.sleep(0.02)
    poller.stopped.set()
    thread.join(5)
    assert value("lakehouse_stream_consumer_lag", topic="t-lag-topic") == 22
    assert not thread.is_alive()


def test_rows_written_dead_letters_late_and_duplicates():
    metrics.observe_written("bronze.t_rows", "bronze.t_rows", 90)
    metrics.observe_written("bronze.t_rows", metrics.DEAD_LETTER_TABLE, 7)
    assert value("lakehouse_stream_rows_written_total", query="bronze.t_rows", table="bronze.t_rows") == 90
    assert value("lakehouse_stream_dead_letters_total", table="t_rows") == 7
    wm = datetime(2024, 5, 1, 11, 50, tzinfo=UTC)
    metrics.observe_silver("silver.t_rows", late=3, duplicates=2, watermark=wm)
    metrics.observe_silver("silver.t_rows", late=1, duplicates=0, watermark=None)
    assert value("lakehouse_stream_late_events_total", table="silver.t_rows") == 4
    assert value("lakehouse_stream_duplicates_total", table="silver.t_rows") == 2
    assert value("lakehouse_stream_watermark_timestamp_seconds", table="silver.t_rows") == wm.timestamp()


def decision(outcome: str, route: str = "champion", **fields) -> dict:
    row = {"decision": outcome, "route": route, "ml_probability": 0.42, "scoring_ms": 0.8,
           "shadow_decision": None, "shadow_probability": None, "latency_ms": None, "model_error": None}  # fmt: skip
    return {**row, **fields}


def observed(spark, rows: list[dict]) -> list[dict]:
    """``rows`` as decisions in a DataFrame, aggregated as the stream does on its executors."""
    from serving.stream import observations

    schema = ("decision string, route string, ml_probability double, scoring_ms double, shadow_decision string, "
              "shadow_probability double, latency_ms double, model_error string")  # fmt: skip
    return [r.asDict() for r in observations(spark.createDataFrame(rows, schema)).collect()]


def test_decisions_by_outcome_route_shadow_and_latencies(spark):
    before = {k: value(k) for k in ("fraud_scoring_latency_seconds_count", "fraud_decision_latency_seconds_count",
                                    "fraud_decision_latency_seconds_sum")}  # fmt: skip
    approve_before = value("fraud_decisions_total", decision="approve", route="challenger")
    shadow_before = value("fraud_shadow_decisions_total", decision="block", shadow_decision="review")
    low = value("fraud_decision_latency_seconds_bucket", le="2.0")
    rows = [
        decision("approve", "challenger", ml_probability=None, latency_ms=1500.0),
        decision("block", shadow_decision="review", shadow_probability=0.6, ml_probability=0.95),
        decision("block", scoring_ms=None, latency_ms=250.0),
        decision("review", latency_ms=1900.0, model_error="xgb v3 failed to score"),
    ]
    seen = observed(spark, rows)
    # an aggregate: one row per metric, labels and bucket (the two latencies in 1..2 s share theirs)
    assert len([o for o in seen if o["metric"] == "latency"]) == 2
    assert [(o["a"], o["n"]) for o in seen if o["metric"] == "model_error"] == [("xgb v3 failed to score", 1)]
    metrics.observe_decisions(seen)
    assert value("fraud_decisions_total", decision="approve", route="challenger") == approve_before + 1
    assert value("fraud_shadow_decisions_total", decision="block", shadow_decision="review") == shadow_before + 1
    assert value("fraud_scoring_latency_seconds_count") == before["fraud_scoring_latency_seconds_count"] + 3
    assert value("fraud_decision_latency_seconds_count") == before["fraud_decision_latency_seconds_count"] + 3
    assert value("fraud_decision_latency_seconds_sum") == pytest.approx(before["fraud_decision_latency_seconds_sum"]
                                                                        + 3.65)  # fmt: skip
    assert value("fraud_decision_latency_seconds_bucket", le="2.0") == low + 3
    assert value("fraud_model_probability_bucket", role="challenger", le="0.7") >= 1  # the shadow's 0.6
    metrics.observe_alerts(["block", "review", "block"])
    assert value("fraud_alerts_published_total", decision="block") >= 2
    metrics.observe_anomalies({"T-ACME": 2})
    assert value("fraud_market_anomalies_total", symbol="T-ACME") == 2
    metrics.observe_model_errors("t-stage", 3)
    assert value("fraud_model_errors_total", stage="t-stage") == 3


def test_model_version_info_follows_the_models_in_use():
    m = SimpleNamespace
    metrics.set_models({"t-champion": m(name="xgb", version="3"), "t-challenger": m(name="xgb", version="4")})
    assert value("fraud_model_version_info", role="t-champion", model="xgb", version="3") == 1
    metrics.set_models({"t-champion": m(name="xgb", version="4"), "t-challenger": None})  # a promotion
    assert R.get_sample_value("fraud_model_version_info", {"role": "t-champion", "model": "xgb", "version": "3"}) \
        is None  # fmt: skip
    assert value("fraud_model_version_info", role="t-champion", model="xgb", version="4") == 1
    assert R.get_sample_value("fraud_model_version_info", {"role": "t-challenger", "model": "xgb", "version": "4"}) \
        is None  # fmt: skip


def test_the_exporter_serves_the_quality_counters_too():
    quality.ROWS_QUARANTINED.labels("t-suite").inc(2)
    text = generate_latest(exposed_registry()).decode()
    assert 'lakehouse_quality_rows_quarantined_total{suite="t-suite"} 2.0' in text
    assert "lakehouse_stream_input_rows_total" in text
    names = metric_names(exposed_registry())
    assert {"lakehouse_quality_checks_failed_total", "fraud_scoring_latency_seconds_bucket",
            "fraud_model_version_info", "lakehouse_stream_consumer_lag"} <= names  # fmt: skip


# --- a real query -------------------------------------------------------------------------------------------


def test_listener_records_a_running_query(spark):
    listener = ProgressListener({})
    spark.streams.addListener(listener)
    seen = threading.Event()

    def handler(batch, batch_id):
        if batch.count():
            seen.set()

    query = (
        spark.readStream.format("rate").option("rowsPerSecond", 50).load()
        .writeStream.queryName("t_listener").foreachBatch(handler).trigger(processingTime="500 milliseconds")
        .start()
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while value("lakehouse_stream_input_rows_total", query="t_listener") == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert value("lakehouse_stream_query_active", query="t_listener") == 1
    finally:
        query.stop()
        deadline = time.monotonic() + 20
        while value("lakehouse_stream_query_active", query="t_listener") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        spark.streams.removeListener(listener)
    assert seen.is_set()
    assert value("lakehouse_stream_input_rows_total", query="t_listener") > 0
    assert value("lakehouse_stream_batch_duration_seconds_count", query="t_listener") >= 1
    assert value("lakehouse_stream_query_active", query="t_listener") == 0
    assert value("lakehouse_stream_query_failures_total", query="t_listener") == 0


def test_monitor_serves_the_registry_and_tolerates_a_taken_port(spark, settings: Settings):
    from lakehouse.observability import Monitor

    port = free_port()
    cfg = settings.metrics.model_copy(update={"port": port, "lag_interval_s": 3600})
    mine = settings.model_copy(update={"metrics": cfg})
    monitor = Monitor.start(spark, mine)
    second = Monitor.start(spark, mine)  # the port is taken: no exporter, no error
    try:
        assert second.server is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert "# TYPE lakehouse_stream_input_rows_total counter" in text
        assert "# TYPE lakehouse_quality_checks_failed_total counter" in text
    finally:
        second.stop()
        monitor.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    off = settings.model_copy(update={"metrics": cfg.model_copy(update={"enabled": False})})
    assert Monitor.start(spark, off) is None


# --- dashboards and wiring ------------------------------------------------------------------------------------


def defined_metrics() -> set[str]:
    from serving.api import Metrics

    return metric_names(exposed_registry()) | metric_names(Metrics().registry) | SCRAPE_SERIES


def expressions(node) -> list[str]:
    """Every PromQL ``expr`` in a dashboard (panels, rows' panels, targets)."""
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for v in node.values() for e in expressions(v)]
    if isinstance(node, list):
        return [e for v in node for e in expressions(v)]
    return []


def test_promql_metrics_finds_only_metric_names():
    expr = ('histogram_quantile(0.99, sum by (le, query) (rate(lakehouse_stream_batch_duration_seconds_bucket'
            '{query=~"bronze.*"}[$__rate_interval])))')  # fmt: skip
    assert promql_metrics(expr) == {"lakehouse_stream_batch_duration_seconds_bucket"}
    expr = 'sum(rate(fraud_decisions_total{decision="block"}[5m])) / ignoring(x) sum(rate(fraud_x_total[5m])) > 0'
    assert promql_metrics(expr) == {"fraud_decisions_total", "fraud_x_total"}
    assert promql_metrics("time() - max by (query) (lakehouse_stream_last_batch_timestamp_seconds) offset 1m") == {
        "lakehouse_stream_last_batch_timestamp_seconds"
    }
    assert "fraud_no_such_metric" in promql_metrics("sum(fraud_no_such_metric)") - defined_metrics()


def test_dashboards_use_only_defined_metrics():
    files = sorted(DASHBOARDS.glob("*.json"))
    assert {f.stem for f in files} >= {"pipeline-health", "fraud-operations", "model-comparison"}
    defined, uids = defined_metrics(), set()
    for path in files:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids, path
        uids.add(dashboard["uid"])
        exprs = expressions(dashboard["panels"])
        assert len(exprs) >= 4, path
        for expr in exprs:
            unknown = promql_metrics(expr) - defined
            assert not unknown, f"{path.name}: {expr} uses undefined metrics {sorted(unknown)}"
            assert promql_metrics(expr), f"{path.name}: {expr} selects no metric"


def test_compose_prometheus_scrapes_the_services_the_compose_profile_exposes():
    config = yaml.safe_load((PROJECT_ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    compose_profile = yaml.safe_load((PROJECT_ROOT / "conf" / "compose.yaml").read_text())
    assert targets["stream"] == [f"stream:{compose_profile['metrics']['port']}"]
    assert targets["api"] == ["api:8000"]
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
    for service in ("prometheus", "grafana"):
        image = compose[service]["image"]
        assert ":" in image and not image.endswith(":latest"), image
    mounts = " ".join(compose["grafana"]["volumes"] + compose["prometheus"]["volumes"])
    assert "./ops/grafana/dashboards:" in mounts and "./ops/grafana/provisioning:" in mounts
    assert "./ops/prometheus/prometheus.yml:" in mounts


def test_compose_config_is_what_prometheus_config_renders_and_promtool_accepts():
    path = PROJECT_ROOT / "ops" / "prometheus" / "prometheus.yml"
    ours = yaml.safe_load(path.read_text())
    rendered = yaml.safe_load(prometheus_config({"api": "api:8000", "stream": "stream:9108"}, 5))
    assert ours["scrape_configs"] == rendered["scrape_configs"]
    check = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_local_config_scrapes_the_profile_ports(settings: Settings):
    config = yaml.safe_load(prometheus_config(local_targets(settings), 0.5))
    assert config["global"]["scrape_interval"] == "500ms"
    jobs = {c["job_name"]: c["static_configs"][0]["targets"] for c in config["scrape_configs"]}
    assert jobs == {
        "stream": [f"127.0.0.1:{settings.metrics.port}"],
        "api": [f"{settings.api.host}:{settings.api.port}"],
    }


# --- a real Prometheus ----------------------------------------------------------------------------------------


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def api_server(settings: Settings, tmp_path: Path):
    """The API app (on test_api's fakes) under uvicorn on a free port: its base URL."""
    import uvicorn
    from test_api import FakeFeatures, FakeLake, FakeLog, models, tuned

    from serving.api import Services, create_app
    from serving.rules import RuleBook
    from serving.scorer import Scorer

    rules = RuleBook(settings.path(settings.decision.rules_file), reload_seconds=3600)
    services = Services(Scorer(settings, models(), rules=rules), FakeFeatures(), FakeLake(), FakeLog())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tuned(settings, tmp_path), lambda: services),
                                           host="127.0.0.1", port=port, log_level="warning"))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_prometheus_scrapes_the_stream_and_the_api(api_server: str, tmp_path: Path, spark):
    # the stream's exporter, with a batch, a decision and a lag
    metrics.observe_progress(progress("t.scraped", 0, rows=123))
    metrics.observe_decisions(observed(spark, [decision("review", "t-route")]))
    metrics.CONSUMER_LAG.labels("t-scraped-topic").set(17)
    exporter, _ = start_http_server(free_port(), "127.0.0.1", registry=exposed_registry())
    stream = f"127.0.0.1:{exporter.server_port}"
    # the API: a refused request is an auth failure and a latency sample
    try:
        urllib.request.urlopen(f"http://{api_server}/v1/models", timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 401
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config({"stream": stream, "api": api_server}, 1.0))
    port = free_port()
    with open(tmp_path / "prometheus.log", "w") as err:  # the child keeps its own descriptor
        proc = subprocess.Popen(prometheus_command(config, tmp_path / "data", port), stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip
    base = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> list:
        try:
            return get_json(f"{base}/query?query={urllib.parse.quote(expr)}")["data"]["result"]
        except OSError:
            return []

    try:
        deadline, health, results = time.monotonic() + 60, {}, {}
        exprs = {
            "rows": 'lakehouse_stream_input_rows_total{query="t.scraped"}',
            "lag": 'lakehouse_stream_consumer_lag{topic="t-scraped-topic"}',
            "decisions": 'fraud_decisions_total{decision="review",route="t-route"}',
            "auth": 'fraud_api_auth_failures_total{status="401"}',
        }
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                targets = get_json(f"{base}/targets")["data"]["activeTargets"]
                health = {t["labels"]["job"]: t["health"] for t in targets}
            except OSError:
                pass
            results = {k: query(e) for k, e in exprs.items()}
            if health == {"stream": "up", "api": "up"} and all(results.values()):
                break
            time.sleep(0.5)
        assert health == {"stream": "up", "api": "up"}
        assert float(results["rows"][0]["value"][1]) == 123
        assert float(results["lag"][0]["value"][1]) == 17
        assert float(results["decisions"][0]["value"][1]) >= 1
        assert float(results["auth"][0]["value"][1]) >= 1
        # every dashboard expression parses and evaluates (Grafana's interval variables as Grafana sets them)
        for path in sorted(DASHBOARDS.glob("*.json")):
            for expr in expressions(json.loads(path.read_text())["panels"]):
                concrete = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
                answer = get_json(f"{base}/query?query={urllib.parse.quote(concrete)}")
                assert answer["status"] == "success", (path.name, expr, answer)
    finally:
        proc.terminate()
        proc.wait(20)
        exporter.shutdown()
        exporter.server_close()
