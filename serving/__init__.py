"""Serving: the FastAPI service for scores, verdicts, histories and time-travel audits (Part 6)."""
