"""The short end-to-end run of ``make e2e`` (``python -m tools.e2e``), as a real process on the test stack:
two days of history and a scored quarter-day with every fraud scenario and planted bad records, the pipeline
SIGKILLed five times at random points, the event log down for longer than the log client's own retries while a
producer sends and the pipeline runs, models trained and promoted, traffic scored by the API and the stream.
Every invariant of the run must hold, and each fault must really have happened."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

OUTAGE_S = 15  # longer than the Kafka client's own delivery timeout (10 s)
# the run is one process of up to 2400 s (its own timeout below), longer than the suite's per-test 600 s
pytestmark = pytest.mark.timeout(2700)


@pytest.fixture(scope="module")
def summary(stack, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("e2e") / f"test{uuid.uuid4().hex[:8]}"  # names its topics and models
    command = [sys.executable, "-m", "tools.e2e", "--transactions", "3000", "--kills", "5",
               "--log-outage-s", str(OUTAGE_S), "--api-requests", "60", "--root", str(root)]  # fmt: skip
    done = subprocess.run(command, env=os.environ, capture_output=True, text=True, timeout=2400)
    print(done.stdout)
    assert done.returncode in (0, 1), f"the run did not complete ({done.returncode}):\n{done.stderr[-6000:]}"
    out = json.loads((root / "summary.json").read_text())
    out["returncode"], out["stdout"] = done.returncode, done.stdout
    return out


def test_every_invariant_holds(summary):
    broken = [f"{c['name']}: {c['detail']}" for c in summary["checks"] if not c["ok"]]
    assert not broken, "\n".join(broken)
    assert summary["returncode"] == 0 and "ALL INVARIANTS HOLD" in summary["stdout"]


def test_the_pipeline_was_killed_five_times_each_after_a_commit(summary):
    kills = summary["kills"]
    assert len(kills) == 5 and {k["part"] for k in kills} == {"history", "scored"}
    assert all(k["commits"] >= 1 for k in kills)


def test_the_event_log_outage_held_events_and_the_stream_resumed(summary):
    outage = summary["outage"]
    assert outage["seconds"] >= OUTAGE_S and outage["events"] > 0
    assert outage["producer_errors"] == [] and outage["resumed_after_s"] >= 0


def test_every_planted_bad_record_has_its_reason(summary):
    reasons = summary["figures"]["dead_letter_reasons"]
    for reason in ("malformed_json", "empty_payload", "oversized", "not_an_object", "schema_required", "schema_type",
                   "non_finite_number", "time_in_future", "time_too_old", "schema_enum"):  # fmt: skip
        assert reasons.get(reason), f"no dead letter with reason {reason}: {reasons}"


def test_the_scored_traffic_was_decided_by_the_promoted_champion(summary):
    assert summary["models"]["aliases"]["champion"] == summary["models"]["version"]
    decisions = summary["figures"]["decisions"]["scored"]
    assert sum(decisions.values()) > 100 and decisions.get("approve")
    assert set(summary["figures"]["detection_scored"]) == set(summary["scenarios"]) and len(summary["scenarios"]) == 7


def test_the_summary_page_names_counts_detection_and_latency(summary):
    page = summary["stdout"]
    for part in ("rows per table", "silver.transactions", "gold.decisions", "detection per fraud scenario",
                 "latency: log to decision", "SIGKILL 5", "event log down"):  # fmt: skip
        assert part in page
