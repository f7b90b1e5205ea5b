"""``make bench``'s memory figures count a process with everything it started, whatever group it moved to."""

from __future__ import annotations

import subprocess
import sys
import time

from bench.memory import PeakRss, rss_mb, tree

# a parent holding ~60 MB that starts a child in a new session holding ~120 MB
CHILD = "import time; b = bytearray(120 * 2**20); time.sleep(60)"
PARENT = (
    "import subprocess, sys, time; b = bytearray(60 * 2**20); "
    f"subprocess.Popen([sys.executable, '-c', {CHILD!r}], start_new_session=True); time.sleep(60)"
)


def test_rss_of_a_process_tree_includes_children_in_other_sessions():
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        deadline = time.monotonic() + 30
        while len(tree(parent.pid)) < 2 or rss_mb(parent.pid) < 180:
            assert time.monotonic() < deadline, f"tree {tree(parent.pid)}, {rss_mb(parent.pid)} MB"
            time.sleep(0.2)
        with PeakRss(parent.pid, interval_s=0.1) as peak:
            time.sleep(0.3)
        assert peak.mb >= 180
    finally:
        for pid in tree(parent.pid) - {parent.pid}:
            subprocess.run(["kill", "-9", str(pid)], check=False)
        parent.kill()
        parent.wait()
    assert rss_mb(parent.pid) == 0
