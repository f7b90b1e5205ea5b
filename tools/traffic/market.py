"""Market price ticks: a random walk with volatility regimes and injected crashes, spikes and volume bursts.

Anomalous ticks carry their ``scenario`` (ground truth); normal ticks carry ``None``.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

MARKET_SCENARIOS = ("crash", "spike", "volume_burst")


@dataclass(frozen=True)
class MarketConfig:
    seed: int = 7
    start_ms: int = 1_767_225_600_000
    symbols: tuple[str, ...] = ("ACME", "GLOBX", "INITECH", "UMBRL", "WAYNE")
    rate: float = 5.0  # ticks per second per symbol
    anomaly_rate: float = 0.002  # probability a tick starts an anomaly


@dataclass
class _Symbol:
    name: str
    price: float
    high_vol: bool = False
    crash_left: int = 0


class MarketGenerator:
    LOW_VOL, HIGH_VOL = 0.0004, 0.0020  # per-tick log-return standard deviation

    def __init__(self, config: MarketConfig):
        self.cfg = config
        self.rng = random.Random(config.seed)
        self.symbols = [_Symbol(s, round(self.rng.uniform(20, 400), 2)) for s in config.symbols]

    def events(self, until_ms: int | None = None) -> Iterator[tuple[str, dict]]:
        """``("market_tick", tick)`` pairs in time order."""
        heap = [(self.cfg.start_ms + self.rng.randint(0, 1000), i) for i in range(len(self.symbols))]
        heapq.heapify(heap)
        while heap:
            t, i = heapq.heappop(heap)
            if until_ms is not None and t > until_ms:
                return
            yield "market_tick", self._tick(t, self.symbols[i])
            heapq.heappush(heap, (t + max(1, int(self.rng.expovariate(self.cfg.rate / 1000.0))), i))

    def _tick(self, t: int, sym: _Symbol) -> dict:
        rng = self.rng
        if rng.random() < (0.002 if sym.high_vol else 0.0005):
            sym.high_vol = not sym.high_vol  # regime switch
        sigma = self.HIGH_VOL if sym.high_vol else self.LOW_VOL
        ret = rng.gauss(0, sigma)
        volume = round(rng.lognormvariate(4.5, 0.8))
        scenario = None
        if sym.crash_left > 0:
            sym.crash_left -= 1
            ret, scenario = -abs(rng.gauss(0.02, 0.005)), "crash"
        elif rng.random() < self.cfg.anomaly_rate:
            scenario = rng.choice(MARKET_SCENARIOS)
            if scenario == "crash":
                sym.crash_left = rng.randint(3, 8)
                ret = -abs(rng.gauss(0.02, 0.005))
            elif scenario == "spike":
                ret = rng.choice((-1, 1)) * rng.uniform(0.03, 0.08)
            else:
                volume *= rng.randint(20, 60)
        sym.price = max(0.01, sym.price * math.exp(ret))
        return {
            "symbol": sym.name,
            "event_time": t,
            "price": round(sym.price, 4),
            "volume": float(volume),
            "scenario": scenario,
        }
