"""Bronze: every event as received from the event log, with its source partition/offset and ingestion time."""
