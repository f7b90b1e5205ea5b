"""Resident memory of a process and everything it started (a Spark driver's JVM and Python workers, uvicorn's
workers), now or at its peak while a benchmark runs."""

from __future__ import annotations

import threading
from pathlib import Path


def tree(pid: int) -> set[int]:
    """``pid`` and its descendants, from /proc (whatever process group or session they moved to)."""
    parent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {pid}, [pid]
    while todo:
        p = todo.pop()
        children = [c for c, pp in parent.items() if pp == p and c not in out]
        out.update(children)
        todo.extend(children)
    return out


def rss_mb(pid: int) -> int:
    """Resident memory of ``pid`` and its descendants, in MB (0 if it is gone)."""
    kb = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
        except OSError:
            continue
    return round(kb / 1024)


class PeakRss:
    """Samples :func:`rss_mb` every ``interval_s`` between ``start()`` and ``stop()`` (or inside ``with``);
    ``mb`` is the most seen."""

    def __init__(self, pid: int, interval_s: float = 1.0):
        self.pid, self.interval_s, self.mb = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.mb = max(self.mb, rss_mb(self.pid))
            self._stop.wait(self.interval_s)

    def start(self) -> PeakRss:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> PeakRss:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
