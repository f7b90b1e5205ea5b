"""The API's response bodies (OpenAPI documented). Requests are transactions as their contract has them
(``lakehouse/contracts/transaction.v1.json``), validated by the same code as the stream's bronze layer."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class TierScores(BaseModel):
    rules: float | None = Field(None, description="highest score of the rules triggered (0-100)")
    statistical: float | None = Field(None, description="largest deviation mapped to 0-100")
    ml: float | None = Field(None, description="the acting model's probability mapped to 0-100")
    anomaly: float | None = Field(None, description="the Isolation Forest's score mapped to 0-100")


class ModelRef(BaseModel):
    name: str | None
    version: str | None
    route: str | None = Field(None, description="champion or challenger: which one decided")


class Shadow(BaseModel):
    version: str | None
    probability: float | None
    decision: str | None


class Score(BaseModel):
    transaction_id: str
    decision: str = Field(description="approve | review | block")
    score: float = Field(description="final score 0-100")
    driver: str | None = Field(description="the tier (or rule) that set the score")
    tier_scores: TierScores
    triggered_rules: list[str]
    reasons: list[str] = Field(description="rule reason codes, STAT_* deviations, ML_<feature> SHAP reasons")
    model: ModelRef
    shadow: Shadow | None
    anomaly_model_version: str | None
    rules_version: str | None
    features_status: str = Field(description="ok, or degraded: the online store could not be read")
    degraded_reason: str | None = None
    latency_ms: float = Field(description="time in the service for this transaction")

    @classmethod
    def of(cls, row: dict, status: str, reason: str | None, latency_ms: float) -> Score:
        shadow = None
        if row.get("shadow_model_version"):
            shadow = Shadow(version=row["shadow_model_version"], probability=row["shadow_probability"],
                            decision=row["shadow_decision"])  # fmt: skip
        return cls(
            transaction_id=row["transaction_id"],
            decision=row["decision"],
            score=row["score"],
            driver=row["driver"],
            tier_scores=TierScores(
                rules=row["rules_score"],
                statistical=row["statistical_score"],
                ml=row["ml_score"],
                anomaly=row["anomaly_score"],
            ),
            triggered_rules=row["triggered_rules"],
            reasons=row["reasons"],
            model=ModelRef(name=row["model_name"], version=row["model_version"], route=row["route"]),
            shadow=shadow,
            anomaly_model_version=row["anomaly_model_version"],
            rules_version=row["rules_version"],
            features_status=status,
            degraded_reason=reason,
            latency_ms=latency_ms,
        )


class ScoreBatch(BaseModel):
    results: list[Score]
    latency_ms: float


class Verdict(BaseModel):
    """A decision as the stream recorded it in gold.decisions."""

    transaction_id: str
    card_id: str
    event_time: datetime
    decision: str
    score: float
    driver: str | None
    triggered_rules: list[str]
    reasons: list[str]
    model_name: str | None
    model_version: str | None
    shadow_model_version: str | None
    decided_at: datetime
    latency_ms: float | None


class CardHistory(BaseModel):
    card_id: str
    risk_tier: str = Field(description="high (a block), elevated (a review), low, or unknown (no decision)")
    decisions: list[Verdict]
    alerts: list[Verdict] = Field(description="the decisions that raised an alert (review or block)")


class FraudSummary(BaseModel):
    event_date: date
    total_count: int | None
    total_amount: float | None
    fraud_count: int | None
    fraud_amount: float | None
    labelled_count: int | None
    fraud_rate: float | None
    active_cards: int | None
    flagged_count: int | None
    blocked_count: int | None
    false_positive_rate: float | None
    computed_at: datetime | None


class TableAt(BaseModel):
    table: str
    version: int | None
    row: dict[str, Any] | None


class Audit(BaseModel):
    transaction_id: str
    as_of: datetime | None
    silver: TableAt
    label: dict[str, Any] | None
    decision: TableAt
    model: dict[str, Any] | None


class Commit(BaseModel):
    version: int | None
    timestamp: datetime | None
    operation: str | None
    parameters: dict[str, Any]
    query_id: str | None
    batch_id: int | None
    metrics: dict[str, Any]


class TableHistory(BaseModel):
    table: str
    commits: list[Commit]


class ModelInUse(BaseModel):
    role: str
    name: str
    alias: str
    version: str | None
    loaded_at: datetime | None = Field(None, description="when this service started using the version")


class Models(BaseModel):
    routing: str
    split_percent: float
    models: list[ModelInUse]


class Ready(BaseModel):
    ready: bool
    checks: dict[str, bool]
    consumer_lag: dict[str, int | None]
    details: dict[str, str] = {}
