"""`make stream`'s entry point: live traffic flows through the event log into bronze, then stops cleanly."""

import os
import subprocess
import sys

from lakehouse import delta, eventlog
from lakehouse.config import isolated


def test_stream_entry_point_shows_events_arriving(stack, tmp_path):
    # a lakehouse of its own: the other tests' tables would be a backlog to catch up on before the traffic
    settings, env = isolated(tmp_path, "entry")
    log = eventlog.from_settings(settings)
    eventlog.ensure_topics(log, settings)
    log.close()
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.pipeline", "--duration", "35", "--rate", "100"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,  # the nine queries start one after another: ~90 s on two cores
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traffic: 100 transactions/s" in done.stderr
    assert "[bronze.transactions] batch" in done.stderr and "rows written" in done.stderr
    assert "sent " in done.stderr  # the producer's progress line
    rows = delta.read_arrow(settings, settings.table_uri("bronze", "transactions"), columns=["source_offset"]).num_rows
    assert rows > 100
