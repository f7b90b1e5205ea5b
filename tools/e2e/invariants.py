"""The end-to-end run's invariants, as pure functions over rows (lists of dicts) read from the log and the tables.

Each returns a :class:`Check`: its name, whether it holds, and on failure a short account of what broke (a few
examples, not thousands of ids). ``tests/test_e2e_invariants.py`` plants each violation and sees it caught.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

FLAGGED = ("review", "block")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def _some(items: Iterable, n: int = 5) -> str:
    items = sorted(items, key=str)
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def _twice(values: Iterable) -> list:
    return [v for v, n in Counter(values).items() if n > 1]


def check(name: str, problems: dict[str, Iterable]) -> Check:
    """A check that holds when every problem list is empty; the detail names the non-empty ones."""
    found = {k: list(v) for k, v in problems.items()}
    detail = "; ".join(f"{k}: {len(v)} ({_some(v)})" for k, v in found.items() if v)
    return Check(name, not detail, detail)


def bronze_conservation(
    log_records: Sequence[dict], landed: Sequence[dict], dead: Sequence[dict], expected_reasons: dict[str, str]
) -> Check:
    """Every record of the log is in its bronze table or the dead letter, exactly once; the dead letter holds
    exactly the records planted as bad (by key), each with the reason expected for it.

    ``log_records``/``landed``/``dead``: dicts with ``topic``, ``partition``, ``offset`` (and ``key``; dead ones
    a ``reason``)."""
    where = [(r["topic"], r["partition"], r["offset"]) for r in log_records]
    got = [(r["topic"], r["partition"], r["offset"]) for r in landed]
    lost = [(r["topic"], r["partition"], r["offset"]) for r in dead]
    bad = {(r["topic"], r["partition"], r["offset"]) for r in log_records if r["key"] in expected_reasons}
    wrong = [
        f"{r['key']}: {r['reason']} (expected {expected_reasons.get(r['key'])})"
        for r in dead
        if expected_reasons.get(r["key"]) != r["reason"]
    ]
    return check(
        "bronze: every log record once, in bronze or the dead letter with its reason",
        {
            "twice in bronze": _twice(got),
            "twice in the dead letter": _twice(lost),
            "in neither": set(where) - set(got) - set(lost),
            "not from the log": (set(got) | set(lost)) - set(where),
            "bad records landed in bronze": bad & set(got),
            "good records dead-lettered": set(lost) - bad,
            "dead-lettered for the wrong reason": wrong,
        },
    )


def produced_in_log(produced_ids: Iterable[str], logged_ids: Iterable[str], kind: str) -> Check:
    """Every event the producers sent is in the log (at least once: a producer may retry)."""
    return check(f"log: every produced {kind} is in the event log", {"lost": set(produced_ids) - set(logged_ids)})


def exactly_once(expected_ids: Iterable[str], table_ids: Sequence[str], what: str) -> Check:
    """``table_ids`` holds each expected id exactly once and nothing else."""
    expected = set(expected_ids)
    return check(
        what,
        {"twice": _twice(table_ids), "missing": expected - set(table_ids), "unexpected": set(table_ids) - expected},
    )


def latest_labels(label_events: Sequence[dict], silver: Sequence[dict]) -> Check:
    """Each labelled transaction carries its latest label (by ``reported_at``), and no other transaction one."""
    latest: dict[str, str] = {}
    for e in sorted(label_events, key=lambda e: e["reported_at"]):
        latest[e["transaction_id"]] = e["label"]
    labelled = {r["transaction_id"]: r["label"] for r in silver if r["label"] is not None}
    wrong = [f"{t}: {labelled.get(t)} (latest {v})" for t, v in latest.items() if labelled.get(t) != v]
    return check(
        "silver: every transaction carries its latest label",
        {"wrong or missing label": wrong, "label without a label event": set(labelled) - set(latest)},
    )


def gold_totals(silver: Sequence[dict], decisions: Sequence[dict], summary: Sequence[dict]) -> Check:
    """gold.fraud_summary_daily equals the sums recomputed from silver.transactions and gold.decisions, day by
    day: counts, amounts, fraud (by label), flagged and blocked (by decision)."""
    decision = {d["transaction_id"]: d["decision"] for d in decisions}
    want: dict = defaultdict(Counter)
    amounts: dict = defaultdict(lambda: [0.0, 0.0])
    for r in silver:
        day, fraud, d = r["event_date"], r["label"] == "fraud", decision.get(r["transaction_id"])
        want[day].update(
            total_count=1, fraud_count=int(fraud), flagged_count=int(d in FLAGGED), blocked_count=int(d == "block")
        )
        amounts[day][0] += r["amount"]
        amounts[day][1] += r["amount"] if fraud else 0.0
    got = {g["event_date"]: g for g in summary}
    wrong = []
    for day in set(want) | set(got):
        g, w = got.get(day), want.get(day, Counter())
        if g is None:
            wrong.append(f"{day}: no gold row")
            continue
        for column in ("total_count", "fraud_count", "flagged_count", "blocked_count"):
            if (g[column] or 0) != w[column]:
                wrong.append(f"{day} {column}: gold {g[column]}, silver {w[column]}")
        for column, value in zip(("total_amount", "fraud_amount"), amounts.get(day, (0.0, 0.0)), strict=True):
            if not math.isclose(g[column] or 0.0, value, rel_tol=1e-9, abs_tol=1e-6):
                wrong.append(f"{day} {column}: gold {g[column]}, silver {value}")
    return check(
        "gold: daily totals equal the sums recomputed from silver",
        {"rows twice": _twice(g["event_date"] for g in summary), "mismatches": wrong},
    )


def batch_counters(batches: Sequence[dict], logged: int, unique: int) -> Check:
    """silver.stream_batches' counters of the transactions query add up across crashes and replays: every
    logged transaction in exactly one batch, each unique one inserted once, the rest counted as duplicates."""
    ids = [b["batch_id"] for b in batches]
    sums = {
        k: sum(b[k] for b in batches) for k in ("rows_in", "inserted", "duplicates_in_batch", "duplicates_seen_before")
    }
    wrong = []
    if sums["rows_in"] != logged:
        wrong.append(f"rows_in {sums['rows_in']} != {logged} logged")
    if sums["inserted"] != unique:
        wrong.append(f"inserted {sums['inserted']} != {unique} transactions")
    if (dup := sums["duplicates_in_batch"] + sums["duplicates_seen_before"]) != logged - unique:
        wrong.append(f"duplicates {dup} != {logged - unique} repeats")
    return check(
        "silver: batch counters add up (each logged transaction once; repeats counted, not inserted)",
        {"batches twice": _twice(ids), "wrong sums": wrong},
    )


def total_equals(name: str, got: int, want: int) -> Check:
    return Check(name, got == want, "" if got == want else f"{got} != {want}")


def alerts_once_for_flagged(alert_ids: Sequence[str], decisions: Sequence[dict]) -> Check:
    """An alert at most once per transaction, and only for a flagged decision."""
    decision = {d["transaction_id"]: d["decision"] for d in decisions}
    return check(
        "alerts: at most one per transaction, for flagged decisions only",
        {
            "alerted twice": _twice(alert_ids),
            "alert for an approved or unknown": [a for a in set(alert_ids) if decision.get(a) not in FLAGGED],
        },
    )


def decided_by(decisions: Sequence[dict], ids: Iterable[str], model: str, version: str) -> Check:
    """The given transactions were decided with ``model`` at ``version`` (the champion of the scored phase)."""
    wanted = set(ids)
    other = [
        f"{d['transaction_id']}: {d['model_name']} v{d['model_version']}"
        for d in decisions
        if d["transaction_id"] in wanted and (d["model_name"], d["model_version"]) != (model, version)
    ]
    return check(f"decisions: the scored traffic was decided by {model} v{version}", {"other model": other})


def time_travel(audits: Sequence[tuple[str, dict, dict]]) -> Check:
    """For each ``(transaction_id, before, after)`` audit pair, read just before and after the MERGE that gave the
    transaction its label: before, the row with no label or an earlier, different one; after, the label."""

    def label(audit: dict):
        return (audit.get("label") or {}).get("label")

    def known(audit: dict) -> bool:
        return bool((audit.get("silver") or {}).get("row"))

    wrong = [
        f"{t}: before {label(b) if known(b) else 'not in silver'}, after {label(a)}"
        for t, b, a in audits
        if not known(b) or label(a) is None or label(b) == label(a)
    ]
    return check(
        "time travel: just before a label merge the transaction shows its earlier state",
        {"no audited transaction": [] if audits else ["none"], "wrong state": wrong},
    )


def api_answers(statuses: Sequence[int], expected: int, what: str) -> Check:
    """Every answer of a group of API calls had the expected status (never a 5xx)."""
    wrong = Counter(s for s in statuses if s != expected)
    return check(
        what, {"no calls": [] if statuses else ["none"], "other statuses": [f"{s} x{n}" for s, n in wrong.items()]}
    )
