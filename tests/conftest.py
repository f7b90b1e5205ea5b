"""Test fixtures: the test profile's own stack, started once per session, and one SparkSession."""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import timedelta

os.environ["LAKEHOUSE_PROFILE"] = "test"
# before any test module loads libgomp (scikit-learn, XGBoost): see training/__init__.py
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from lakehouse.config import Settings, get_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    """The real embedded stack (event log, online Redis, PostgreSQL, S3, MLflow) on the test profile's ports,
    fresh: every service is the project's own, its data under the test state directory."""
    from tools.stack.__main__ import down, up

    down(settings)
    shutil.rmtree(settings.state_path, ignore_errors=True)
    up(settings)
    yield settings
    down(settings)


@pytest.fixture(scope="session")
def spark(settings: Settings):
    from lakehouse.spark import get_spark

    session = get_spark(settings, "lakehouse-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def feature_lake(stack, tmp_path_factory):
    """An isolated lakehouse (own topics, tables, checkpoints and online-store keys) after one pipeline pass over
    two days of generated traffic from ``FEATURE_LAKE_START``: (settings, process env, event log)."""
    from support import FEATURE_LAKE_DAYS, FEATURE_LAKE_START, run

    from features.store import OnlineStore
    from lakehouse import eventlog
    from lakehouse.config import isolated

    root = tmp_path_factory.mktemp("features")
    overrides = {"LAKEHOUSE__TRAFFIC__MARKET_RATE": "0.005"}
    settings, env = isolated(root, "features", overrides)
    env = {**os.environ, **env}
    OnlineStore(settings).clear()
    log = eventlog.from_settings(settings)
    eventlog.ensure_topics(log, settings)
    run(env, "-m", "tools.traffic", "generate", "--rate", "0.06", "--customers", "200", "--fraud-rate", "0.03",
        "--start", FEATURE_LAKE_START.isoformat(), "--days", str(FEATURE_LAKE_DAYS), "--speedup", "0",
        "--label-delay-days", "0.3", "--with-market", "--seed", "5")  # fmt: skip
    out = run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    assert "[features.transactions] batch 0" in out
    yield settings, env, log
    log.close()


@pytest.fixture(scope="session")
def trained(feature_lake):
    """The models trained once on the feature lake (day 1 trains, day 2 tests; the sets built by the CLI, the
    fit in this process) under model names of their own: (settings, process env, training summary)."""
    from support import FEATURE_LAKE_START, run

    from training.train import TEST_TABLE, TRAIN_TABLE, train

    day1 = FEATURE_LAKE_START.date()
    day2 = day1 + timedelta(days=1)
    settings, env, _ = feature_lake
    tag = uuid.uuid4().hex[:8]
    names = {"supervised_name": f"xgb-{tag}", "unsupervised_name": f"iforest-{tag}", "market_name": f"market-{tag}"}
    settings = settings.model_copy(update={"models": settings.models.model_copy(update=names)})
    env = {**env, **{f"LAKEHOUSE__MODELS__{k.upper()}": v for k, v in names.items()}}
    for table, day in ((TRAIN_TABLE, day1), (TEST_TABLE, day2)):
        run(env, "-m", "features", "build-training-set", "--start", str(day), "--end", str(day),
            "--label-delay", "2d", "--table", table)  # fmt: skip
    summary = train(settings, day1, day2, train_days=1, test_days=1, label_delay_days=0, build=False)
    return settings, env, summary


@pytest.fixture(scope="session")
def decided(trained):
    """The feature lake after one more pipeline pass over an hour of new traffic (and ticks), scored with the
    models."""
    from support import run

    from lakehouse import delta

    settings, env, summary = trained
    silver = delta.read_arrow(settings, settings.table_uri("silver", "transactions"), columns=["event_time"])
    start = max(silver.column("event_time").to_pylist()) + timedelta(minutes=5)
    market = {**env, "LAKEHOUSE__TRAFFIC__MARKET_RATE": "0.5"}  # ~8,600 ticks, ~40 of them injected anomalies
    run(market, "-m", "tools.traffic", "generate", "--rate", "1", "--customers", "200", "--fraud-rate", "0.05",
        "--start", start.isoformat(), "--days", "0.04", "--speedup", "0", "--label-delay-days", "0.3",
        "--with-market", "--seed", "9")  # fmt: skip
    out = run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    assert "decisions" in out, out[-2000:]
    return settings, env, summary, start


def pytest_collection_modifyitems(items):
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
