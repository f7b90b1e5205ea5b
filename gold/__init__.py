"""Gold: per-card/merchant/MCC daily aggregates, fraud summaries, decisions, market risk (Parts 2 and 5)."""
