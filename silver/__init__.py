"""Silver: typed, validated, deduplicated transactions enriched with reference data; labels merged in (Part 2)."""
