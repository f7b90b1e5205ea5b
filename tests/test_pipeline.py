"""`make stream`'s entry point: live traffic flows through the event log into bronze, then stops cleanly."""

import subprocess
import sys

from lakehouse import delta


def test_stream_entry_point_shows_events_arriving(stack):
    done = subprocess.run(
        [sys.executable, "-m", "lakehouse.pipeline", "--duration", "35", "--rate", "100"],
        capture_output=True,
        text=True,
        timeout=600,  # the nine queries start one after another: ~90 s idle, minutes with a backlog
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traffic: 100 transactions/s" in done.stderr
    assert "[bronze.transactions] batch" in done.stderr and "rows written" in done.stderr
    assert "sent " in done.stderr  # the producer's progress line
    rows = delta.read_arrow(stack, stack.table_uri("bronze", "transactions"), columns=["source_offset"]).num_rows
    assert rows > 100
