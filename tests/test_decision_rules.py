"""Tier-1 rules (serving/rules.py) and the final decision (serving/decision.py): pure, no services, no Spark."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import types
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

import serving.rules as rules_mod
from lakehouse.config import DecisionSettings, get_settings
from serving.decision import TIERS, calibrated, decide
from serving.rules import Hit, RuleBook, RuleSet

# --------------------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def cfg() -> DecisionSettings:
    return get_settings().decision


@pytest.fixture(scope="module")
def rules_path(cfg: DecisionSettings) -> Path:
    return get_settings().path(cfg.rules_file)


@pytest.fixture(scope="module")
def shipped(rules_path: Path) -> RuleSet:
    return RuleSet.parse(rules_path.read_text())


# an event that fires nothing with the shipped rules
BENIGN = {
    "transaction_id": "t-1",
    "card_id": "card-0001",
    "amount": 25.0,
    "merchant_category_code": "5411",
    "country": "FR",
    "ip_hash": "a1b2c3",
    "card_bin": "412345",
    "card_tx_count_5m": 0,
    "card_tx_count_1h": 0,
    "card_prev_speed_kmh": 0.0,
}


def ids(hits: list[Hit]) -> list[str]:
    return [h.rule_id for h in hits]


def rule_yaml(**fields) -> str:
    """A one-rule document; ``fields`` override a valid threshold rule (a value of None drops the key)."""
    raw = {"id": "R9", "reason": "TEST", "kind": "threshold", "field": "x", "op": ">", "value": 1}
    raw |= {"action": "review", "score": 50}
    raw |= fields
    return yaml.safe_dump({"rules": [{k: v for k, v in raw.items() if v is not None}]})


def rewrite(path: Path, text: str) -> None:
    """Write ``text`` and move the mtime well past the previous one (so the change is seen on any filesystem)."""
    before = path.stat().st_mtime_ns
    path.write_text(text)
    later = before + 10_000_000_000
    os.utime(path, ns=(later, later))


# --------------------------------------------------------------------------------------------------------------
# 1. the shipped rules, one by one


def test_shipped_rules_are_the_documented_ones(shipped: RuleSet):
    assert ids(shipped.evaluate(BENIGN)) == []
    by_id = {r.id: r for r in shipped.rules}
    assert list(by_id) == ["R001", "R002", "R003", "R004", "R005", "R006", "R007"]
    assert by_id["R004"].action == "block"
    assert by_id["R005"].values == frozenset()
    assert by_id["R006"].prefixes == ()
    assert by_id["R007"].limits["*"] == 10000


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # R001: card_tx_count_5m >= 6
        ({"card_tx_count_5m": 6}, ["R001"]),
        ({"card_tx_count_5m": 7}, ["R001"]),
        ({"card_tx_count_5m": 5}, []),
        # R002: card_tx_count_1h >= 15
        ({"card_tx_count_1h": 15}, ["R002"]),
        ({"card_tx_count_1h": 14}, []),
        # R003: card_prev_speed_kmh > 1000 (strict)
        ({"card_prev_speed_kmh": 1000.1}, ["R003"]),
        ({"card_prev_speed_kmh": 1000}, []),
        ({"card_prev_speed_kmh": 999.9}, []),
        # R004: blocked countries
        ({"country": "KP"}, ["R004"]),
        ({"country": "IR"}, ["R004"]),
        ({"country": "SY"}, ["R004"]),
        ({"country": "CU"}, ["R004"]),
        ({"country": "US"}, []),
        # R007: amount > limits[MCC], "*" for any other MCC
        ({"merchant_category_code": "6011", "amount": 1000.01}, ["R007"]),
        ({"merchant_category_code": "6011", "amount": 1000}, []),
        ({"merchant_category_code": "4829", "amount": 2500.01}, ["R007"]),
        ({"merchant_category_code": "4829", "amount": 2500}, []),
        ({"merchant_category_code": "5967", "amount": 300.01}, ["R007"]),
        ({"merchant_category_code": "5967", "amount": 300}, []),
        ({"merchant_category_code": "5411", "amount": 10000.01}, ["R007"]),
        ({"merchant_category_code": "5411", "amount": 10000}, []),
        # an unlisted MCC does not get a listed MCC's lower limit
        ({"merchant_category_code": "5411", "amount": 5000}, []),
        ({"merchant_category_code": "6011", "amount": 5000}, ["R007"]),
        # an MCC given as a number is looked up as its string
        ({"merchant_category_code": 6011, "amount": 1000.01}, ["R007"]),
    ],
)
def test_shipped_rule_fires_and_near_miss_does_not(shipped: RuleSet, change: dict, expected: list[str]):
    assert ids(shipped.evaluate({**BENIGN, **change})) == expected


@pytest.mark.parametrize("value", ["a1b2c3", "", "0" * 64])
def test_shipped_empty_ip_list_never_fires(shipped: RuleSet, value: str):
    assert ids(shipped.evaluate({**BENIGN, "ip_hash": value})) == []


@pytest.mark.parametrize("value", ["412345", "4", "", "5555444433331111", 412345])
def test_shipped_empty_bin_prefixes_never_fire(shipped: RuleSet, value):
    assert ids(shipped.evaluate({**BENIGN, "card_bin": value})) == []


LISTS_YAML = """
rules:
  - {id: IP1, reason: BLOCKED_IP, kind: in_list, field: ip_hash, values: [deadbeef, cafe01], action: block, score: 100}
  - {id: BIN1, reason: BLOCKED_BIN, kind: prefix, field: card_bin, prefixes: ["412345", 5], action: block, score: 90}
"""


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ip_hash": "deadbeef"}, ["IP1"]),
        ({"ip_hash": "cafe01"}, ["IP1"]),
        ({"ip_hash": "deadbeef0"}, []),  # in_list is an exact match, not a prefix
        ({"ip_hash": "DEADBEEF"}, []),
        ({"card_bin": "4123456789"}, ["BIN1"]),
        ({"card_bin": "412345"}, ["BIN1"]),
        ({"card_bin": "41234"}, []),  # shorter than the prefix
        ({"card_bin": "412346"}, []),
        ({"card_bin": "0412345"}, []),  # a prefix, not a substring
        ({"card_bin": 412345999}, ["BIN1"]),  # numbers are matched on their digits
        ({"card_bin": "5100"}, ["BIN1"]),  # a numeric prefix in the YAML is a string prefix
        ({"ip_hash": "deadbeef", "card_bin": "51"}, ["IP1", "BIN1"]),
    ],
)
def test_custom_lists_fire(change: dict, expected: list[str]):
    rs = RuleSet.parse(LISTS_YAML)
    assert ids(rs.evaluate({"ip_hash": "0000", "card_bin": "999999", **change})) == expected


# --------------------------------------------------------------------------------------------------------------
# 2. a missing or null field never fires a rule and never raises


@pytest.mark.parametrize(
    "field", ["card_tx_count_5m", "card_tx_count_1h", "card_prev_speed_kmh", "country", "ip_hash", "card_bin", "amount"]
)
@pytest.mark.parametrize("how", ["missing", "none"])
def test_missing_field_never_fires(shipped: RuleSet, field: str, how: str):
    rs = RuleSet.parse(LISTS_YAML)
    # every other field is at a value that fires its rule, so only the absent one is silent
    firing = {
        "card_tx_count_5m": 100,
        "card_tx_count_1h": 100,
        "card_prev_speed_kmh": 5000.0,
        "country": "KP",
        "ip_hash": "deadbeef",
        "card_bin": "412345",
        "amount": 1e6,
        "merchant_category_code": "6011",
    }
    event = dict(firing)
    if how == "missing":
        del event[field]
    else:
        event[field] = None
    owner = {
        "card_tx_count_5m": "R001",
        "card_tx_count_1h": "R002",
        "card_prev_speed_kmh": "R003",
        "country": "R004",
        "ip_hash": "IP1",
        "card_bin": "BIN1",
        "amount": "R007",
    }[field]
    fired = set(ids(shipped.evaluate(event))) | set(ids(rs.evaluate(event)))
    assert owner not in fired
    assert fired == ({"R001", "R002", "R003", "R004", "R007", "IP1", "BIN1"} - {owner})


@pytest.mark.parametrize("op", [">", ">=", "<", "<=", "==", "!="])
def test_null_never_fires_any_threshold_op(op: str):
    rs = RuleSet.parse(rule_yaml(op=op, value=0))
    assert rs.evaluate({"x": None}) == []
    assert rs.evaluate({}) == []


def test_empty_event_fires_nothing(shipped: RuleSet):
    assert shipped.evaluate({}) == []
    assert RuleSet.parse(LISTS_YAML).evaluate({}) == []


def test_amount_limit_without_mcc_uses_the_default_limit(shipped: RuleSet):
    assert ids(shipped.evaluate({"amount": 10000.01})) == ["R007"]
    assert ids(shipped.evaluate({"amount": 10000.01, "merchant_category_code": None})) == ["R007"]
    assert ids(shipped.evaluate({"amount": 5000, "merchant_category_code": None})) == []


def test_amount_limit_without_default_ignores_other_mccs():
    rs = RuleSet.parse(
        "rules: [{id: A, reason: R, kind: amount_limit, limits: {'6011': 100}, action: review, score: 10}]"
    )
    assert ids(rs.evaluate({"amount": 1e6, "merchant_category_code": "5411"})) == []
    assert ids(rs.evaluate({"amount": 100.5, "merchant_category_code": "6011"})) == ["A"]


# --------------------------------------------------------------------------------------------------------------
# 3. parse errors: ValueErrors naming the rule


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"kind": "regex"}, r"rule #1 \(R9\): kind 'regex' is not one of"),
        ({"op": "=>"}, r"rule #1 \(R9\): op '=>' is not one of"),
        ({"op": "gt"}, r"R9.*op 'gt'"),
        ({"value": None}, r"rule #1 \(R9\): a threshold rule needs \['value'\]"),
        ({"field": None, "op": None}, r"R9.*threshold rule needs \['field', 'op'\]"),
        ({"kind": "in_list", "op": None, "value": None}, r"R9.*in_list rule needs \['values'\]"),
        ({"kind": "prefix", "op": None, "value": None}, r"R9.*prefix rule needs \['prefixes'\]"),
        ({"kind": "amount_limit", "field": None}, r"R9.*amount_limit rule needs \['limits'\]"),
        ({"score": 101}, r"R9.*score 101 is not a number in 0\.\.100"),
        ({"score": -1}, r"R9.*score -1 is not a number"),
        ({"score": 100.5}, r"R9.*score 100\.5"),
        ({"score": "high"}, r"R9.*score 'high'"),
        ({"action": "deny"}, r"rule #1 \(R9\): action 'deny' is not block or review"),
        ({"action": "approve"}, r"R9.*action 'approve'"),
        ({"reason": None}, r"rule #1 \(R9\): missing \['reason'\]"),
        ({"action": None, "score": None}, r"R9.*missing \['action', 'score'\]"),
        ({"id": None}, r"rule #1 \(no id\): missing \['id'\]"),
    ],
)
def test_parse_errors_name_the_rule(fields: dict, match: str):
    with pytest.raises(ValueError, match=match):
        RuleSet.parse(rule_yaml(**fields))


@pytest.mark.parametrize(
    "text",
    [
        "rules: [R001]",
        "rules: [{id: R9, reason: T, kind: in_list, field: x, values: 5, action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: prefix, field: x, prefixes: 5, action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: amount_limit, limits: [1, 2], action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: amount_limit, limits: {'*': lots}, action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: threshold, field: x, op: ['>'], value: 1, action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: threshold, field: x, op: '>', value: null, action: block, score: 1}]",
        "rules: [{id: R9, reason: T, kind: threshold, field: x, op: '>', value: six, action: block, score: 1}]",
    ],
)
def test_malformed_rule_shapes_are_value_errors_naming_the_rule(text: str):
    with pytest.raises(ValueError, match=r"rule #1 \((R9|R001)\)"):
        RuleSet.parse(text)


@pytest.mark.parametrize("score", [0, 100, 0.5, 99.99])
def test_scores_at_the_bounds_are_valid(score: float):
    (rule,) = RuleSet.parse(rule_yaml(score=score)).rules
    assert rule.score == score


def test_parse_error_in_a_later_rule_names_that_rule():
    text = """
rules:
  - {id: OK1, reason: A, kind: threshold, field: x, op: ">", value: 1, action: review, score: 10}
  - {id: BAD2, reason: B, kind: threshold, field: x, op: "~", value: 1, action: review, score: 10}
"""
    with pytest.raises(ValueError, match=r"rule #2 \(BAD2\): op '~'"):
        RuleSet.parse(text)


def test_duplicate_ids_are_an_error():
    text = """
rules:
  - {id: R1, reason: A, kind: threshold, field: x, op: ">", value: 1, action: review, score: 10}
  - {id: R2, reason: B, kind: in_list, field: c, values: [KP], action: block, score: 100}
  - {id: R1, reason: C, kind: prefix, field: b, prefixes: ["4"], action: block, score: 100}
"""
    with pytest.raises(ValueError, match=r"duplicate rule ids: \['R1'\]"):
        RuleSet.parse(text)


@pytest.mark.parametrize(
    "text", ["", "# nothing\n", "foo: 1", "rules:", "rules: {R1: x}", "rules: R1", "- {id: R1}", "42", "[]"]
)
def test_a_document_without_a_rules_list_is_an_error(text: str):
    with pytest.raises(ValueError, match=r"list under `rules`"):
        RuleSet.parse(text)


def test_an_empty_rules_list_is_valid():
    rs = RuleSet.parse("rules: []", version="v0")
    assert rs.rules == ()
    assert rs.version == "v0"
    assert rs.evaluate(BENIGN) == []


def test_invalid_yaml_is_a_yaml_error():
    with pytest.raises(yaml.YAMLError):
        RuleSet.parse("rules: [")


# --------------------------------------------------------------------------------------------------------------
# 4. hits: file order, with id, reason, action and score


def test_hits_in_file_order_with_their_details(shipped: RuleSet):
    event = {
        **BENIGN,
        "merchant_category_code": "6011",
        "amount": 2000.0,
        "country": "KP",
        "card_prev_speed_kmh": 1500.0,
        "card_tx_count_5m": 9,
    }
    assert shipped.evaluate(event) == [
        Hit("R001", "VELOCITY_5M", "review", 70.0),
        Hit("R003", "IMPOSSIBLE_TRAVEL", "review", 75.0),
        Hit("R004", "BLOCKED_COUNTRY", "block", 100.0),
        Hit("R007", "AMOUNT_LIMIT_MCC", "review", 65.0),
    ]


def test_hits_follow_the_file_not_the_ids():
    text = """
rules:
  - {id: Z9, reason: LAST_ID, kind: threshold, field: x, op: ">=", value: 1, action: block, score: 20}
  - {id: A1, reason: FIRST_ID, kind: threshold, field: x, op: ">=", value: 1, action: review, score: 90}
  - {id: M5, reason: NOT_HIT, kind: threshold, field: x, op: ">=", value: 5, action: review, score: 30}
  - {id: B2, reason: MIDDLE, kind: in_list, field: c, values: [KP], action: review, score: 40.5}
"""
    hits = RuleSet.parse(text).evaluate({"x": 1, "c": "KP"})
    assert [(h.rule_id, h.reason, h.action, h.score) for h in hits] == [
        ("Z9", "LAST_ID", "block", 20.0),
        ("A1", "FIRST_ID", "review", 90.0),
        ("B2", "MIDDLE", "review", 40.5),
    ]
    assert all(isinstance(h.score, float) for h in hits)


@pytest.mark.parametrize(
    ("op", "fires_at"),
    [(">", [6]), (">=", [5, 6]), ("<", [4]), ("<=", [4, 5]), ("==", [5]), ("!=", [4, 6])],
)
def test_threshold_operators(op: str, fires_at: list[int]):
    rs = RuleSet.parse(rule_yaml(op=op, value=5))
    assert [x for x in (4, 5, 6) if rs.evaluate({"x": x})] == fires_at


# --------------------------------------------------------------------------------------------------------------
# 5. RuleBook: hot reload


@pytest.fixture
def book_file(tmp_path: Path, rules_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    shutil.copy(rules_path, path)
    return path


VELOCITY_6 = '    op: ">="\n    value: 6\n'


def test_rulebook_sees_an_edit(book_file: Path):
    book = RuleBook(book_file, reload_seconds=0)
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == []
    first_version = book.current.version
    assert first_version.startswith("rules.yaml@")

    text = book_file.read_text()
    assert VELOCITY_6 in text
    rewrite(book_file, text.replace(VELOCITY_6, VELOCITY_6.replace("6", "3")))  # same size: the mtime tells
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == ["R001"]
    assert book.current.version != first_version
    assert book.errors == 0


def test_rulebook_reload_reports_changes(book_file: Path):
    book = RuleBook(book_file, reload_seconds=3600)
    assert book.reload() is False  # unchanged
    rewrite(book_file, book_file.read_text() + "\n# a comment\n")
    assert book.reload() is True
    assert book.reload() is False
    assert len(book.current.rules) == 7


def test_rulebook_keeps_the_last_good_rules(book_file: Path):
    book = RuleBook(book_file, reload_seconds=0)
    good = book_file.read_text()
    rewrite(book_file, good.replace(VELOCITY_6, VELOCITY_6.replace("6", "3")))
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == ["R001"]
    last_good = book.current

    # invalid YAML: the last good rules stay, one error counted (once, not on every look)
    rewrite(book_file, "rules: [\n  - {id: R001")
    assert book.current is last_good
    assert book.errors == 1
    assert book.current is last_good
    assert book.errors == 1

    # valid YAML, invalid rule: same
    rewrite(book_file, good.replace('op: ">="', 'op: "=>"', 1))
    assert book.current is last_good
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == ["R001"]
    assert book.errors == 2

    # a duplicate id: same
    rewrite(book_file, good.replace("id: R002", "id: R001"))
    assert book.current is last_good
    assert book.errors == 3

    # fixed: the fix is in force, the error count stays
    rewrite(book_file, good.replace(VELOCITY_6, VELOCITY_6.replace("6", "10")))
    rs = book.current
    assert rs is not last_good
    assert ids(rs.evaluate({"card_tx_count_5m": 9})) == []
    assert ids(rs.evaluate({"card_tx_count_5m": 10})) == ["R001"]
    assert book.errors == 3


def test_rulebook_survives_a_vanished_file(book_file: Path):
    book = RuleBook(book_file, reload_seconds=0)
    before = book.current
    book_file.unlink()
    assert book.current is before
    assert book.errors == 1


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("values: [KP, IR, SY, CU]", "values: 5"),
        ("prefixes: []", "prefixes: 5"),
        ('limits:\n      "6011": 1000     # ATM cash', 'limits: [1, 2]\n    xlimits:\n      "6011": 1000'),
    ],
)
def test_rulebook_keeps_last_good_rules_on_a_malformed_rule(book_file: Path, old: str, new: str):
    book = RuleBook(book_file, reload_seconds=0)
    before = book.current
    text = book_file.read_text()
    assert old in text
    rewrite(book_file, text.replace(old, new))
    assert book.current is before
    assert book.errors == 1


def test_rulebook_checks_at_most_every_reload_seconds(book_file: Path, monkeypatch: pytest.MonkeyPatch):
    clock = [1000.0]
    monkeypatch.setattr(rules_mod, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    book = RuleBook(book_file, reload_seconds=30)
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == []

    rewrite(book_file, book_file.read_text().replace(VELOCITY_6, VELOCITY_6.replace("6", "3")))
    clock[0] += 29.9
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == []  # not looked at yet
    clock[0] += 0.1
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == ["R001"]  # interval passed

    # the interval restarts at the last look
    rewrite(book_file, book_file.read_text().replace(VELOCITY_6.replace("6", "3"), VELOCITY_6.replace("6", "9")))
    clock[0] += 10
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == ["R001"]
    clock[0] += 25
    assert ids(book.current.evaluate({"card_tx_count_5m": 4})) == []
    assert ids(book.current.evaluate({"card_tx_count_5m": 9})) == ["R001"]


def test_rulebook_refuses_an_invalid_file_at_start(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text(rule_yaml(kind="regex"))
    with pytest.raises(ValueError, match="R9"):
        RuleBook(path)


# --------------------------------------------------------------------------------------------------------------
# 6. calibrated


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, 0.0),
        (-0.2, 0.0),
        (0.15, 25.0),
        (0.3, 50.0),
        (0.5, 65.0),
        (0.7, 80.0),
        (0.85, 90.0),
        (1.0, 100.0),
        (1.3, 100.0),
    ],
)
def test_calibrated_probability(cfg: DecisionSettings, value: float, expected: float):
    got = calibrated(value, 0.3, 0.7, 1.0, cfg.review_threshold, cfg.block_threshold)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 0.0), (2, 25.0), (4, 50.0), (6, 65.0), (8, 80.0), (12, 90.0), (16, 100.0), (40, 100.0)]
)
def test_calibrated_deviation(cfg: DecisionSettings, value: float, expected: float):
    got = calibrated(value, cfg.statistical_review_at, cfg.statistical_block_at, 16, 50, 80)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("review_at", "block_at", "top"), [(0.3, 0.7, 1.0), (0.05, 0.06, 1.0), (4, 8, 16), (0.9, 0.95, 1)]
)
def test_calibrated_is_monotonic_and_within_0_100(review_at: float, block_at: float, top: float):
    grid = [top * 1.5 * i / 3000 for i in range(3001)]
    out = [calibrated(v, review_at, block_at, top, 50.0, 80.0) for v in grid]
    assert all(0.0 <= y <= 100.0 for y in out)
    assert all(a <= b for a, b in itertools.pairwise(out))
    # continuous at the knots
    for knot, y in ((review_at, 50.0), (block_at, 80.0), (top, 100.0)):
        assert calibrated(knot * (1 - 1e-9), review_at, block_at, top, 50.0, 80.0) == pytest.approx(y, abs=1e-4)
        assert calibrated(knot * (1 + 1e-9), review_at, block_at, top, 50.0, 80.0) == pytest.approx(y, abs=1e-4)


def test_calibrated_none_is_none():
    assert calibrated(None, 0.3, 0.7, 1.0, 50.0, 80.0) is None


@pytest.mark.parametrize(("review_at", "block_at"), [(0.7, 0.7), (0.8, 0.7), (0.0, 0.7), (-0.1, 0.7)])
def test_calibrated_rejects_bad_thresholds(review_at: float, block_at: float):
    with pytest.raises(ValueError, match="review_at"):
        calibrated(0.5, review_at, block_at, 1.0, 50.0, 80.0)


# --------------------------------------------------------------------------------------------------------------
# 7. decide


def test_default_thresholds_and_weights(cfg: DecisionSettings):
    # the numbers the tests below are written against
    assert (cfg.review_threshold, cfg.block_threshold) == (50.0, 80.0)
    assert cfg.weights == {"rules": 1.0, "ml": 1.0, "anomaly": 0.8, "statistical": 0.8}
    assert set(TIERS) == {"rules", "statistical", "ml", "anomaly"}


@pytest.mark.parametrize(
    ("ml", "decision"),
    [(100, "block"), (80, "block"), (79.99, "review"), (50, "review"), (49.99, "approve"), (0, "approve")],
)
def test_decide_thresholds(cfg: DecisionSettings, ml: float, decision: str):
    v = decide({"ml": ml, "rules": None, "statistical": None, "anomaly": None}, [], cfg)
    assert (v.score, v.decision, v.driver) == (pytest.approx(ml), decision, "ml")


@pytest.mark.parametrize(
    ("tiers", "score", "decision", "driver"),
    [
        ({"anomaly": 100}, 80.0, "block", "anomaly"),
        ({"statistical": 62.5}, 50.0, "review", "statistical"),
        ({"statistical": 62.49}, 49.99, "approve", "statistical"),
        # raw anomaly 90 is highest, but weighted (72) it loses to ml 75
        ({"ml": 75, "anomaly": 90, "statistical": 10, "rules": None}, 75.0, "review", "ml"),
        ({"ml": 60, "anomaly": 90, "statistical": None, "rules": 70}, 72.0, "review", "anomaly"),
        ({"ml": 10, "anomaly": 20, "statistical": 30, "rules": 45}, 45.0, "approve", "rules"),
        ({"ml": None, "anomaly": None, "statistical": 100, "rules": 65}, 80.0, "block", "statistical"),
    ],
)
def test_decide_driver_is_highest_weighted_tier(cfg, tiers, score, decision, driver):
    v = decide(tiers, [], cfg)
    assert v.score == pytest.approx(score)
    assert v.decision == decision
    assert v.driver == driver


def test_decide_weight_zero_turns_a_tier_off(cfg: DecisionSettings):
    off = cfg.model_copy(update={"weights": {**cfg.weights, "anomaly": 0.0}})
    v = decide({"anomaly": 100, "ml": 30}, [], off)
    assert (v.score, v.decision, v.driver) == (30.0, "approve", "ml")
    # the same scores with the default weights block
    assert decide({"anomaly": 100, "ml": 30}, [], cfg).decision == "block"
    # weights scale, not just switch
    half = cfg.model_copy(update={"weights": {**cfg.weights, "ml": 0.5}})
    assert decide({"ml": 100}, [], half).score == 50.0


def test_decide_a_switched_off_tier_is_never_the_driver(cfg: DecisionSettings):
    off = cfg.model_copy(update={"weights": {**cfg.weights, "anomaly": 0.0}})
    v = decide({"anomaly": 100}, [], off)
    assert (v.score, v.decision) == (0.0, "approve")
    assert v.driver is None


@pytest.mark.parametrize("tiers", [{}, {"rules": None, "statistical": None, "ml": None, "anomaly": None}])
def test_decide_no_scores(cfg: DecisionSettings, tiers: dict):
    v = decide(tiers, [], cfg)
    assert (v.score, v.decision, v.driver) == (0.0, "approve", None)
    assert v.tiers == tiers
    assert v.tiers is not tiers


def test_decide_block_rule_forces_block(cfg: DecisionSettings):
    block = Hit("R004", "BLOCKED_COUNTRY", "block", 100.0)
    v = decide({"rules": None, "ml": 0, "anomaly": 0, "statistical": 0}, [block], cfg)
    assert v.decision == "block"
    assert v.score == 0.0
    v = decide({}, [Hit("LOW", "LOW_SCORE_BLOCK", "block", 1.0)], cfg)
    assert (v.decision, v.driver) == ("block", None)


def test_decide_review_rule_forces_at_least_review(cfg: DecisionSettings):
    review = Hit("R001", "VELOCITY_5M", "review", 70.0)
    assert decide({"ml": 0}, [review], cfg).decision == "review"
    assert decide({}, [review], cfg).decision == "review"
    assert decide({"ml": 65}, [review], cfg).decision == "review"
    # a review rule never lowers a block
    assert decide({"ml": 95}, [review], cfg).decision == "block"
    # a block rule wins over a review rule
    assert decide({"ml": 0}, [review, Hit("R004", "BLOCKED_COUNTRY", "block", 100.0)], cfg).decision == "block"


@pytest.mark.parametrize("tiers", [{"model": 90}, {"ML": None}, {"ml": 10, "rule": 5}])
def test_decide_unknown_tier_is_a_key_error(cfg: DecisionSettings, tiers: dict):
    with pytest.raises(KeyError, match="unknown tiers"):
        decide(tiers, [], cfg)


def test_decide_score_capped_at_100(cfg: DecisionSettings):
    heavy = cfg.model_copy(update={"weights": {**cfg.weights, "rules": 1.5}})
    v = decide({"rules": 100, "ml": 90}, [], heavy)
    assert (v.score, v.decision, v.driver) == (100.0, "block", "rules")
    assert decide({"ml": 250}, [], cfg).score == 100.0


def test_decide_honours_custom_thresholds():
    low = DecisionSettings(review_threshold=30, block_threshold=60)
    assert decide({"ml": 29.99}, [], low).decision == "approve"
    assert decide({"ml": 30}, [], low).decision == "review"
    assert decide({"ml": 59.99}, [], low).decision == "review"
    assert decide({"ml": 60}, [], low).decision == "block"


def test_rules_and_decision_together(cfg: DecisionSettings, shipped: RuleSet):
    """The rules tier is the highest score of the rules that fire; a blocked country blocks a clean score."""

    def verdict(event: dict, ml: float):
        hits = shipped.evaluate(event)
        rules_score = max((h.score for h in hits), default=None)
        return decide({"rules": rules_score, "ml": ml, "anomaly": None, "statistical": None}, hits, cfg)

    assert verdict(BENIGN, 10).decision == "approve"
    v = verdict({**BENIGN, "card_tx_count_5m": 6}, 10)
    assert (v.score, v.decision, v.driver) == (70.0, "review", "rules")
    v = verdict({**BENIGN, "country": "KP"}, 0)
    assert (v.score, v.decision, v.driver) == (100.0, "block", "rules")


# --------------------------------------------------------------------------------------------------------------
# 8. DecisionSettings validation


def test_decision_settings_defaults_are_valid():
    d = DecisionSettings()
    assert d.review_threshold < d.block_threshold
    assert d.statistical_review_at < d.statistical_block_at


@pytest.mark.parametrize(("review", "block"), [(80, 80), (90, 80), (50, 49.9)])
def test_decision_settings_review_below_block(review: float, block: float):
    with pytest.raises(ValidationError, match="review_threshold must be below"):
        DecisionSettings(review_threshold=review, block_threshold=block)


@pytest.mark.parametrize(("review_at", "block_at"), [(8, 8), (9, 8), (4, 3.5)])
def test_decision_settings_statistical_review_below_block(review_at: float, block_at: float):
    with pytest.raises(ValidationError, match="statistical_review_at must be below"):
        DecisionSettings(statistical_review_at=review_at, statistical_block_at=block_at)


@pytest.mark.parametrize(
    "update",
    [{"block_threshold": 0}, {"block_threshold": 101}, {"review_threshold": -1}, {"rules_reload_seconds": 0}],
)
def test_decision_settings_field_bounds(update: dict):
    with pytest.raises(ValidationError):
        DecisionSettings(**update)


# --- Tier 2: statistical deviations -----------------------------------------------------------------------------


def test_statistical_deviations_by_hand():
    from serving.statistical import deviations

    # 30 days at 8,640 transactions = one every 5 minutes: 1 expected per 5 min, 3 per 15 min, 12 per hour
    devs = deviations({"card_amount_zscore_30d": 2.5, "card_amount_iqr_score_30d": 5.5, "card_tx_count_30d": 8640,
                       "card_tx_count_1m": 0, "card_tx_count_5m": 5, "card_tx_count_15m": 9,
                       "card_tx_count_1h": 12}, min_expected=0.25)  # fmt: skip
    assert devs["amount_zscore_30d"] == 2.5
    assert devs["amount_iqr_30d"] == 5.5  # the feature as it is: IQRs from the median
    assert devs["velocity_5m"] == pytest.approx((5 - 1) / 1)
    assert devs["velocity_15m"] == pytest.approx((9 - 3) / math.sqrt(3))
    assert devs["velocity_1h"] == pytest.approx(0.0)
    assert devs["velocity_1m"] == pytest.approx((0 - 0.25) / 0.5)  # 0.2 expected, floored at 0.25
    # no history: every deviation unknown, never zero
    assert set(deviations({}, 0.25).values()) == {None}


def test_statistical_tier_score_and_reason():
    from serving.statistical import tier

    cfg = get_settings().decision
    quiet = {"card_amount_zscore_30d": 0.3, "card_amount_iqr_score_30d": 0.2, "card_tx_count_30d": 8640,
             "card_tx_count_1m": 0, "card_tx_count_5m": 1, "card_tx_count_15m": 3, "card_tx_count_1h": 12}  # fmt: skip
    score, reason, _ = tier(quiet, cfg)
    assert score < cfg.review_threshold and reason == "amount_zscore_30d"
    burst = {**quiet, "card_tx_count_5m": 1 + 8}  # 8 standard deviations: the block threshold
    score, reason, _ = tier(burst, cfg)
    assert reason == "velocity_5m" and score == pytest.approx(cfg.block_threshold)
    # 15 minutes: 3 expected, 3 + 4 sqrt(3) observed = 4 standard deviations: the review threshold
    spree = {**quiet, "card_tx_count_15m": 3 + cfg.statistical_review_at * math.sqrt(3)}
    score, reason, _ = tier(spree, cfg)
    assert reason == "velocity_15m" and score == pytest.approx(cfg.review_threshold)
    # an amount 8 IQRs above the card's median blocks although its z-score is diluted by earlier outliers
    odd = {**quiet, "card_amount_zscore_30d": 1.5, "card_amount_iqr_score_30d": cfg.statistical_block_at}
    score, reason, devs = tier(odd, cfg)
    assert reason == "amount_iqr_30d" and score == pytest.approx(cfg.block_threshold)
    assert devs["amount_zscore_30d"] == 1.5
    # Tukey's far-out fence (3 IQR beyond the quartile, ~3.5 IQR from the median) stays just below review
    fence = tier({**quiet, "card_amount_iqr_score_30d": 3.5}, cfg)
    assert fence[1] == "amount_iqr_30d" and fence[0] < cfg.review_threshold
    # the IQR score alone sets the tier (a vector without the other deviations)
    assert tier({"card_amount_iqr_score_30d": 6.0}, cfg)[1] == "amount_iqr_30d"
    assert tier({}, cfg)[:2] == (None, None)
    # a negative deviation (quieter than usual) scores 0, not below
    assert tier({"card_amount_zscore_30d": -3.0}, cfg)[0] == 0.0
