"""The catalog: docs/tables.md is generated from it, and tables are created with their schema and retention."""

from lakehouse import PROJECT_ROOT, tables


def test_docs_list_every_table_as_the_catalog_defines_it():
    doc = (PROJECT_ROOT / "docs" / "tables.md").read_text()
    generated = doc.split(tables.DOC_BEGIN)[1].split(tables.DOC_END)[0].strip()
    assert generated == tables.markdown().strip(), "docs/tables.md is stale: run `python -m lakehouse.tables`"
    for name in ("silver.transactions", "gold.fraud_summary_daily", "bronze.dead_letter", "silver.late_events"):
        assert f"### {name}" in generated


def test_ensure_creates_an_empty_table_with_schema_partitions_and_retention(settings, tmp_path):
    local = settings.model_copy(update={"lakehouse": settings.lakehouse.model_copy(update={"root": str(tmp_path)})})
    spec = tables.load_catalog()["silver.transactions"]
    uri = tables.ensure(local, spec)
    from lakehouse import delta

    dt = delta.open_table(local, uri)
    assert dt.metadata().partition_columns == ["event_date"]
    conf = dt.metadata().configuration
    assert conf["delta.deletedFileRetentionDuration"] == f"interval {settings.lakehouse.retention_hours} hours"
    assert conf["delta.enableChangeDataFeed"] == "true"
    assert [f.name for f in delta.read_arrow(local, uri).schema] == spec.schema.names
    assert tables.ensure(local, spec) == uri and dt.version() == delta.open_table(local, uri).version()
