"""The catalog (``lakehouse.catalog``): docs/tables.md is generated from it, it holds every table the code
writes, and tables are created with their schema and retention."""

from lakehouse import PROJECT_ROOT, catalog, tables


def test_docs_list_every_table_as_the_catalog_defines_it():
    doc = (PROJECT_ROOT / "docs" / "tables.md").read_text()
    generated = doc.split(catalog.DOC_BEGIN)[1].split(catalog.DOC_END)[0].strip()
    assert generated == catalog.markdown().strip(), "docs/tables.md is stale: run `python -m lakehouse.catalog`"
    for name in ("silver.transactions", "gold.fraud_summary_daily", "bronze.dead_letter", "silver.late_events"):
        assert f"### {name}" in generated


def test_ensure_creates_an_empty_table_with_schema_partitions_and_retention(settings, tmp_path):
    local = settings.model_copy(update={"lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path)})})
    spec = catalog.get("silver.transactions")
    uri = tables.ensure(local, spec)
    from lakehouse import delta

    dt = delta.open_table(local, uri)
    assert dt.metadata().partition_columns == ["event_date"]
    conf = dt.metadata().configuration
    assert conf["delta.deletedFileRetentionDuration"] == f"interval {settings.lakehouse.retention_hours} hours"
    assert conf["delta.enableChangeDataFeed"] == "true"
    assert [f.name for f in delta.read_arrow(local, uri).schema] == spec.schema.names
    assert tables.ensure(local, spec) == uri and dt.version() == delta.open_table(local, uri).version()


def test_the_catalog_is_every_table_and_filled_by_no_import():
    """Each ``TableSpec`` the code defines is in ``CATALOG`` (the stages define none of their own)."""
    import ast

    defined = []
    packages = ("lakehouse", "bronze", "silver", "gold", "features", "training", "serving", "monitoring", "bench")
    for path in (p for pkg in packages for p in (PROJECT_ROOT / pkg).rglob("*.py") if p.name != "catalog.py"):
        tree = ast.parse(path.read_text())
        defined += [
            path for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "TableSpec"
        ]
    assert not defined, f"tables defined outside lakehouse/catalog.py: {sorted(set(map(str, defined)))}"
    assert len(catalog.CATALOG) == 28 and {s.layer for s in catalog.CATALOG.values()} == {
        "bronze", "silver", "quality", "features", "gold"}  # fmt: skip
