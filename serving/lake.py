"""What the API reads from the lakehouse (Delta tables, with time travel) and how far the stream is behind.

Every answer comes from the tables themselves: a verdict and a card's history from ``gold.decisions``, the day's
summary from ``gold.fraud_summary_daily``, an audit from ``silver.transactions`` and ``gold.decisions`` as they
were at a version or a time (Delta time travel, not a copy), a table's history from its Delta log.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, date, datetime

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from lakehouse import delta
from lakehouse.catalog import DECISIONS_TABLE, FRAUD_SUMMARY_DAILY, LABELS_TABLE, TRANSACTIONS, get
from lakehouse.config import Settings
from lakehouse.maintenance import TimeTravelError, open_as_of

# the bronze queries and the topics they consume (the stream's entry point: its lag is the pipeline's)


def _matching(dt: DeltaTable, column: str, values: Collection[object], columns: list[str] | None = None) -> list[dict]:
    """The rows (only ``columns``, if given) of ``dt`` whose ``column`` is one of ``values``."""
    if not values:
        return []
    dataset = dt.to_pyarrow_dataset()
    return dataset.to_table(columns=columns, filter=delta.one_of(dataset, column, values)).to_pylist()


def _read(
    settings: Settings, uri: str, column: str, values: Collection[object], columns: list[str] | None = None
) -> list[dict]:
    """``_matching`` on the table at ``uri``; no rows if it does not exist."""
    try:
        return _matching(delta.open_table(settings, uri), column, values, columns)
    except TableNotFoundError:
        return []


def _committed_at(settings: Settings, uri: str, version: int) -> datetime | None:
    for entry in delta.history(settings, uri):
        if entry.get("version") == version:
            return datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)
    return None


class LakeReader:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.decisions = DECISIONS_TABLE.uri(settings)

    def verdict(self, transaction_id: str) -> dict | None:
        rows = _read(self.settings, self.decisions, "transaction_id", [transaction_id])
        return rows[0] if rows else None

    def card_history(self, card_id: str, limit: int) -> list[dict]:
        rows = _read(self.settings, self.decisions, "card_id", [card_id])
        rows.sort(key=lambda r: (r["event_time"], r["transaction_id"]), reverse=True)
        return rows[:limit]

    def review_queue(
        self, limit: int, offset: int = 0, exclude: Collection[str] = (), history: int = 5
    ) -> tuple[list[dict], int]:
        """The analyst's queue: decisions ``review`` whose transaction has no label in silver.labels (nor is in
        ``exclude``), oldest first; rows ``offset`` to ``offset + limit`` and how many are pending in all. Each
        row carries ``history``: its card's latest ``history`` decisions, newest first."""
        rows = _read(self.settings, self.decisions, "decision", ["review"])
        done = self.labelled([r["transaction_id"] for r in rows]) | set(exclude)
        pending = sorted(
            (r for r in rows if r["transaction_id"] not in done), key=lambda r: (r["event_time"], r["transaction_id"])
        )
        page = pending[offset : offset + limit]
        by_card: dict[str, list[dict]] = {}
        for r in _read(self.settings, self.decisions, "card_id", {r["card_id"] for r in page}):
            by_card.setdefault(r["card_id"], []).append(r)
        for cards in by_card.values():
            cards.sort(key=lambda r: (r["event_time"], r["transaction_id"]), reverse=True)
        return [{**r, "history": by_card.get(r["card_id"], [])[:history]} for r in page], len(pending)

    def labelled(self, transaction_ids: Collection[str]) -> set[str]:
        """Those of ``transaction_ids`` that have a label in silver.labels (any source)."""
        found = _read(self.settings, LABELS_TABLE.uri(self.settings), "transaction_id", set(transaction_ids),
                         ["transaction_id"])  # fmt: skip
        return {r["transaction_id"] for r in found}

    def fraud_summary(self, day: date) -> dict | None:
        rows = _read(self.settings, FRAUD_SUMMARY_DAILY.uri(self.settings), "event_date", [day])
        return rows[0] if rows else None

    def audit(self, transaction_id: str, version: int | None, as_of: datetime | None) -> dict:
        """silver.transactions at ``version`` (or at ``as_of``) and gold.decisions at that same time: the row, its
        label then, and the decision with its model version then. Raises ``TimeTravelError``."""
        silver = TRANSACTIONS.uri(self.settings)
        try:
            dt = open_as_of(self.settings, silver, version=version, timestamp=as_of)
        except TableNotFoundError as exc:  # before the pipeline's first batch
            raise TimeTravelError(f"{silver}: no such table yet") from exc
        at = _committed_at(self.settings, silver, dt.version()) if as_of is None else as_of
        row = _matching(dt, "transaction_id", [transaction_id])
        decision, decisions_version = None, None
        try:
            dd = open_as_of(self.settings, self.decisions, timestamp=at)
            decisions_version = dd.version()
            found = _matching(dd, "transaction_id", [transaction_id])
            decision = found[0] if found else None
        except (TimeTravelError, TableNotFoundError):
            pass  # no decision table yet at that time
        tx = row[0] if row else None
        return {
            "transaction_id": transaction_id,
            "as_of": at,
            "silver": {"table": TRANSACTIONS.full_name, "version": dt.version(), "row": tx},
            "label": None
            if tx is None
            else {
                "label": tx.get("label"),
                "reported_at": tx.get("label_reported_at"),
                "scenario": tx.get("label_scenario"),
            },
            "decision": {"table": DECISIONS_TABLE.full_name, "version": decisions_version, "row": decision},
            "model": None
            if decision is None
            else {"name": decision["model_name"], "version": decision["model_version"]},
        }

    def table_history(self, full_name: str, limit: int) -> list[dict]:
        """The Delta commits of a catalogued table, newest first (KeyError for an unknown name; none for a table
        not created yet)."""
        uri = get(full_name).uri(self.settings)
        try:
            commits = delta.history(self.settings, uri, limit)
        except TableNotFoundError:
            return []
        out = []
        for h in commits:
            query_id, batch_id = delta.batch_of(h)
            out.append({
                "version": h.get("version"),
                "timestamp": datetime.fromtimestamp(h["timestamp"] / 1000, UTC) if "timestamp" in h else None,
                "operation": h.get("operation"),
                "parameters": h.get("operationParameters") or {},
                "query_id": query_id,
                "batch_id": batch_id,
                "metrics": h.get("operationMetrics") or {},
            })  # fmt: skip
        return out

    def public(self, message: str) -> str:
        """``message`` with the tables' storage locations replaced by their names (callers see no paths)."""
        for spec in (TRANSACTIONS, DECISIONS_TABLE):
            message = message.replace(spec.uri(self.settings), spec.full_name)
        return message

    def reachable(self) -> bool:
        return delta.table_exists(self.settings, self.decisions)
