"""Test fixtures: the test profile's own stack, started once per session, and one SparkSession."""

from __future__ import annotations

import os
import shutil

os.environ["LAKEHOUSE_PROFILE"] = "test"

import pytest

from lakehouse.config import Settings, get_settings


@pytest.fixture(scope="session")
def settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings):
    """The real embedded stack (event log, online Redis, S3, MLflow) on the test profile's ports, fresh."""
    import redis

    from lakehouse.stack.__main__ import down, up

    down(settings)
    shutil.rmtree(settings.state_path, ignore_errors=True)
    up(settings)
    # the online store is the machine's Redis: the test profile's database starts empty too
    redis.Redis.from_url(settings.online_store.url).flushdb()
    yield settings
    down(settings)


@pytest.fixture(scope="session")
def spark(settings: Settings):
    from lakehouse.spark import get_spark

    session = get_spark(settings, "lakehouse-tests")
    yield session
    session.stop()


def pytest_collection_modifyitems(items):
    for item in items:
        if "stack" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)
