"""The feature catalogue: one definition per feature, documented, and produced by the online engine as defined."""

from features import online
from lakehouse import PROJECT_ROOT
from lakehouse import feature_definitions as definitions


def test_every_feature_is_defined_once_and_documented():
    names = [*definitions.TRANSACTION_FEATURE_NAMES, *definitions.MARKET_FEATURE_NAMES]
    assert len(names) == len(set(names))
    doc = (PROJECT_ROOT / "docs" / "features.md").read_text()
    assert definitions.markdown().strip() in doc, "docs/features.md is stale: paste `python -m features catalogue`"
    assert all(f.description for f in definitions.TRANSACTION_FEATURES + definitions.MARKET_FEATURES)


def test_online_engine_produces_exactly_the_defined_features():
    tx = {name: None for name in definitions.TRANSACTION_INPUTS}
    tx.update(transaction_id="t1", card_id="c1", merchant_id="m1", amount=10.0, country="FR")
    values = online.transaction_features(online.new_card(), {"terminal": None, "merchant": online.new_place()}, tx, 0)
    assert set(values) == set(definitions.TRANSACTION_FEATURE_NAMES)
    ticks = online.tick_features(online.new_symbol(), 0, 1.0)
    assert set(ticks) == set(definitions.MARKET_FEATURE_NAMES)
