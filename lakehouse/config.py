"""One typed settings object, loaded from ``conf/<profile>.yaml`` with environment overrides.

The profile is chosen by ``LAKEHOUSE_PROFILE`` (default ``local``); ``LAKEHOUSE_CONF`` may point at any
YAML file instead. Every value can be overridden by an environment variable named
``LAKEHOUSE__<SECTION>__<KEY>`` (e.g. ``LAKEHOUSE__EVENTLOG__KAFKA_BOOTSTRAP=kafka:9092``).
Relative paths are resolved against the project root.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from lakehouse import PROJECT_ROOT


class TopicSettings(BaseModel):
    name: str
    partitions: int = Field(default=4, ge=1)


class TopicsSettings(BaseModel):
    transactions: TopicSettings = TopicSettings(name="transactions")
    labels: TopicSettings = TopicSettings(name="labels", partitions=2)
    market_ticks: TopicSettings = TopicSettings(name="market-ticks", partitions=2)
    fraud_alerts: TopicSettings = TopicSettings(name="fraud-alerts", partitions=2)
    fraud_review: TopicSettings = TopicSettings(name="fraud-review", partitions=2)
    risk_alerts: TopicSettings = TopicSettings(name="risk-alerts", partitions=1)

    def all(self) -> list[TopicSettings]:
        return [getattr(self, name) for name in type(self).model_fields]


class EventLogSettings(BaseModel):
    """Apache Kafka: the stack's own single-node KRaft broker (``embedded``), or any cluster at ``kafka_bootstrap``."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    max_event_bytes: int = Field(default=65536, ge=1024)
    # `make up` runs a broker (combined broker + controller, KRaft) on kafka_bootstrap's port, its controller on
    # controller_port, log dirs under the state directory, from the Maven jars in broker_jars
    embedded: bool = True
    controller_port: int = 9093
    broker_jars: str = ".jars/kafka"
    broker_heap: str = "512m"
    topics: TopicsSettings = TopicsSettings()


class OnlineStoreSettings(BaseModel):
    url: str = "redis://127.0.0.1:6392/0"
    key_prefix: str = "fl"
    # a redis-server of the project's own started by `make up` (persistence on, under the state directory)
    embedded: bool = True


class S3Settings(BaseModel):
    endpoint_url: str = "http://127.0.0.1:8333"
    access_key: str = "lakehouse"
    secret_key: str = "lakehouse-secret"
    region: str = "us-east-1"
    bucket: str = "lakehouse"
    # start SeaweedFS's S3 gateway from `make up` (the compose stack uses MinIO instead)
    embedded: bool = True


class LakehouseSettings(BaseModel):
    root: str = ".state/lakehouse"
    # time travel window: VACUUM never deletes files a version younger than this still needs
    retention_hours: int = Field(default=168, ge=0)
    # how long the Delta log (and so the list of versions) is kept
    log_retention_days: int = Field(default=30, ge=1)
    # OPTIMIZE compacts a partition once it holds at least this many small files
    compact_min_files: int = Field(default=8, ge=2)
    target_file_mb: int = Field(default=128, ge=1)


class StreamingSettings(BaseModel):
    trigger_seconds: float = Field(default=2.0, gt=0)
    # gold recomputes the partitions a silver batch touched; BI needs no sub-second freshness
    gold_trigger_seconds: float = Field(default=30.0, gt=0)
    max_records_per_trigger: int = Field(default=20000, ge=1)
    # watermark delay: events older than (max event time seen - this) go to silver.late_events
    allowed_lateness_s: int = Field(default=600, ge=0)
    # a label MERGE looks for its transaction in event dates up to this long before the label was reported
    label_horizon_days: int = Field(default=45, ge=1)


class FeatureSettings(BaseModel):
    # the online store forgets an entity this long after its last event (the longest window is 30 days)
    ttl_days: int = Field(default=31, ge=1)
    # a request's online-store read gives up after this long and answers in degraded mode
    request_timeout_ms: int = Field(default=200, ge=1)
    # the stream's stateful operators group entities into this many hash buckets (one Python call each per batch)
    state_buckets: int = Field(default=16, ge=1)
    # a training set is built this many days at a time (each chunk reads its own 30-day history)
    training_chunk_days: int = Field(default=7, ge=1)


class PostgresSettings(BaseModel):
    """MLflow's PostgreSQL: `make up` runs a cluster of its own (address and database from
    ``mlflow.backend_store_uri``) under the state directory."""

    embedded: bool = True
    # the unprivileged OS user it runs as when `make up` runs as root (created if missing)
    os_user: str = "postgres"


class MlflowSettings(BaseModel):
    tracking_uri: str = "http://127.0.0.1:5000"
    backend_store_uri: str = "postgresql+psycopg2://postgres@127.0.0.1:5440/mlflow"
    artifacts_destination: str = ".state/mlflow-artifacts"
    embedded: bool = True


class XGBoostSettings(BaseModel):
    n_estimators: int = Field(default=600, ge=1)  # upper bound: early stopping on the validation days picks fewer
    max_depth: int = Field(default=6, ge=1)
    learning_rate: float = Field(default=0.08, gt=0)
    subsample: float = Field(default=0.9, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    min_child_weight: float = Field(default=1.0, ge=0)
    early_stopping_rounds: int = Field(default=40, ge=1)


class IsolationForestSettings(BaseModel):
    n_estimators: int = Field(default=100, ge=1)  # Liu et al.'s default; scoring time grows with every tree
    max_samples: int = Field(default=256, ge=2)
    max_features: float = Field(default=1.0, gt=0, le=1)


class ModelSettings(BaseModel):
    experiment: str = "fraud-models"
    supervised_name: str = "fraud-xgboost"
    unsupervised_name: str = "fraud-isolation-forest"
    seed: int = 7
    # time split: train days, then a gap as long as the label delay, then test days (never random)
    train_days: int = Field(default=7, ge=1)
    test_days: int = Field(default=7, ge=1)
    label_delay_days: int = Field(default=7, ge=0)
    # the last share of the training days validates the imbalance strategy and early stopping
    validation_share: float = Field(default=0.2, gt=0, lt=1)
    # operating thresholds, chosen on the validation days: review at this FPR, block at the stricter one
    review_fpr: float = Field(default=0.005, gt=0, lt=1)
    block_fpr: float = Field(default=0.0005, gt=0, lt=1)
    top_k_cards: int = Field(default=100, ge=1)  # analysts' daily review capacity (card precision@k)
    review_cost: float = Field(default=5.0, ge=0)  # cost of reviewing one flagged transaction
    detection_target: float = Field(default=0.95, gt=0, le=1)
    # scenarios with a signal in the features before the fraud is reported (docs/models.md, "Quality"): not
    # amount_spike (genuine amounts overlap it) nor the compromised terminal/merchant (labels come too late)
    detectable_scenarios: list[str] = ["velocity_burst", "card_testing", "impossible_travel", "account_takeover"]
    # how often a running loader re-resolves its alias (a promotion is seen within this long)
    refresh_seconds: float = Field(default=30.0, gt=0)
    reports_dir: str = ".state/reports"
    # the market's Isolation Forest (training/market.py): ticks scoring above the (1 - market_alert_rate)
    # quantile of the training ticks raise a risk alert
    market_name: str = "market-isolation-forest"
    market_alert_rate: float = Field(default=0.005, gt=0, lt=1)
    market_reasons: int = Field(default=2, ge=1)
    xgboost: XGBoostSettings = XGBoostSettings()
    isolation_forest: IsolationForestSettings = IsolationForestSettings()


class DecisionSettings(BaseModel):
    """How the stream and the API turn rules, statistics and model scores into a decision (serving/decision.py)."""

    enabled: bool = True  # score every transaction in the stream (gold.decisions, alerts)
    rules_file: str = "conf/rules.yaml"
    rules_reload_seconds: float = Field(default=5.0, gt=0)
    block_threshold: float = Field(default=80.0, gt=0, le=100)
    review_threshold: float = Field(default=50.0, gt=0, le=100)
    # final score = max over tiers of (tier score x weight); 0 turns a tier off
    weights: dict[str, float] = {"rules": 1.0, "ml": 1.0, "anomaly": 0.8, "statistical": 0.8}
    # deviations (standard deviations, or IQRs beyond the quartiles) that reach review and block
    statistical_review_at: float = Field(default=4.0, gt=0)
    statistical_block_at: float = Field(default=8.0, gt=0)
    # a velocity deviation expects at least this many transactions in its window (cards with little history)
    statistical_min_expected: float = Field(default=0.25, gt=0)
    # champion/challenger: "shadow" scores every event with both (the champion decides), "split" lets the
    # challenger decide for split_percent of the cards (a stable hash of card_id), "off" uses the champion only
    routing: Literal["shadow", "split", "off"] = "shadow"
    split_percent: float = Field(default=10.0, ge=0, le=100)
    reasons: int = Field(default=3, ge=0)  # top SHAP contributions recorded per decision

    @model_validator(mode="after")
    def _ordered(self) -> DecisionSettings:
        if self.review_threshold >= self.block_threshold:
            raise ValueError("decision.review_threshold must be below decision.block_threshold")
        if self.statistical_review_at >= self.statistical_block_at:
            raise ValueError("decision.statistical_review_at must be below decision.statistical_block_at")
        tiers = {"rules", "ml", "anomaly", "statistical"}
        if set(self.weights) - tiers or any(w < 0 for w in self.weights.values()):
            raise ValueError(f"decision.weights takes non-negative weights of {sorted(tiers)}: {self.weights}")
        return self


class MonitoringSettings(BaseModel):
    """The model and data monitoring report (``python -m monitoring report``, docs/monitoring.md)."""

    default_days: int = Field(default=7, ge=1)  # the period when none is given: the newest days of gold.decisions
    # PSI: the reference's quantile bins (deciles), NaN a bin of its own, empty bins floored at psi_epsilon
    psi_bins: int = Field(default=10, ge=2)
    psi_epsilon: float = Field(default=1e-4, gt=0, lt=0.01)
    psi_warn: float = Field(default=0.1, gt=0)
    psi_alert: float = Field(default=0.25, gt=0)
    # rows sampled (seeded) from the training period and from the period's decisions for the drift measures
    reference_rows: int = Field(default=50_000, ge=100)
    period_rows: int = Field(default=50_000, ge=100)
    seed: int = 7
    top_rules: int = Field(default=10, ge=1)
    latency_percentiles: list[float] = [50.0, 90.0, 95.0, 99.0]
    # how long a drift alert's claim key (one alert per report period and feature) is kept
    alert_ttl_days: int = Field(default=90, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> MonitoringSettings:
        if self.psi_warn >= self.psi_alert:
            raise ValueError("monitoring.psi_warn must be below monitoring.psi_alert")
        if not all(0 < p < 100 for p in self.latency_percentiles):
            raise ValueError("monitoring.latency_percentiles must lie in (0, 100)")
        return self


class MetricsSettings(BaseModel):
    """Prometheus metrics: the stream's exporter (``make stream``) and a local Prometheus (``make prometheus``)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # the exporter's address (0.0.0.0 in a container)
    port: int = 9108
    lag_interval_s: float = Field(default=5.0, gt=0)  # how often the consumer lag is measured
    prometheus_port: int = 9090  # a local Prometheus scraping the stream and the API
    scrape_interval_s: float = Field(default=5.0, gt=0)


class ClusterSettings(BaseModel):
    """The Spark standalone cluster ``make cluster-up`` starts from the PySpark install, on loopback."""

    master_port: int = 7077
    webui_port: int = 8080  # the workers' web UIs take the ports after it
    workers: int = Field(default=2, ge=1)
    worker_cores: int = Field(default=1, ge=1)
    worker_memory: str = "2g"
    executor_memory: str = "1g"
    # where a pipeline submitted to the cluster keeps its checkpoints: storage every executor shares
    checkpoint_root: str = "s3a://lakehouse/checkpoints-cluster"

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"


class SparkSettings(BaseModel):
    master: str = "local[2]"
    shuffle_partitions: int = 4
    driver_memory: str = "2g"
    ui_enabled: bool = False
    # the JVM parts (delta-spark, the Kafka source, S3A) fetched by `make install` from Maven Central (jvm/spark)
    jars_dir: str = ".jars/spark"
    checkpoint_root: str = ".state/checkpoints"
    # any other Spark settings, applied last (e.g. LAKEHOUSE__SPARK__CONF='{"spark.driver.maxResultSize": "1m"}')
    conf: dict[str, str] = {}
    cluster: ClusterSettings = ClusterSettings()


class TrafficSettings(BaseModel):
    rate: float = 200.0
    fraud_rate: float = 0.01
    seed: int = 42
    customers: int = 5000
    label_delay_days: float = 3.0
    market_symbols: list[str] = ["ACME", "GLOBX", "INITECH", "UMBRL", "WAYNE"]
    market_rate: float = 5.0
    # a producer holds its batch through an event-log outage and retries with backoff; after this many seconds of
    # outage it gives up with an error naming the undelivered events (null: wait for the log however long it takes)
    outage_give_up_s: float | None = Field(default=None, gt=0)


class ContractSettings(BaseModel):
    max_future_skew_s: int = 300
    min_event_time: str = "2000-01-01T00:00:00Z"


Scope = Literal["score", "read", "audit"]


class ApiToken(BaseModel):
    """One bearer token of the API and what it may do."""

    token: SecretStr = Field(min_length=16)
    scopes: list[Scope]


class ApiSettings(BaseModel):
    """The FastAPI service (``python -m serving``, serving/api.py)."""

    host: str = "127.0.0.1"
    port: int = 8000
    # name -> token and scopes; set them in conf/<profile>.yaml or LAKEHOUSE__API__TOKENS='{"name": {...}}'
    tokens: dict[str, ApiToken] = {}
    rate_limit_per_s: float = Field(default=0.0, ge=0)  # per token; 0 = no limit
    rate_limit_burst: int = Field(default=200, ge=1)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch: int = Field(default=1000, ge=1)
    history_max: int = Field(default=500, ge=1)
    audit_log: str = ".state/audit/api.jsonl"  # every audit call, one JSON line
    # uvicorn worker processes; with more than one, /metrics adds up every worker's (prometheus multiprocess) and
    # rate limits apply per worker
    workers: int = Field(default=1, ge=1)


class Settings(BaseSettings):
    """The whole configuration of one deployment (profile)."""

    model_config = SettingsConfigDict(env_prefix="LAKEHOUSE__", env_nested_delimiter="__", extra="forbid")

    profile: str = "local"
    state_dir: str = ".state"
    eventlog: EventLogSettings = EventLogSettings()
    online_store: OnlineStoreSettings = OnlineStoreSettings()
    s3: S3Settings = S3Settings()
    lakehouse: LakehouseSettings = LakehouseSettings()
    streaming: StreamingSettings = StreamingSettings()
    features: FeatureSettings = FeatureSettings()
    postgres: PostgresSettings = PostgresSettings()
    mlflow: MlflowSettings = MlflowSettings()
    models: ModelSettings = ModelSettings()
    decision: DecisionSettings = DecisionSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    metrics: MetricsSettings = MetricsSettings()
    spark: SparkSettings = SparkSettings()
    traffic: TrafficSettings = TrafficSettings()
    contracts: ContractSettings = ContractSettings()
    api: ApiSettings = ApiSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, YamlConfigSettingsSource(settings_cls, yaml_file=conf_file()))

    def path(self, value: str) -> Path:
        """Resolve a configured path (relative ones against the project root)."""
        p = Path(value)
        return p if p.is_absolute() else PROJECT_ROOT / p

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    def table_uri(self, layer: str, table: str) -> str:
        """URI of a Delta table, e.g. ``table_uri("bronze", "transactions")``."""
        root = self.lakehouse.root
        if "://" in root:
            return f"{root.rstrip('/')}/{layer}/{table}"
        return str(self.path(root) / layer / table)


def conf_file() -> Path:
    explicit = os.environ.get("LAKEHOUSE_CONF")
    if explicit:
        return Path(explicit)
    return PROJECT_ROOT / "conf" / f"{os.environ.get('LAKEHOUSE_PROFILE', 'local')}.yaml"


ISOLATED_TOPICS = ("transactions", "labels", "market_ticks", "fraud_alerts", "fraud_review", "risk_alerts")


def isolated(root: Path, tag: str, overrides: dict[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """A lakehouse of its own on the same services: tables and checkpoints under ``root``, topics named
    ``<tag>-<topic>``, online-store keys under the prefix ``<tag>``. Returns its settings and the environment
    that gives them to a child process."""
    env = {
        "LAKEHOUSE__LAKEHOUSE__ROOT": str(root / "lakehouse"),
        "LAKEHOUSE__ONLINE_STORE__KEY_PREFIX": tag,
        "LAKEHOUSE__SPARK__CHECKPOINT_ROOT": str(root / "checkpoints"),
        **{f"LAKEHOUSE__EVENTLOG__TOPICS__{t.upper()}__NAME": f"{tag}-{t}" for t in ISOLATED_TOPICS},
        **(overrides or {}),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return Settings(), env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of the current process (cached; call ``get_settings.cache_clear()`` after env changes)."""
    path = conf_file()
    if not path.exists():
        raise FileNotFoundError(f"configuration file {path} not found (set LAKEHOUSE_PROFILE or LAKEHOUSE_CONF)")
    return Settings()
