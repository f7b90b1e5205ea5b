"""The standalone cluster of `make cluster-up`: a master and two workers started from the PySpark install on
loopback, and the pipeline submitted to them with the same code and the cluster's settings (executors in the
workers, checkpoints on the S3 server) writes the same tables as local mode does from the same events."""

from __future__ import annotations

import json
import os
import uuid

import pyarrow as pa
import pytest
from support import run, same

from lakehouse import delta, eventlog
from lakehouse.config import Settings, isolated
from tools.stack.cluster import cluster_env, cluster_services, master_state

START = "2026-03-04T10:00:00Z"
# when a row was processed, not what it says: these differ between any two runs
PROCESSING_TIME = {"ingested_at", "processed_at", "labeled_at", "computed_at", "decided_at", "latency_ms",
                   "scoring_ms", "failed_at"}  # fmt: skip
COMPARED = [("bronze", t) for t in ("transactions", "labels", "market_ticks")] + [
    ("silver", "transactions"), ("silver", "labels"), ("silver", "market_ticks"),
    ("features", "transactions"), ("features", "market_ticks"),
    ("gold", "card_daily"), ("gold", "merchant_daily"), ("gold", "fraud_summary_daily"), ("gold", "market_risk_daily"),
    ("gold", "decisions"),
]  # fmt: skip


@pytest.fixture(scope="module")
def cluster(stack: Settings):
    """The test profile's cluster, started the way `make cluster-up` starts it, stopped after the module."""
    from tools.stack.__main__ import down, start

    services = cluster_services(stack)
    start(stack, services)
    yield stack
    down(stack, services)


def lake(tmp_path_factory, name: str, tag: str, tables: str, overrides: dict[str, str]) -> tuple[Settings, dict]:
    """An isolated lakehouse on the event-log topics of ``tag``, its tables under ``tables``."""
    root = tmp_path_factory.mktemp(name)
    common = {
        "LAKEHOUSE__LAKEHOUSE__ROOT": f"{tables}/{name}",
        "LAKEHOUSE__ONLINE_STORE__KEY_PREFIX": f"{tag}-{name}",
        # no model registered under these names: the rules and statistics decide
        **{f"LAKEHOUSE__MODELS__{role}_NAME": f"{tag}-{role.lower()}" for role in ("SUPERVISED", "UNSUPERVISED")},
        "LAKEHOUSE__MODELS__MARKET_NAME": f"{tag}-market",
    }
    settings, env = isolated(root, tag, {**common, **overrides})
    return settings, {**os.environ, **env}


def rows(settings: Settings, layer: str, name: str) -> list[dict]:
    """The table's rows without their processing times, in one canonical order (of their non-float values)."""
    table = delta.read_arrow(settings, settings.table_uri(layer, name))
    table = table.drop_columns([c for c in table.column_names if c in PROCESSING_TIME])
    exact = [f.name for f in table.schema if not pa.types.is_floating(f.type)]
    return sorted(table.to_pylist(), key=lambda r: json.dumps([r[c] for c in exact], default=str))


def agree(a: dict, b: dict) -> bool:
    """Two rows agree: floats to a relative 1e-9 (sums add up in another order on other partitions)."""
    return a.keys() == b.keys() and all(
        same(a[k], b[k]) if isinstance(a[k], float) or isinstance(b[k], float) else a[k] == b[k] for k in a
    )


def test_the_cluster_run_writes_what_local_mode_writes(cluster: Settings, tmp_path_factory):
    tag = f"cl-{uuid.uuid4().hex[:6]}"
    tables = f"s3a://{cluster.s3.bucket}/tests/{tag}"
    local, local_env = lake(tmp_path_factory, "local", tag, tables, {})
    on_cluster = cluster_env(cluster)
    on_cluster["LAKEHOUSE__SPARK__CHECKPOINT_ROOT"] = f"{tables}/cluster-checkpoints"
    remote, remote_env = lake(tmp_path_factory, "cluster", tag, tables, on_cluster)
    assert remote.spark.master.startswith("spark://") and remote.spark.checkpoint_root.startswith("s3a://")

    log = eventlog.from_settings(local)
    eventlog.ensure_topics(log, local)
    log.close()
    run(local_env, "-m", "tools.traffic", "generate", "--rate", "0.8", "--start", START, "--days", "0.05",
        "--speedup", "0", "--label-delay-days", "0.005", "--fraud-rate", "0.05", "--with-market",
        "--seed", "13")  # fmt: skip
    # the same code, submitted to the cluster: its two workers each run an executor
    out = run(remote_env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    assert "[features.transactions] batch 0" in out
    apps = (master_state(cluster) or {}).get("completedapps", [])
    assert any(a["name"] == "fraud-lakehouse-stream" and a["cores"] == 2 for a in apps), json.dumps(apps)[:2000]
    run(local_env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")

    for layer, name in COMPARED:
        mine, theirs = rows(local, layer, name), rows(remote, layer, name)
        assert mine, f"{layer}.{name} is empty"
        assert len(mine) == len(theirs), f"{layer}.{name}: {len(mine)} rows in local mode, {len(theirs)} on the cluster"
        diff = [(a, b) for a, b in zip(mine, theirs, strict=True) if not agree(a, b)]
        assert not diff, f"{layer}.{name}: {len(diff)} rows differ, e.g. {diff[0]}"
    assert len(rows(remote, "gold", "decisions")) == len(rows(remote, "silver", "transactions"))
