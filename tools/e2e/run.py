"""The end-to-end run: stack up, history streamed through crashes, models trained and promoted, the scored
traffic through the API and the stream (crashes and an event-log outage included), then every invariant.

Everything lives in a lakehouse of its own (tables and checkpoints under ``root``, topics and online-store keys
under the tag ``e2e``, model names of its own, API tokens of its own) on the profile's stack services, so a run
touches neither ``make stream``'s tables nor the registry's production aliases.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from lakehouse import delta, eventlog
from lakehouse.config import ISOLATED_TOPICS, Settings, isolated
from lakehouse.contracts import schema
from lakehouse.eventlog.producer import send, topic_for
from tools.e2e import inputs
from tools.e2e import invariants as inv
from tools.e2e.processes import Api, Outage, Pipeline, RunError, wait_until
from tools.e2e.readout import figures, read_all
from tools.stack.__main__ import up
from tools.stack.process import free_port

TAG = "e2e"
STEP_TIMEOUT_S = 900


@dataclass
class Options:
    transactions: int = 20_000
    history_days: float = 2.0
    scored_days: float = 0.25
    start: datetime = datetime(2026, 4, 6, 10, tzinfo=UTC)  # a Monday morning: the scored part is a busy afternoon
    fraud_rate: float = 0.04
    customers: int = 500
    seed: int = 11
    repeats: int = 30
    kills: int = 5
    log_outage_s: float = 15.0
    api_requests: int = 200
    root: Path | None = None


@dataclass
class Run:
    """What happened: the steps' wall times, the faults injected, the API's answers; filled as it goes."""

    options: Options
    root: Path
    steps: dict[str, float] = field(default_factory=dict)
    kills: list[dict] = field(default_factory=list)
    outage: dict = field(default_factory=dict)
    api: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    audits: list[tuple[str, dict, dict]] = field(default_factory=list)
    scenarios: dict[str, int] = field(default_factory=dict)

    def step(self, name: str, started: float) -> None:
        self.steps[name] = round(time.monotonic() - started, 1)
        progress(f"{name}: {self.steps[name]:.0f} s")


def progress(message: str) -> None:
    print(f"e2e: {message}", file=sys.stderr, flush=True)


def lakehouse(settings: Settings, root: Path, port: int) -> tuple[Settings, dict, dict[str, str]]:
    """Settings and child environment of the run's own lakehouse: topics, online-store keys and model names
    tagged with the run's directory name, API tokens of its own."""
    tokens = {"admin": f"e2e-admin-{secrets.token_hex(12)}", "reader": f"e2e-reader-{secrets.token_hex(12)}"}
    api_tokens = {
        "e2e-admin": {"token": tokens["admin"], "scopes": ["score", "read", "audit"]},
        "e2e-reader": {"token": tokens["reader"], "scopes": ["read"]},
    }
    tag = f"{TAG}-{root.name}".lower()
    overrides = {
        "LAKEHOUSE__MODELS__SUPERVISED_NAME": f"{tag}-xgboost",
        "LAKEHOUSE__MODELS__UNSUPERVISED_NAME": f"{tag}-isolation-forest",
        "LAKEHOUSE__MODELS__MARKET_NAME": f"{tag}-market",
        "LAKEHOUSE__MODELS__REFRESH_SECONDS": "5",
        "LAKEHOUSE__API__TOKENS": json.dumps(api_tokens),
        "LAKEHOUSE__API__RATE_LIMIT_PER_S": "0",
        "LAKEHOUSE__METRICS__PORT": str(port + 1),
        # replayed history is days old: only events beyond this lateness would be late (none are)
        "LAKEHOUSE__STREAMING__ALLOWED_LATENESS_S": str(30 * 86400),
        "LAKEHOUSE__STREAMING__MAX_RECORDS_PER_TRIGGER": "2000",
        "LAKEHOUSE__STREAMING__TRIGGER_SECONDS": "1",
        "LAKEHOUSE__STREAMING__GOLD_TRIGGER_SECONDS": "2",
    }
    mine, env = isolated(root, tag, overrides)
    return mine, {**os.environ, **env, "LAKEHOUSE_PROFILE": settings.profile}, tokens


def clean_up(settings: Settings, log) -> None:
    """Delete the run's topics and online-store keys (its tables stay under its directory, its models in the
    registry)."""
    from features.store import OnlineStore

    for attr in ISOLATED_TOPICS:
        log.delete_topic(getattr(settings.eventlog.topics, attr).name)
    OnlineStore(settings).clear()


def produce(settings: Settings, log, part: inputs.Part, raw: bool = True) -> None:
    """A part into the log: its raw records (bad ones, repeats) as they are, its events through the traffic
    producer (which holds them through an event-log outage)."""
    if raw:
        for topic in {t for t, _, _ in part.raw}:
            log.produce_batch(topic, [(k, v) for t, k, v in part.raw if t == topic])
    send(part.events, log, settings, speedup=0, progress_every_s=30)


def stream_through_kills(
    run: Run, pipeline: Pipeline, settings: Settings, log, part: inputs.Part, kills: int, rng: random.Random, name: str
) -> None:
    """``part`` in ``kills + 1`` chunks: before each kill the next chunk goes in, then the pipeline runs and is
    SIGKILLed at a random moment after a commit; the last chunk goes in and a catch-up run ends the part."""
    t0 = time.monotonic()
    chunks = part.chunks(kills + 1)
    for i in range(kills):
        produce(settings, log, chunks[i])
        kill = pipeline.kill_at_random(rng, STEP_TIMEOUT_S)
        run.kills.append({"part": name, **kill})
        progress(f"{name}: SIGKILL {len(run.kills)} after {kill['after_s']} s ({kill['commits']} commits)")
    produce(settings, log, chunks[-1])
    pipeline.run_to_end(STEP_TIMEOUT_S)
    run.step(f"{name} streamed", t0)


def train_and_promote(run: Run, env: dict, settings: Settings, opts: Options) -> None:
    """Build the sets, fit and register (first history day trains, second tests), promote the challenger."""
    t0 = time.monotonic()
    day1 = opts.start.date()
    day2 = day1 + timedelta(days=int(opts.history_days) - 1)
    out = _json(
        env,
        "-m",
        "training",
        "train",
        "--start",
        str(day1),
        "--end",
        str(day2),
        "--train-days",
        "1",
        "--test-days",
        "1",
        "--label-delay-days",
        "0",
    )
    name = settings.models.supervised_name
    promoted = _json(env, "-m", "training", "promote", "--model", name, "--version", str(out["xgboost"]["version"]))
    run.models = {
        "name": name,
        "version": str(out["xgboost"]["version"]),
        "aliases": promoted,
        "anomaly": str(out["isolation_forest"]["version"]),
        "test_metrics": {
            k: round(v, 4) for k, v in out["xgboost"]["metrics"].items() if k in ("roc_auc", "average_precision")
        },
    }
    run.step("models trained and promoted", t0)


def _json(env: dict, *args: str) -> dict:
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    if done.returncode != 0:
        raise RunError(f"{' '.join(args)} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)


def score_through_api(run: Run, api: Api, tokens: dict, part: inputs.Part, n: int) -> None:
    """Score the first ``n`` scored transactions one by one, 50 more as a batch; refused calls are refused.

    The API takes the contract as it is (a field it does not know is a 422, while the stream keeps such an event
    for forward compatibility), so the fields no contract declares are left out of the scored ones."""
    t0 = time.monotonic()
    known = schema("transaction")["properties"]
    txs = [{f: v for f, v in e.items() if f in known} for k, e in part.events if k == "transaction"]
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    answers, latencies, statuses = {}, [], []
    with httpx.Client(base_url=api.url, headers=admin, timeout=30) as client:
        for event in txs[:n]:
            t = time.perf_counter()
            r = client.post("/v1/transactions/score", json=event)
            latencies.append((time.perf_counter() - t) * 1000)
            statuses.append(r.status_code)
            if r.status_code == 200:
                answers[event["transaction_id"]] = r.json()
        batch = client.post("/v1/transactions/score/batch", json={"transactions": txs[n : n + 50]})
        statuses.append(batch.status_code)
        refused = {
            "no token": client.post("/v1/transactions/score", json=txs[0], headers={"Authorization": ""}).status_code,
            "read-only token": client.post(
                "/v1/transactions/score", json=txs[0], headers={"Authorization": f"Bearer {tokens['reader']}"}
            ).status_code,
            "bad payload": client.post("/v1/transactions/score", json={**txs[0], "amount": "NaN"}).status_code,
            "unknown field": client.post("/v1/transactions/score", json={**txs[0], "promo_code": "X"}).status_code,
            "not JSON": client.post(
                "/v1/transactions/score", content=b"{oops", headers={"Content-Type": "application/json"}
            ).status_code,
        }
    run.api = {
        "answers": answers,
        "latencies_ms": latencies,
        "statuses": statuses,
        "refused": refused,
        "batch_size": len(txs[n : n + 50]),
    }
    run.step("scored through the API", t0)


def audit_label_merges(
    run: Run, api: Api, tokens: dict, settings: Settings, scored_start: datetime, history: set[str]
) -> None:
    """Audit history transactions (in silver before the scored part) whose label silver learnt while the scored
    traffic streamed: at the instant before ``labeled_at`` and now."""
    silver = delta.read_arrow(
        settings, settings.table_uri("silver", "transactions"), columns=["transaction_id", "labeled_at"]
    ).to_pylist()
    merged = sorted(
        r["transaction_id"]
        for r in silver
        if r["transaction_id"] in history and r["labeled_at"] is not None and r["labeled_at"] > scored_start
    )
    labeled_at = {r["transaction_id"]: r["labeled_at"] for r in silver}
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=api.url, headers=headers, timeout=60) as client:
        for tx in merged[:5]:
            before = (labeled_at[tx] - timedelta(milliseconds=1)).isoformat()
            b = client.get(f"/v1/audit/transactions/{tx}", params={"as_of": before})
            a = client.get(f"/v1/audit/transactions/{tx}", params={"as_of": datetime.now(UTC).isoformat()})
            run.audits.append(
                (
                    tx,
                    b.json() if b.status_code == 200 else {"status": b.status_code},
                    a.json() if a.status_code == 200 else {"status": a.status_code},
                )
            )


def execute(settings: Settings, opts: Options) -> tuple[Run, list[inv.Check], dict]:
    """The whole run; returns it, the checks and the tables it read."""
    started = time.monotonic()
    root = opts.root or settings.state_path / "e2e" / datetime.now(UTC).strftime("%Y%m%dt%H%M%S")
    root.mkdir(parents=True, exist_ok=True)
    run = Run(opts, root)
    t0 = time.monotonic()
    up(settings)
    run.step("stack up", t0)
    port = free_port()
    mine, env, tokens = lakehouse(settings, root, port)
    log = eventlog.from_settings(mine)
    eventlog.ensure_topics(log, mine)
    t0 = time.monotonic()
    traffic = inputs.generate(
        mine,
        transactions=opts.transactions,
        start_ms=int(opts.start.timestamp() * 1000),
        history_days=opts.history_days,
        scored_days=opts.scored_days,
        fraud_rate=opts.fraud_rate,
        customers=opts.customers,
        seed=opts.seed,
        repeats=opts.repeats,
    )
    inputs.with_unknown_field(traffic.history)
    inputs.with_unknown_field(traffic.scored)
    run.scenarios = inputs.scenarios_present(traffic)
    run.step(f"traffic generated ({len(traffic.events('transaction'))} transactions)", t0)
    rng = random.Random(opts.seed)
    pipeline = Pipeline(mine, env, root)
    history_kills = (opts.kills + 1) // 2
    try:
        try:
            stream_through_kills(run, pipeline, mine, log, traffic.history, history_kills, rng, "history")
            train_and_promote(run, env, mine, opts)
            with Api(env, port, root / "api.log") as api:
                score_through_api(run, api, tokens, traffic.scored, opts.api_requests)
                scored_start = datetime.now(UTC)
                t0 = time.monotonic()
                chunks = traffic.scored.chunks(opts.kills - history_kills + 1)
                for chunk in chunks[:-1]:
                    produce(mine, log, chunk)
                    kill = pipeline.kill_at_random(rng, STEP_TIMEOUT_S)
                    run.kills.append({"part": "scored", **kill})
                    progress(f"scored: SIGKILL {len(run.kills)} after {kill['after_s']} s")
                if opts.log_outage_s > 0:
                    event_log_outage(run, mine, log, pipeline, chunks[-1], opts.log_outage_s)
                else:
                    produce(mine, log, chunks[-1])
                pipeline.run_to_end(STEP_TIMEOUT_S)
                run.step("scored traffic streamed", t0)
                audit_label_merges(run, api, tokens, mine, scored_start, set(traffic.history.ids()))
        finally:
            pipeline.kill()
        t0 = time.monotonic()
        tables = read_all(mine, log)
    finally:
        clean_up(mine, log)
        log.close()
    checks = check_all(run, traffic, tables, mine)
    run.step("invariants checked", t0)
    run.steps["total"] = round(time.monotonic() - started, 1)
    return run, checks, figures(run, traffic, tables)


def event_log_outage(run: Run, settings: Settings, log, pipeline: Pipeline, part: inputs.Part, seconds: float) -> None:
    """The event log stopped while the pipeline runs and a producer sends ``part``, started again ``seconds``
    later: the producer must hold its events and deliver them after, the pipeline must resume (commit again)."""
    before = pipeline.commits()
    pipeline.start("--duration", "3600")
    wait_until("the pipeline's first commit", lambda: pipeline.commits() > before, STEP_TIMEOUT_S, 0.2, pipeline.check)
    errors: list[BaseException] = []

    produce(settings, log, inputs.Part(raw=part.raw))  # the raw records before; the events through the outage

    def producer() -> None:
        try:
            produce(settings, log, part, raw=False)
        except BaseException as exc:  # reported by the run, not lost in a thread
            errors.append(exc)

    thread = threading.Thread(target=producer, name="e2e-producer")
    committed = pipeline.commits("bronze.transactions")  # bronze cannot commit while the log is down
    with Outage(settings, "kafka") as outage:
        thread.start()
        time.sleep(seconds)
    thread.join(timeout=STEP_TIMEOUT_S)
    if errors:
        raise RunError(f"the producer failed in the event log outage: {errors[0]!r}")
    t0 = time.monotonic()
    wait_until(
        "bronze to commit after the outage",
        lambda: pipeline.commits("bronze.transactions") > committed,
        STEP_TIMEOUT_S,
        0.5,
        pipeline.check,
    )
    resumed = time.monotonic() - t0
    pipeline.kill()
    run.outage = {
        "service": "kafka",
        "how": "SIGKILL, then a restart on the same log dirs",
        "seconds": round(outage.seconds, 1),
        "producer_errors": [str(e) for e in errors],
        "events": len(part.events) + len(part.raw),
        "resumed_after_s": round(resumed, 1),
    }
    progress(
        f"scored: event log down {outage.seconds:.0f} s; producer errors {len(errors)}; "
        f"the pipeline committed again {resumed:.0f} s after"
    )


def check_all(run: Run, traffic: inputs.Traffic, t: dict, settings: Settings) -> list[inv.Check]:
    """Every invariant of the run."""
    valid_tx = traffic.events("transaction")
    tx_ids = {e["transaction_id"] for e in valid_tx}
    scored_ids = set(traffic.scored.ids())
    logged = t["log"]
    logged_tx = [
        json.loads(r["value"])["transaction_id"]
        for r in logged
        if r["topic"] == topic_for(settings, "transaction") and not r["key"].startswith("bad-")
    ]
    ticks = {(e["symbol"], e["event_time"]) for e in traffic.events("market_tick")}
    silver_ticks = [(r["symbol"], round(r["event_time"].timestamp() * 1000)) for r in t["silver_ticks"]]
    api = run.api
    return [
        inv.produced_in_log(tx_ids, logged_tx, "transaction"),
        inv.bronze_conservation(logged, t["bronze"], t["dead_letter"], traffic.expected_reasons),
        inv.exactly_once(
            tx_ids, [r["transaction_id"] for r in t["silver"]], "silver: every valid transaction exactly once"
        ),
        inv.exactly_once(
            tx_ids, [d["transaction_id"] for d in t["decisions"]], "decisions: exactly one per transaction"
        ),
        inv.exactly_once(tx_ids, t["vectors"], "features: exactly one feature vector per transaction"),
        inv.batch_counters(t["batches"], len(logged_tx), len(tx_ids)),
        inv.check(
            "silver: nothing late, nothing quarantined (the traffic is valid and within the lateness)",
            {"late": range(t["counts"]["silver.late_events"]), "quarantined": range(t["counts"]["silver.quarantine"])},
        ),
        inv.exactly_once(ticks, silver_ticks, "silver: every market tick exactly once"),
        inv.latest_labels(traffic.events("label"), t["silver"]),
        inv.gold_totals(t["silver"], t["decisions"], t["fraud_summary"]),
        inv.total_equals(
            "gold: card_daily transaction counts add up to silver", t["card_daily_count"], len(t["silver"])
        ),
        inv.total_equals(
            "gold: market_risk_daily tick counts add up to silver", t["market_tick_count"], len(silver_ticks)
        ),
        inv.alerts_once_for_flagged(t["alerts"], t["decisions"]),
        inv.decided_by(t["decisions"], scored_ids, run.models["name"], run.models["version"]),
        inv.time_travel(run.audits),
        inv.api_answers(api["statuses"], 200, "API: every scored transaction answered 200"),
        inv.check(
            "API: unauthenticated, wrongly scoped and invalid calls refused with 4xx",
            {
                "wrong status": [
                    f"{k}: {v}"
                    for k, v in api["refused"].items()
                    if v != {"no token": 401, "read-only token": 403}.get(k, 422)
                ]
            },
        ),
        inv.check(
            "API: scores made by the promoted champion with the online features",
            {
                "other model or degraded": [
                    t
                    for t, a in api["answers"].items()
                    if a["model"]["version"] != run.models["version"] or a["features_status"] != "ok"
                ]
            },
        ),
        inv.check(
            "faults: the pipeline was SIGKILLed as asked and the event log outage delivered everything",
            {
                "kills missing": range(len(run.kills), run.options.kills),
                "producer errors": run.outage.get("producer_errors", []),
            },
        ),
        inv.check("traffic: every fraud scenario present", {"absent": [s for s, n in run.scenarios.items() if n == 0]}),
    ]
