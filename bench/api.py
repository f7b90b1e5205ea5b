"""The API benchmark: ``python -m serving`` (uvicorn with one worker, then with ``workers``) on loopback, with the
real Redis online states of the features bench and the models bench's registered champions, loaded by ``wrk`` (a C
HTTP load generator) with single-transaction ``POST /v1/transactions/score`` requests cycling through fresh
generated transactions.

1. Paced: ``rate`` requests/s spread over many connections (wrk's per-connection delay), for ``seconds``:
   throughput and latency percentiles at that offered load (the issue's target: p99 <= 10 ms at 1,000/s).
2. Saturated: the same requests without pacing: the most this machine serves, and its latency.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.memory import rss_mb
from lakehouse.config import Settings
from tools.stack.process import free_port

SCRIPT = """
local bodies = {}
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(token)s"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "/v1/transactions/score", nil, bodies[i])
end
%(pacing)s
done = function(summary, latency, requests)
  local out = io.open("%(out)s", "w")
  out:write(string.format('{"requests": %%d, "seconds": %%.3f, "errors": %%d, "non_2xx": %%d, ',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
  out:write(string.format('"p50_ms": %%.3f, "p90_ms": %%.3f, "p99_ms": %%.3f, "p999_ms": %%.3f, "max_ms": %%.3f}',
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency:percentile(99.9) / 1e3, latency.max / 1e3))
  out:close()
end
"""


def _wrk(url: str, script: Path, connections: int, seconds: float) -> None:
    subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds:.0f}s", "--timeout", "5s",
                    "-s", str(script), url], check=True, capture_output=True, text=True)  # fmt: skip


def run(
    settings: Settings, env: dict[str, str], requests: list[dict], rate: float, seconds: float, workers: int = 2
) -> dict:
    """Latency and throughput of the scoring endpoint, paced at ``rate``/s and saturated, for one uvicorn worker
    and for ``workers``."""
    out = {}
    for n in sorted({1, workers}):
        print(f"  api: {n} worker{'s' if n > 1 else ''}", flush=True)
        out[f"workers_{n}"] = _run(settings, env, requests, rate, seconds, n)
    return out


def _run(settings: Settings, env: dict[str, str], requests: list[dict], rate: float, seconds: float, workers: int):
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk (make bench does)")
    token = next(iter(settings.api.tokens.values())).token.get_secret_value()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    bodies = tmp / "bodies.jsonl"
    bodies.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in requests))
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--port", str(port), "--workers", str(workers)],
                            env={**os.environ, **env},
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=open(tmp / "api.log", "w"))  # noqa: SIM115 - closed with the process  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _ready(url, token, requests[0], proc)
        out = {}
        # wrk waits `delay` after each answer, so a connection offers 1 / (delay + latency) requests/s: paced, many
        # connections each waiting 200 ms keep the offered load near `rate` while the latency stays well under it
        paced = max(16, round(rate * 0.2))
        runs = (("paced", paced, f"delay = function() return {paced / rate * 1000:.3f} end"), ("saturated", 16, ""))
        for name, connections, pacing in runs:
            result = tmp / f"{name}.json"
            script = tmp / f"{name}.lua"
            script.write_text(SCRIPT % {"bodies": bodies, "token": token, "pacing": pacing, "out": result})
            before = cpu_times()
            _wrk(url, script, connections, seconds)
            figures = json.loads(result.read_text())
            figures["cpu_steal_percent"] = steal_percent(before, cpu_times())
            figures["requests_per_s"] = round(figures["requests"] / figures["seconds"])
            figures["offered_per_s"] = rate if name == "paced" else None
            figures["connections"] = connections
            out[name] = figures
            print(f"  api: {name:<9} {figures['requests_per_s']:>6} req/s  p50 {figures['p50_ms']:.2f} ms  p99 "
                  f"{figures['p99_ms']:.2f} ms  p99.9 {figures['p999_ms']:.2f} ms  errors {figures['errors']}, "
                  f"non-2xx {figures['non_2xx']}, CPU stolen by the host {figures['cpu_steal_percent']} %",
                  flush=True)  # fmt: skip
        out["seconds"], out["distinct_requests"] = seconds, len(requests)
        out["workers"] = workers
        out["api_rss_mb"] = rss_mb(proc.pid)
        return out
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def _ready(url: str, token: str, body: dict, proc: subprocess.Popen) -> None:
    """Wait for the API, then check one real score (a model and the online store behind it)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the API exited with {proc.returncode}")
        try:
            r = httpx.post(f"{url}/v1/transactions/score", json=body, headers={"Authorization": f"Bearer {token}"})
            if r.status_code == 200 and r.json()["model"]["version"] and r.json()["features_status"] == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("the API did not score with a model and the online store within 90 s")


def cpu_times() -> list[int]:
    """The machine's CPU time counters (``/proc/stat``: user nice system idle iowait irq softirq steal ...)."""
    return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def steal_percent(before: list[int], after: list[int]) -> float:
    """The share of CPU time the hypervisor gave to others between two ``cpu_times``: figures taken while it is
    high understate this machine."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    return round(100 * spent[7] / max(1, sum(spent[:8])), 1)
