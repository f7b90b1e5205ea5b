from lakehouse.config import Settings, get_settings


def test_profile_yaml_is_loaded(settings: Settings):
    assert settings.profile == "test"
    assert settings.eventlog.kafka_bootstrap == "127.0.0.1:9192"
    assert settings.state_path.name == ".state-test"


def test_environment_overrides_yaml(monkeypatch):
    monkeypatch.setenv("LAKEHOUSE__EVENTLOG__KAFKA_BOOTSTRAP", "kafka:9092")
    monkeypatch.setenv("LAKEHOUSE__SPARK__SHUFFLE_PARTITIONS", "7")
    get_settings.cache_clear()
    try:
        s = get_settings()
        assert s.eventlog.kafka_bootstrap == "kafka:9092"
        assert s.spark.shuffle_partitions == 7
        assert s.eventlog.controller_port == 9193  # untouched values still come from the YAML
    finally:
        get_settings.cache_clear()


def test_every_profile_loads(monkeypatch):
    for profile in ("local", "test", "compose"):
        monkeypatch.setenv("LAKEHOUSE_PROFILE", profile)
        get_settings.cache_clear()
        assert get_settings().profile == profile
    get_settings.cache_clear()


def test_missing_profile_is_a_clear_error(monkeypatch):
    import pytest

    monkeypatch.setenv("LAKEHOUSE_PROFILE", "nope")
    get_settings.cache_clear()
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        get_settings()
    get_settings.cache_clear()


def test_table_uri_for_local_and_s3(settings: Settings):
    assert settings.table_uri("bronze", "transactions").endswith(".state-test/lakehouse/bronze/transactions")
    s3 = settings.model_copy(update={"lakehouse": settings.lakehouse.model_copy(update={"root": "s3://b/t/"})})
    assert s3.table_uri("silver", "x") == "s3://b/t/silver/x"
