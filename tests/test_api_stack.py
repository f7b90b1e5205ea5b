"""The API as users run it: ``python -m serving`` under uvicorn on the scored lake, over real HTTP, with the real
Redis, MLflow registry, event log and Delta tables.

- a new transaction scored by the API gets the same decision the stream records when the same event goes
  through the pipeline afterwards (same event, same state);
- verdicts and card history are gold.decisions' rows; the fraud summary is gold's;
- an audit at a version before a label merge shows the transaction unlabelled, after it labelled;
- table history lists the streaming batches; readiness sees every service and no lag.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta

import httpx
import pytest
from support import free_port, run

from lakehouse import delta, eventlog

ADMIN = {"Authorization": "Bearer test-admin-token-0123456789"}
READER = {"Authorization": "Bearer test-reader-token-0123456789"}


@pytest.fixture(scope="module")
def api(decided):
    settings, env, summary, start = decided
    port = free_port()
    # two uvicorn workers, as the bench runs it: every request below may meet either one
    command = [sys.executable, "-m", "serving", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the API did not answer within 60 s"
        time.sleep(0.3)
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as client:
        yield settings, env, summary, client, start
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def rows(settings, layer: str, name: str, **eq) -> list[dict]:
    filters = [(k, "=", v) for k, v in eq.items()] or None
    return delta.read_arrow(settings, settings.table_uri(layer, name), filters=filters).to_pylist()


def as_event(tx: dict, **changes) -> dict:
    """A silver row back as its contract's event."""
    keys = ("transaction_id", "card_id", "customer_id", "merchant_id", "merchant_category_code", "terminal_id",
            "amount", "currency", "channel", "card_present", "country", "lat", "lon", "device_id", "ip_hash",
            "transaction_type")  # fmt: skip
    event = {k: tx[k] for k in keys}
    event["event_time"] = int(tx["event_time"].timestamp() * 1000)
    event.update(changes)
    return event


@pytest.fixture(scope="module")
def scored_then_streamed(api):
    """A new transaction of a busy card scored by the API, then the same event (and a fraud label for an older
    unlabelled transaction) put through the pipeline: (the API's answer, the event, the labelled transaction,
    silver's version before the label)."""
    settings, env, _, client, start = api
    silver = rows(settings, "silver", "transactions")
    last = max(silver, key=lambda t: t["event_time"])
    card = max({t["card_id"] for t in silver}, key=lambda c: sum(t["card_id"] == c for t in silver))
    mine = max((t for t in silver if t["card_id"] == card), key=lambda t: t["event_time"])
    at = last["event_time"] + timedelta(minutes=1)
    event = as_event(mine, transaction_id="api-parity-tx-1", event_time=int(at.timestamp() * 1000),
                     amount=round(mine["amount"] * 9 + 13, 2))  # fmt: skip
    answer = client.post("/v1/transactions/score", json=event)
    assert answer.status_code == 200, answer.text
    # decided by the registered model, early in the scored hour (so its decision was committed before the label)
    scored = [t for t in silver if t["event_time"] >= start and t["label"] is None and t is not mine]
    unlabelled = min(scored, key=lambda t: t["event_time"])
    before = delta.open_table(settings, settings.table_uri("silver", "transactions")).version()
    label = {"transaction_id": unlabelled["transaction_id"], "card_id": unlabelled["card_id"], "label": "fraud",
             "reported_at": int(at.timestamp() * 1000), "scenario": None, "source": "analyst"}  # fmt: skip
    log = eventlog.from_settings(settings)
    topics = settings.eventlog.topics
    log.produce(topics.transactions.name, event["card_id"], json.dumps(event).encode())
    log.produce(topics.labels.name, label["card_id"], json.dumps(label).encode())
    log.close()
    run(env, "-m", "lakehouse.pipeline", "--no-traffic", "--available-now")
    return answer.json(), event, unlabelled, before


def test_the_api_decides_like_the_stream_for_the_same_event_and_state(scored_then_streamed, api):
    settings = api[0]
    answer, event, _, _ = scored_then_streamed
    assert answer["features_status"] == "ok"
    [recorded] = rows(settings, "gold", "decisions", transaction_id=event["transaction_id"])
    assert answer["decision"] == recorded["decision"]
    assert answer["score"] == pytest.approx(recorded["score"])
    assert answer["reasons"] == recorded["reasons"] and answer["triggered_rules"] == recorded["triggered_rules"]
    assert (answer["model"]["name"], answer["model"]["version"]) == (recorded["model_name"], recorded["model_version"])
    assert answer["tier_scores"]["ml"] == pytest.approx(recorded["ml_score"])


def test_verdict_and_card_history_are_the_recorded_decisions(scored_then_streamed, api):
    settings, _, _, client, _ = api
    _, event, _, _ = scored_then_streamed
    verdict = client.get(f"/v1/transactions/{event['transaction_id']}/verdict", headers=READER)
    assert verdict.status_code == 200, verdict.text
    [recorded] = rows(settings, "gold", "decisions", transaction_id=event["transaction_id"])
    assert verdict.json()["decision"] == recorded["decision"] and verdict.json()["reasons"] == recorded["reasons"]
    assert client.get("/v1/transactions/no-such-tx/verdict").status_code == 404
    history = client.get(f"/v1/cards/{event['card_id']}/history", params={"limit": 5}).json()
    card = sorted(rows(settings, "gold", "decisions", card_id=event["card_id"]), key=lambda d: d["event_time"])
    assert [d["transaction_id"] for d in history["decisions"]] == [d["transaction_id"] for d in card[::-1][:5]]
    assert history["decisions"][0]["transaction_id"] == event["transaction_id"]
    assert {a["decision"] for a in history["alerts"]} <= {"review", "block"}
    assert history["risk_tier"] in ("low", "elevated", "high")


def test_an_audit_before_the_label_merge_shows_the_earlier_state(scored_then_streamed, api):
    settings, _, _, client, _ = api
    _, _, labelled, before = scored_then_streamed
    tx = labelled["transaction_id"]
    then = client.get(f"/v1/audit/transactions/{tx}", params={"version": before})
    now = client.get(f"/v1/audit/transactions/{tx}", params={"as_of": "2100-01-01T00:00:00Z"})
    assert then.status_code == now.status_code == 200, (then.text, now.text)
    then, now = then.json(), now.json()
    assert then["silver"]["version"] == before < now["silver"]["version"]
    assert then["label"]["label"] is None and now["label"]["label"] == "fraud"
    [recorded] = rows(settings, "gold", "decisions", transaction_id=tx)
    assert now["decision"]["row"]["decision"] == recorded["decision"]
    assert now["model"] == {"name": recorded["model_name"], "version": recorded["model_version"]}
    # at silver's version ``before`` the decision existed only if it was committed by then
    then_decided = then["decision"]["row"]
    at = datetime.fromisoformat
    assert then_decided is None or at(then_decided["decided_at"]) <= at(then["as_of"])
    audit_log = settings.path(settings.api.audit_log).read_text().splitlines()
    assert any(json.loads(line)["call"] == f"/v1/audit/transactions/{tx}" for line in audit_log)
    assert client.get(f"/v1/audit/transactions/{tx}", params={"version": 10**6}).status_code == 404


def test_table_history_lists_streaming_batches(api):
    client = api[3]
    got = client.get("/v1/audit/tables/gold.decisions/history", params={"limit": 5})
    assert got.status_code == 200, got.text
    commits = got.json()["commits"]
    assert commits and all(c["query_id"] and c["batch_id"] is not None for c in commits if c["operation"] == "WRITE")
    assert [c["version"] for c in commits] == sorted((c["version"] for c in commits), reverse=True)
    assert client.get("/v1/audit/tables/silver.nothing/history").status_code == 404
    assert client.get("/v1/audit/tables/gold.decisions/history", headers=READER).status_code == 403


def test_summary_models_readiness_and_metrics(scored_then_streamed, api):
    settings, _, summary, client, _ = api
    day = rows(settings, "gold", "fraud_summary_daily")[0]
    got = client.get("/v1/metrics/fraud-summary", params={"date": day["event_date"].isoformat()})
    assert got.status_code == 200 and got.json()["total_count"] == day["total_count"]
    models = client.get("/v1/models").json()
    champion = next(m for m in models["models"] if m["role"] == "champion")
    assert (champion["name"], champion["version"]) == (summary["xgboost"]["name"], summary["xgboost"]["version"])
    ready = client.get("/v1/ready")
    assert ready.status_code == 200, ready.text
    assert all(ready.json()["checks"].values())
    assert ready.json()["consumer_lag"]["bronze.transactions"] == 0
    before = decisions_counted(client.get("/metrics").text)
    _, event, _, _ = scored_then_streamed
    for _ in range(12):  # a connection each: the kernel spreads them over the workers
        url = str(client.base_url).rstrip("/") + "/v1/transactions/score"
        assert httpx.post(url, json=event, headers=ADMIN).status_code == 200
    text = client.get("/metrics").text
    assert decisions_counted(text) == before + 12  # every worker's counts, added up
    assert 'fraud_api_request_duration_seconds_count{method="POST",route="/v1/transactions/score",status="200"}' in text


def decisions_counted(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("fraud_api_decisions_total{"))  # fmt: skip
