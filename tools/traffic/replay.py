"""Replay an external CSV/Parquet of transactions through the event contracts.

A mapping file (``conf/mappings/NAME.yaml``) maps source columns onto contract fields, says how to read the
event time, which values to translate, which columns to hash, defaults for fields the file lacks, and
where the label is. Rows are emitted in event-time order; each labelled row also yields a label event,
reported ``label.delay`` after the transaction. A row that breaks the contract raises
:class:`ReplayError` naming the file, row and field.
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, Field

from lakehouse.contracts import ContractError, Limits, check, schema


class ReplayError(ValueError):
    pass


class EventTimeSpec(BaseModel):
    column: str
    unit: str = "s"  # s | ms | iso | format
    format: str | None = None
    # datasets whose time column counts from the start of the capture ("seconds since first")
    offset_from: str | None = None


class LabelSpec(BaseModel):
    column: str
    fraud_values: list[Any] = [1, "1", True, "true", "fraud"]
    delay: str = "3d"
    emit_genuine: bool = False
    scenario_column: str | None = None


class Mapping(BaseModel):
    name: str
    columns: dict[str, str] = {}
    event_time: EventTimeSpec
    hash: list[str] = []
    defaults: dict[str, Any] = {}
    values: dict[str, dict[str, Any]] = {}
    label: LabelSpec | None = None
    id_prefix: str = Field(default="", description="prefix of generated transaction ids")

    @classmethod
    def load(cls, path: str | Path) -> Mapping:
        try:
            return cls.model_validate(yaml.safe_load(Path(path).read_text()))
        except (OSError, yaml.YAMLError, ValueError) as exc:
            raise ReplayError(f"mapping {path}: {exc}") from exc


def parse_duration_ms(text: str) -> int:
    """``"3d"``, ``"12h"``, ``"30m"``, ``"45s"`` → milliseconds."""
    units = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
    try:
        return int(float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise ReplayError(f"bad duration {text!r}: use a number and one of d, h, m, s") from None


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ReplayError(f"{path}: no such file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if path.suffix.lower() in (".csv", ".gz", ".txt"):
            return pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="error")
    except Exception as exc:  # pandas/pyarrow raise many types for corrupt or truncated files
        raise ReplayError(f"{path}: cannot be read: {type(exc).__name__}: {exc}") from exc
    raise ReplayError(f"{path}: unsupported file type {path.suffix!r} (use .csv or .parquet)")


_TX_PROPS = schema("transaction")["properties"]


def _coerce(field: str, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "":
        return None
    types = _TX_PROPS[field].get("type", "string")
    types = types if isinstance(types, list) else [types]
    if "integer" in types:
        return int(float(value))
    if "number" in types:
        return float(value)
    if "boolean" in types:
        if isinstance(value, str):
            low = value.strip().lower()
            if low in ("true", "1", "yes", "y", "t"):
                return True
            if low in ("false", "0", "no", "n", "f"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        return bool(value)
    if field == "merchant_category_code":
        return str(int(float(value))).zfill(4) if str(value).replace(".", "").isdigit() else str(value)
    return str(value)


class Replayer:
    def __init__(self, mapping: Mapping, limits: Limits | None = None):
        self.m = mapping
        self.limits = limits or Limits(max_future_skew_ms=10 * 365 * 86_400_000)
        self._offset_ms = None
        if mapping.event_time.offset_from:
            self._offset_ms = int(
                datetime.fromisoformat(mapping.event_time.offset_from.replace("Z", "+00:00")).timestamp() * 1000
            )

    def _event_time(self, raw: Any) -> int:
        spec = self.m.event_time
        if spec.unit in ("s", "ms"):
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(f"not a finite time: {raw!r}")
            ms = round(value * (1000 if spec.unit == "s" else 1))
            return ms + (self._offset_ms or 0)
        if spec.unit == "format":
            parsed = datetime.strptime(str(raw), spec.format or "")
            return int(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp() * 1000)
        ts = pd.Timestamp(str(raw))
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return int(ts.timestamp() * 1000)

    def row_event(self, index: int, row: dict[str, Any]) -> dict:
        """The contract event of one source row (raises ReplayError naming row and field)."""
        event: dict[str, Any] = {}
        field = "event_time"
        try:
            event["event_time"] = self._event_time(row[self.m.event_time.column])
            for field, column in self.m.columns.items():
                if field not in _TX_PROPS:
                    raise ReplayError(f"mapping {self.m.name}: unknown contract field {field!r}")
                value = row[column]
                if field in self.m.values:
                    value = self.m.values[field].get(str(value), value)
                if field in self.m.hash and value not in (None, ""):
                    value = hashlib.sha256(str(value).encode()).hexdigest()[:32]
                event[field] = _coerce(field, value)
            field = "defaults"
            for key, value in self.m.defaults.items():
                if event.get(key) is None:
                    event[key] = value
            event.setdefault("transaction_id", f"{self.m.id_prefix or self.m.name}-{index}")
            if event.get("customer_id") is None:
                event["customer_id"] = event.get("card_id")
            for key in list(event):
                if event[key] is None and key not in ("lat", "lon", "terminal_id", "device_id", "ip_hash"):
                    del event[key]  # let the contract say which required field is missing
            return check("transaction", event, self.limits)
        except ContractError as exc:
            raise ReplayError(f"row {index} (line {index + 2}): {exc.detail}") from None
        except KeyError as exc:
            raise ReplayError(f"row {index}: column {exc} (for field '{field}') is not in the file") from None
        except (ValueError, TypeError) as exc:
            raise ReplayError(f"row {index} (line {index + 2}): field '{field}': {exc}") from None

    def events(
        self, frame: pd.DataFrame, on_error: str = "fail", errors: list[str] | None = None
    ) -> Iterator[tuple[str, dict]]:
        """``(kind, event)`` in event-time order: transactions and their delayed labels."""
        rows = []
        for index, row in enumerate(frame.to_dict("records")):
            try:
                event = self.row_event(index, row)
            except ReplayError as exc:
                if on_error == "fail":
                    raise
                if errors is not None:
                    errors.append(str(exc))
                continue
            rows.append((event["event_time"], index, event, row))
        rows.sort(key=lambda r: (r[0], r[1]))
        delay = parse_duration_ms(self.m.label.delay) if self.m.label else 0
        pending: list[tuple[int, int, dict]] = []
        for t, index, event, row in rows:
            while pending and pending[0][0] <= t:
                yield "label", heapq.heappop(pending)[2]
            yield "transaction", event
            label = self._label(event, row, delay)
            if label is not None:
                heapq.heappush(pending, (label["reported_at"], index, label))
        while pending:
            yield "label", heapq.heappop(pending)[2]

    def _label(self, event: dict, row: dict, delay: int) -> dict | None:
        spec = self.m.label
        if spec is None:
            return None
        raw = row.get(spec.column)
        is_fraud = raw in spec.fraud_values or str(raw) in {str(v) for v in spec.fraud_values}
        if not is_fraud and not spec.emit_genuine:
            return None
        scenario = row.get(spec.scenario_column) if spec.scenario_column else None
        return {
            "transaction_id": event["transaction_id"],
            "card_id": event["card_id"],
            "label": "fraud" if is_fraud else "genuine",
            "reported_at": event["event_time"] + delay,
            "scenario": str(scenario) if scenario else None,
            "source": "replay",
        }
