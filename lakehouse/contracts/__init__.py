"""Versioned event contracts (JSON Schema, one source of truth) and the validator every stage uses.

``decode(kind, raw)`` turns raw bytes from the event log into a checked event or raises
:class:`ContractError` whose ``reason`` says exactly what is wrong (used for dead-lettering).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema
from jsonschema import Draft202012Validator

KINDS = ("transaction", "label", "market_tick")
VERSION = 1
TIME_FIELDS = {"transaction": "event_time", "label": "reported_at", "market_tick": "event_time"}
KEY_FIELDS = {"transaction": "card_id", "label": "card_id", "market_tick": "symbol"}


class ContractError(ValueError):
    """An event breaks its contract; ``reason`` is a short machine-friendly code, ``detail`` the message."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 65536
    max_future_skew_ms: int = 300_000
    min_event_time_ms: int = 946_684_800_000  # 2000-01-01

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        start = datetime.fromisoformat(settings.contracts.min_event_time.replace("Z", "+00:00"))
        return cls(
            max_bytes=settings.eventlog.max_event_bytes,
            max_future_skew_ms=settings.contracts.max_future_skew_s * 1000,
            min_event_time_ms=int(start.timestamp() * 1000),
        )


@cache
def schema(kind: str) -> dict:
    """The JSON Schema of one event kind."""
    if kind not in KINDS:
        raise KeyError(f"unknown event kind {kind!r}; known: {', '.join(KINDS)}")
    text = resources.files(__package__).joinpath(f"{kind}.v{VERSION}.json").read_text()
    return json.loads(text)


@cache
def _validator(kind: str) -> Draft202012Validator:
    return Draft202012Validator(schema(kind))


@cache
def _fast_validator(kind: str):
    """Compiled validator for the common case; jsonschema explains failures precisely."""
    return fastjsonschema.compile(schema(kind))


def _reject_constant(name: str) -> float:
    raise ContractError("non_finite_number", f"{name} is not a valid JSON number")


def check(
    kind: str, event: Any, limits: Limits = Limits(), now_ms: int | None = None, *, allow_unknown: bool = False
) -> dict:
    """Check a decoded event against its contract and the time limits; return it unchanged.

    ``allow_unknown`` accepts fields this contract version does not know (forward compatibility: consumers
    keep running when producers add an optional field); the known fields are still checked.
    """
    if not isinstance(event, dict):
        raise ContractError("not_an_object", f"a {kind} event must be a JSON object, got {type(event).__name__}")
    if allow_unknown:
        known = schema(kind)["properties"]
        event = {k: v for k, v in event.items() if k in known}
    for key, value in event.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ContractError("non_finite_number", f"field '{key}' is {value}")
    try:
        _fast_validator(kind)(event)
        errors = []
    except fastjsonschema.JsonSchemaException:
        errors = sorted(_validator(kind).iter_errors(event), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        field = ".".join(str(p) for p in first.absolute_path) or _missing_field(first)
        raise ContractError(f"schema_{first.validator}", f"field '{field}': {first.message}")
    ts = event[TIME_FIELDS[kind]]
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if ts > now_ms + limits.max_future_skew_ms:
        raise ContractError("time_in_future", f"{TIME_FIELDS[kind]}={ts} is {ts - now_ms} ms ahead of now")
    if ts < limits.min_event_time_ms:
        raise ContractError("time_too_old", f"{TIME_FIELDS[kind]}={ts} is before {limits.min_event_time_ms}")
    return event


def _missing_field(error: Any) -> str:
    if error.validator == "required":
        return error.message.split("'")[1]
    if error.validator == "additionalProperties":
        return error.message.split("'")[1]
    return "<root>"


def decode(
    kind: str,
    raw: bytes | str | None,
    limits: Limits = Limits(),
    now_ms: int | None = None,
    *,
    allow_unknown: bool = False,
) -> dict:
    """Parse raw bytes from the event log and check them; raise ContractError with the reason."""
    if raw is None or len(raw) == 0:
        raise ContractError("empty_payload", "the event has no payload")
    if len(raw) > limits.max_bytes:
        raise ContractError("oversized", f"{len(raw)} bytes exceeds the limit of {limits.max_bytes}")
    try:
        # JSON on the wire is UTF-8 (RFC 8259): json.loads would also take UTF-16/32 bytes, which Spark cannot read
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
        event = json.loads(text, parse_constant=_reject_constant)
    except ContractError:
        raise
    except UnicodeDecodeError as exc:
        raise ContractError("malformed_json", f"not UTF-8: {exc}") from None
    except RecursionError:
        raise ContractError("malformed_json", "nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise ContractError("malformed_json", str(exc)) from None
    return check(kind, event, limits, now_ms, allow_unknown=allow_unknown)


_SPARK_TYPES = {"string": "string", "integer": "bigint", "number": "double", "boolean": "boolean"}


def spark_ddl(kind: str, contract: dict | None = None) -> str:
    """The Spark DDL of an event kind's fields, derived from its JSON Schema (``contract`` overrides it)."""
    props = (contract or schema(kind))["properties"]
    cols = []
    for name, prop in props.items():
        types = prop.get("type", "string")
        types = [t for t in (types if isinstance(types, list) else [types]) if t != "null"] or ["string"]
        cols.append(f"`{name}` {_SPARK_TYPES[types[0]]}")
    return ", ".join(cols)


def encode(event: dict) -> bytes:
    """Serialise an event (compact JSON; NaN/inf refused)."""
    try:
        return json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:
        raise ContractError("non_finite_number", str(exc)) from None
