import json
import time

import pytest

from lakehouse.contracts import ContractError, Limits, decode, encode

NOW = int(time.time() * 1000)
TX = {
    "transaction_id": "t-1",
    "event_time": NOW - 1000,
    "card_id": "c" * 32,
    "customer_id": "C1",
    "merchant_id": "M1",
    "merchant_category_code": "5411",
    "terminal_id": "T1",
    "amount": 12.5,
    "currency": "EUR",
    "channel": "POS",
    "card_present": True,
    "country": "FR",
    "lat": 48.8,
    "lon": 2.3,
    "device_id": None,
    "ip_hash": None,
    "transaction_type": "PURCHASE",
}
LABEL = {
    "transaction_id": "t-1",
    "card_id": "c" * 32,
    "label": "fraud",
    "reported_at": NOW,
    "scenario": "x",
    "source": "chargeback",
}
TICK = {"symbol": "ACME", "event_time": NOW, "price": 10.5, "volume": 100.0}


def raw(event: dict, **changes) -> bytes:
    out = {**event, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not ...}, separators=(",", ":")).encode()


@pytest.mark.parametrize(("kind", "event"), [("transaction", TX), ("label", LABEL), ("market_tick", TICK)])
def test_valid_events_pass(kind, event):
    assert decode(kind, encode(event)) == event


@pytest.mark.parametrize(
    ("payload", "reason", "detail"),
    [
        (b"", "empty_payload", "no payload"),
        (b"{not json", "malformed_json", ""),
        (b"\xff\xfe", "malformed_json", ""),
        (b"[1, 2]", "not_an_object", "list"),
        (raw(TX, amount=...), "schema_required", "'amount'"),
        (raw(TX, amount="12.5"), "schema_type", "'amount'"),
        (raw(TX, amount=-3), "schema_exclusiveMinimum", "'amount'"),
        (raw(TX, channel="FAX"), "schema_enum", "'channel'"),
        (raw(TX, merchant_category_code="54"), "schema_pattern", "'merchant_category_code'"),
        (raw(TX, lat=123.0), "schema_maximum", "'lat'"),
        (raw(TX, card_present="yes"), "schema_type", "'card_present'"),
        (raw(TX, surprise=1), "schema_additionalProperties", "'surprise'"),
        (raw(TX, event_time=NOW + 86_400_000), "time_in_future", "event_time"),
        (raw(TX, event_time=10), "time_too_old", "event_time"),
        (raw(TX, event_time=NOW - 0.5), "schema_type", "'event_time'"),
        (raw(TX).replace(b'"amount":12.5', b'"amount":NaN'), "non_finite_number", "NaN"),
        (raw(TX).replace(b'"amount":12.5', b'"amount":Infinity'), "non_finite_number", "Infinity"),
        (raw(TX).replace(b'"amount":12.5', b'"amount":1e400'), "non_finite_number", "amount"),
        (b'{"x":"' + b"a" * 70000 + b'"}', "oversized", "exceeds"),
    ],
)
def test_malformed_transactions_are_rejected_with_a_reason(payload, reason, detail):
    with pytest.raises(ContractError) as err:
        decode("transaction", payload, Limits(), now_ms=NOW)
    assert err.value.reason == reason
    assert detail in err.value.detail


def test_label_and_tick_specific_rules():
    with pytest.raises(ContractError, match="label"):
        decode("label", raw(LABEL, label="maybe"))
    with pytest.raises(ContractError, match="price"):
        decode("market_tick", raw(TICK, price=0))
    with pytest.raises(ContractError, match="symbol"):
        decode("market_tick", raw(TICK, symbol="bad symbol!"))


def test_encode_refuses_nan():
    with pytest.raises(ContractError, match="non_finite"):
        encode({**TX, "amount": float("nan")})


def test_unknown_kind():
    with pytest.raises(KeyError, match="unknown event kind"):
        decode("refund", b"{}")
