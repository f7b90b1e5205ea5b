"""Fakes and data for the analyst console's tests: a lakehouse of real Delta tables under a temporary root (read by
the real ``LakeReader``), an event log that records what is produced, and a logged-in console client."""

from __future__ import annotations

import re
import zlib
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
from deltalake import write_deltalake
from fastapi.testclient import TestClient
from test_api import CARD, DECISIONS, T0, FakeLog, decision_row

from lakehouse.catalog import DECISIONS_TABLE, LABELS_TABLE
from lakehouse.config import Settings
from lakehouse.eventlog import EventLogError

# the review queue, oldest first: tx-r1 (card-00099), tx-b (CARD, from test_api), tx-r2 (card-00099); tx-r3 has a
# chargeback label in silver
QUEUE = ["tx-r1", "tx-b", "tx-r2"]
REVIEWS = [
    decision_row("tx-r1", "card-00099", "review", T0 - timedelta(hours=2), reasons=["AMOUNT_SPIKE", "NEW_DEVICE"]),
    decision_row(
        "tx-r2", "card-00099", "review", T0 + timedelta(hours=3), reasons=["GEO_IMPOSSIBLE"], model_version="5"
    ),
    decision_row("tx-r3", "card-00123", "review", T0 - timedelta(hours=5)),
    decision_row("tx-e", "card-00099", "approve", T0 - timedelta(hours=1)),
]
CHARGEBACK = {"transaction_id": "tx-r3", "card_id": "card-00123", "label": "fraud", "label_source": "chargeback",
              "label_scenario": None, "label_reported_at": T0, "labeled_at": T0, "label_date": T0.date()}  # fmt: skip


def lakehouse(settings: Settings, root: Path, decisions: list[dict] | None = None) -> Settings:
    """``settings`` on a lakehouse under ``root`` with gold.decisions and silver.labels written (delta-rs)."""
    local = settings.model_copy(update={"lakehouse": settings.lakehouse.model_copy(update={"root": str(root)})})
    rows = DECISIONS + REVIEWS if decisions is None else decisions
    write_deltalake(DECISIONS_TABLE.uri(local), pa.Table.from_pylist(rows, schema=DECISIONS_TABLE.schema))
    add_labels(local, [CHARGEBACK])
    return local


def add_labels(settings: Settings, rows: list[dict]) -> None:
    write_deltalake(LABELS_TABLE.uri(settings), pa.Table.from_pylist(rows, schema=LABELS_TABLE.schema), mode="append")


class RecordingLog(FakeLog):
    """An event log that keeps what is produced: ``records`` of (topic, partition, offset, key, value)."""

    def __init__(self, partitions: int = 2):
        super().__init__()
        self.partitions, self.records = partitions, []

    def produce_batch(self, topic, records):
        if not self.up:
            raise EventLogError("event log unreachable: connection refused")
        out = []
        for key, value in records:
            p = zlib.crc32(key.encode() if isinstance(key, str) else key or b"") % self.partitions
            offset = sum(1 for r in self.records if r[0] == topic and r[1] == p)
            self.records.append((topic, p, offset, key, value))
            out.append((p, offset))
        return out

    def produce(self, topic, key, value):
        return self.produce_batch(topic, [(key, value)])[0]


def csrf(html: str) -> str:
    """The CSRF token of a console page."""
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert found, html[:2000]
    return found.group(1)


def login(client: TestClient, token: str) -> TestClient:
    r = client.post("/console/login", data={"token": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/queue", r.text
    return client


def queued(html: str) -> list[str]:
    """The transaction ids of a queue page, in order."""
    return re.findall(r'data-transaction="([^"]+)"', html)


__all__ = ["CARD", "QUEUE", "RecordingLog", "add_labels", "csrf", "lakehouse", "login", "queued"]
