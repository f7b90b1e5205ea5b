"""The console's text input and output: form fields and CSV rows typed as the transaction contract has them, and
batch results as CSV.

Values arrive as strings; ``typed`` converts each by its contract type (the contract itself is then checked by the
API's own validation). ``event_time`` takes epoch milliseconds or an ISO-8601 time (UTC if naive); booleans take
true/false, 1/0, yes/no; an empty optional field is null.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lakehouse.contracts import ContractError, schema
from serving.schemas import Score

CONTRACT = schema("transaction")
FIELDS: list[str] = list(CONTRACT["properties"])
REQUIRED: frozenset[str] = frozenset(CONTRACT["required"])
TRUE, FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
RESULT_COLUMNS = ["row", "transaction_id", "decision", "score", "driver", "reasons", "triggered_rules", "model_name",
                  "model_version", "route", "features_status", "error"]  # fmt: skip


def _types(name: str) -> list[str]:
    t = CONTRACT["properties"][name].get("type", "string")  # an enum without a type: a string
    return t if isinstance(t, list) else [t]


def _event_time(value: str) -> int:
    if value.lstrip("-").isdigit():
        return int(value)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ContractError(
            "schema_type", f"field 'event_time': {value!r} is neither epoch milliseconds nor an ISO-8601 time"
        ) from None
    return int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)


def _value(name: str, value: str) -> object:
    types = _types(name)
    if name == "event_time":
        return _event_time(value)
    try:
        if "integer" in types:
            return int(value)
        if "number" in types:
            return float(value)
    except ValueError:
        raise ContractError("schema_type", f"field '{name}': {value!r} is not a {types[0]}") from None
    if "boolean" in types:
        if value.lower() in TRUE | FALSE:
            return value.lower() in TRUE
        raise ContractError("schema_type", f"field '{name}': {value!r} is not true or false")
    return value


def typed(values: Mapping[str, str | None]) -> dict:
    """A transaction event from text fields (unknown fields are kept: the contract refuses them). An empty required
    field is left out (the contract names it), an empty optional one is null. Raises ``ContractError``."""
    out: dict[str, object] = {}
    for name, raw in values.items():
        value = (raw or "").strip()
        if name not in CONTRACT["properties"]:
            out[name] = value
        elif value:
            out[name] = _value(name, value)
        elif name not in REQUIRED:
            out[name] = None
    return out


@dataclass
class Upload:
    """A parsed CSV upload: ``rows`` (row number from 1 after the header, text fields, a problem with the row) or a
    ``problem`` with the whole file."""

    rows: list[tuple[int, dict[str, str], str | None]] = field(default_factory=list)
    problem: str | None = None


def read_csv(raw: bytes, max_rows: int) -> Upload:
    """The rows of an uploaded CSV whose header names transaction fields; at most ``max_rows`` of them."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Upload(problem="the file is not UTF-8 text")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in reader.fieldnames or []]
        if not header:
            return Upload(problem="the file is empty: expected a header line with the transaction's fields")
        unknown = [h for h in header if h not in CONTRACT["properties"]]
        missing = sorted(REQUIRED - set(header))
        if unknown or missing or len(set(header)) != len(header):
            parts = [f"unknown columns: {', '.join(unknown)}" if unknown else "",
                     f"missing columns: {', '.join(missing)}" if missing else "",
                     "repeated columns" if len(set(header)) != len(header) else ""]  # fmt: skip
            return Upload(problem="; ".join(p for p in parts if p))
        reader.fieldnames = header
        rows = []
        for n, row in enumerate(reader, start=1):
            if n > max_rows:
                return Upload(problem=f"more than {max_rows} rows (api.max_batch)")
            extra = row.pop(None, None)  # cells beyond the header's
            rows.append((n, row, f"{len(extra)} more cells than the header has" if extra else None))
    except csv.Error as exc:
        return Upload(problem=f"not a readable CSV file: {exc}")
    if not rows:
        return Upload(problem="the file has a header but no rows")
    return Upload(rows=rows)


def _cell(value: object) -> str:
    """A CSV cell that a spreadsheet does not run as a formula (text starting with = + - @ gets a quote)."""
    text = "" if value is None else str(value)
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def results_csv(results: list[tuple[int, Score | None, str | None, str | None]]) -> str:
    """The batch's results as CSV: per uploaded row (number, score, or the transaction id it gave and its error)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for n, s, tx_id, error in results:
        if s is None:
            writer.writerow([n, _cell(tx_id), *[""] * (len(RESULT_COLUMNS) - 3), _cell(error)])
            continue
        writer.writerow([n, *map(_cell, [s.transaction_id, s.decision, f"{s.score:.2f}", s.driver,
                                         ";".join(s.reasons), ";".join(s.triggered_rules), s.model.name,
                                         s.model.version, s.model.route, s.features_status, ""])])  # fmt: skip
    return out.getvalue()
