"""The streaming topology (``lakehouse.topology``): every table a query reads or writes is in the catalog, every
topic is configured, and every table of the catalog that the stream should fill has a query writing it. That the
queries a real run starts are exactly these is checked by ``tests/test_medallion.py``."""

from __future__ import annotations

from lakehouse import PROJECT_ROOT, catalog, topology
from lakehouse.config import Settings


def ends(kind: str) -> set[str]:
    return {e for q in topology.QUERIES for e in (*q.reads, *q.writes) if e.startswith(f"{kind}:")}


def test_every_end_of_every_query_exists(settings: Settings):
    tables = {e for q in topology.QUERIES for e in (*q.reads, *q.writes) if ":" not in e}
    assert not tables - set(catalog.CATALOG), "not in the catalog"
    assert {e.removeprefix("kafka:") for e in ends("kafka")} == set(type(settings.eventlog.topics).model_fields)
    topics = settings.eventlog.topics
    assert topology.consumers(settings) == {
        f"bronze.{t}": getattr(topics, t).name for t in ("transactions", "labels", "market_ticks")}  # fmt: skip
    assert ends("redis") == {"redis:online-store"}


def test_the_stream_fills_every_table_but_the_loaded_and_built_ones():
    written = {e for q in topology.QUERIES for e in q.writes}
    others = set(catalog.CATALOG) - written
    # reference data comes from `make reference`, training and evaluation sets from `make training-set`/`train`
    assert others == {*(s.full_name for s in catalog.REFERENCE_TABLES.values()), catalog.TRAINING_SET.full_name,
                      catalog.EVALUATION_SET.full_name}  # fmt: skip


def test_queries_are_named_once_in_stage_order():
    names = [q.name for q in topology.QUERIES]
    assert len(names) == len(set(names)) and all(q.name.split(".")[0] == q.stage for q in topology.QUERIES)
    assert topology.STAGES == ("bronze", "silver", "features", "gold")
    assert "| `gold.daily` | silver.transactions, gold.decisions |" in topology.table()


def test_the_readme_shows_the_topology():
    assert topology.table() in (PROJECT_ROOT / "README.md").read_text(), (
        "README.md: paste `python -m lakehouse.topology`"
    )
