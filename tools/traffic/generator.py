"""Card transactions with injected fraud scenarios and delayed labels, in event-time order.

The generator is a pure iterator over ``(kind, event)`` given a seed and a start time: the same seed
and start give the same events. Normal spending follows each customer's habits with daily and weekly
cycles; fraud comes in episodes, each a scenario with its own signature, and every fraud transaction
gets a ``fraud`` label reported after a realistic delay (a share of genuine ones get a ``genuine`` label).
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tools.traffic.population import (
    Customer,
    Merchant,
    Population,
    Terminal,
    build_population,
)

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MIN_MS = 60_000

SCENARIOS = (
    "velocity_burst",
    "card_testing",
    "impossible_travel",
    "account_takeover",
    "amount_spike",
    "compromised_terminal",
    "compromised_merchant",
)
# share of all fraud transactions each scenario accounts for, and the mean size of one episode
_SHARE = {
    "velocity_burst": 0.16,
    "card_testing": 0.16,
    "impossible_travel": 0.14,
    "account_takeover": 0.14,
    "amount_spike": 0.14,
    "compromised_terminal": 0.14,
    "compromised_merchant": 0.12,
}
_EPISODE_SIZE = {
    "velocity_burst": 11.0,
    "card_testing": 18.0,
    "impossible_travel": 2.0,
    "account_takeover": 2.0,
    "amount_spike": 1.0,
}


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 42
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    rate: float = 200.0  # mean transactions per second (before daily/weekly cycles)
    fraud_rate: float = 0.01  # share of transactions that are fraud
    customers: int = 5000
    label_delay_days: float = 3.0  # mean delay of a fraud label
    genuine_label_share: float = 0.02  # share of genuine transactions that get a "genuine" label
    compromise_days: float = 3.0  # how long a terminal/merchant stays compromised


def cycle(t_ms: int) -> float:
    """Relative activity at ``t_ms``: a daily cycle (quiet at night) and quieter weekends."""
    hour = (t_ms % DAY_MS) / HOUR_MS
    daily = 0.25 + 1.5 * math.exp(-((hour - 13.5) ** 2) / (2 * 4.5**2))
    weekday = ((t_ms // DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday: 0 = Monday
    return daily * (0.8 if weekday >= 5 else 1.0)


_CYCLE_MAX = 1.75


class TrafficGenerator:
    def __init__(self, config: GeneratorConfig, population: Population | None = None):
        self.cfg = config
        self.pop = population or build_population(config.seed, config.customers)
        self.rng = random.Random(config.seed * 7919 + 1)
        self._heap: list[tuple[int, int, str, dict]] = []
        self._seq = itertools.count()
        self._activity = list(itertools.accumulate(c.activity for c in self.pop.customers))
        self._compromised_terminals: dict[str, int] = {}  # terminal_id -> until
        self._compromised_merchants: dict[str, int] = {}
        # per-arrival probability of starting each scenario's episode, to hit the target fraud rate;
        # a compromised terminal/merchant turns all its traffic during the window into fraud
        window_s = config.compromise_days * 86400
        terminals = max(1, len(self.pop.terminals))
        sizes = dict(_EPISODE_SIZE)
        online = sum(c.online_share for c in self.pop.customers) / max(1, len(self.pop.customers))
        sizes["compromised_terminal"] = max(1.0, config.rate * window_s * (1 - online) / terminals)
        sizes["compromised_merchant"] = max(
            1.0, config.rate * window_s * online / max(1, len(self.pop.online_merchants))
        )
        self._episode_p = list(itertools.accumulate(config.fraud_rate * _SHARE[s] / sizes[s] for s in SCENARIOS))

    # -- public -----------------------------------------------------------------------------------
    def events(
        self, until_ms: int | None = None, planted: Iterable[tuple[int, str]] = ()
    ) -> Iterator[tuple[str, dict]]:
        """``(kind, event)`` pairs in time order (kind: ``transaction`` or ``label``), up to ``until_ms``.

        ``planted``: ``(time_ms, scenario)`` pairs; the first arrival at or after each time starts an episode of
        that scenario (so a short run still holds every scenario)."""
        plan = sorted(planted)
        unknown = {s for _, s in plan} - set(SCENARIOS)
        if unknown:
            raise ValueError(f"unknown fraud scenario(s) {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
        t = self.cfg.start_ms
        rate_max_per_ms = self.cfg.rate * _CYCLE_MAX / 1000.0
        while True:
            t += max(1, int(self.rng.expovariate(rate_max_per_ms)))
            while self._heap and self._heap[0][0] <= t:
                yield self._pop()
            if until_ms is not None and t > until_ms:
                while self._heap and self._heap[0][0] <= until_ms:
                    yield self._pop()
                return
            if self.rng.random() * _CYCLE_MAX > cycle(t):
                continue  # thinning: fewer arrivals at night and at weekends
            r = self.rng.random()
            scenario = next((s for s, p in zip(SCENARIOS, self._episode_p, strict=True) if r < p), None)
            if plan and t >= plan[0][0]:
                scenario = plan.pop(0)[1]
            if scenario is None:
                self._normal(t)
            else:
                getattr(self, f"_episode_{scenario}")(t, self._customer())

    # -- internals --------------------------------------------------------------------------------
    def _pop(self) -> tuple[str, dict]:
        _, _, kind, event = heapq.heappop(self._heap)
        return kind, event

    def _push(self, t: int, kind: str, event: dict) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, event))

    def _txid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _customer(self) -> Customer:
        x = self.rng.random() * self._activity[-1]
        lo, hi = 0, len(self._activity) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._activity[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return self.pop.customers[lo]

    def _txn(
        self,
        t: int,
        cust: Customer,
        card: str,
        merchant: Merchant,
        amount: float,
        *,
        terminal: Terminal | None,
        channel: str,
        device: str | None,
        ip: str | None,
        ttype: str = "PURCHASE",
        country: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
    ) -> dict:
        present = channel in ("POS", "ATM")
        return {
            "transaction_id": self._txid(),
            "event_time": t,
            "card_id": card,
            "customer_id": cust.customer_id,
            "merchant_id": merchant.merchant_id,
            "merchant_category_code": merchant.mcc.code,
            "terminal_id": terminal.terminal_id if terminal else None,
            "amount": round(max(0.01, amount), 2),
            "currency": cust.currency if merchant.country == cust.country else merchant.currency,
            "channel": channel,
            "card_present": present,
            "country": country or merchant.country,
            "lat": lat if lat is not None else (terminal.lat if terminal else None),
            "lon": lon if lon is not None else (terminal.lon if terminal else None),
            "device_id": None if present else device,
            "ip_hash": None if present else ip,
            "transaction_type": "WITHDRAWAL" if merchant.mcc.code == "6011" else ttype,
        }

    def _amount(self, cust: Customer, merchant: Merchant, factor: float = 1.0) -> float:
        m = merchant.mcc
        return math.exp(self.rng.gauss(m.amount_mu, m.amount_sigma)) * cust.amount_scale * factor

    def _everyday(self, t: int, cust: Customer, card: str | None = None) -> dict:
        rng = self.rng
        card = card or rng.choice(cust.cards)
        if rng.random() < cust.online_share:
            merchant = rng.choice(self.pop.online_merchants)
            channel = "MOBILE" if rng.random() < 0.4 else "ONLINE"
            return self._txn(
                t,
                cust,
                card,
                merchant,
                self._amount(cust, merchant),
                terminal=None,
                channel=channel,
                device=rng.choice(cust.devices),
                ip=cust.ip_hash,
                country=cust.country,
            )
        merchant = rng.choices(cust.merchants, cust.merchant_weights)[0]
        terminal = rng.choice(merchant.terminals)
        channel = "ATM" if merchant.mcc.code == "6011" else "POS"
        return self._txn(
            t,
            cust,
            card,
            merchant,
            self._amount(cust, merchant),
            terminal=terminal,
            channel=channel,
            device=None,
            ip=None,
        )

    def _normal(self, t: int) -> None:
        event = self._everyday(t, self._customer())
        scenario = None
        if self._compromised_terminals.get(event["terminal_id"] or "", 0) >= t:
            scenario = "compromised_terminal"
        elif self._compromised_merchants.get(event["merchant_id"], 0) >= t:
            scenario = "compromised_merchant"
            event["amount"] = round(event["amount"] * self.rng.uniform(1.5, 4.0), 2)
        self._emit(t, event, scenario)

    def _emit(self, t: int, event: dict, scenario: str | None) -> None:
        self._push(t, "transaction", event)
        if scenario is not None:
            delay = max(HOUR_MS, int(self.rng.lognormvariate(math.log(self.cfg.label_delay_days * DAY_MS), 0.5)))
            source = "chargeback" if self.rng.random() < 0.7 else "confirmed"
            self._push(t + delay, "label", self._label(event, "fraud", t + delay, scenario, source))
        elif self.rng.random() < self.cfg.genuine_label_share:
            delay = max(HOUR_MS, int(self.rng.uniform(0.5, 2.0) * self.cfg.label_delay_days * DAY_MS))
            self._push(t + delay, "label", self._label(event, "genuine", t + delay, None, "confirmed"))

    @staticmethod
    def _label(event: dict, label: str, reported_at: int, scenario: str | None, source: str) -> dict:
        return {
            "transaction_id": event["transaction_id"],
            "card_id": event["card_id"],
            "label": label,
            "reported_at": reported_at,
            "scenario": scenario,
            "source": source,
        }

    def _fraudster(self) -> tuple[str, str]:
        return f"D{self._txid().replace('-', '')[:15]}", self._txid().replace("-", "")[:24]

    def _episode_velocity_burst(self, t: int, cust: Customer) -> None:
        card, (device, ip) = self.rng.choice(cust.cards), self._fraudster()
        for _ in range(self.rng.randint(8, 14)):
            t += self.rng.randint(5_000, 50_000)
            merchant = self.rng.choice(self.pop.online_merchants)
            self._emit(
                t,
                self._txn(
                    t,
                    cust,
                    card,
                    merchant,
                    self._amount(cust, merchant, 2.0),
                    terminal=None,
                    channel="ONLINE",
                    device=device,
                    ip=ip,
                    country=cust.country,
                ),
                "velocity_burst",
            )

    def _episode_card_testing(self, t: int, cust: Customer) -> None:
        card, (device, ip) = self.rng.choice(cust.cards), self._fraudster()
        merchant = self.rng.choice(
            [m for m in self.pop.online_merchants if m.mcc.code in ("5815", "5967")] or self.pop.online_merchants
        )
        for _ in range(self.rng.randint(12, 22)):
            t += self.rng.randint(2_000, 20_000)
            self._emit(
                t,
                self._txn(
                    t,
                    cust,
                    card,
                    merchant,
                    self.rng.uniform(0.5, 3.0),
                    terminal=None,
                    channel="ONLINE",
                    device=device,
                    ip=ip,
                    country=cust.country,
                ),
                "card_testing",
            )
        t += self.rng.randint(60_000, 600_000)
        big = self.rng.choice(self.pop.online_merchants)
        self._emit(
            t,
            self._txn(
                t,
                cust,
                card,
                big,
                self.rng.uniform(300, 2000),
                terminal=None,
                channel="ONLINE",
                device=device,
                ip=ip,
                country=cust.country,
            ),
            "card_testing",
        )

    def _episode_impossible_travel(self, t: int, cust: Customer) -> None:
        card = self.rng.choice(cust.cards)
        self._emit(t, self._everyday(t, cust, card), None)  # the genuine one, at home
        merchant = self.rng.choice(self.pop.foreign_merchants)
        terminal = self.rng.choice(merchant.terminals)
        for _ in range(self.rng.randint(1, 3)):
            t += self.rng.randint(10 * MIN_MS, 90 * MIN_MS)
            channel = "ATM" if merchant.mcc.code == "6011" else "POS"
            self._emit(
                t,
                self._txn(
                    t,
                    cust,
                    card,
                    merchant,
                    self._amount(cust, merchant, 3.0),
                    terminal=terminal,
                    channel=channel,
                    device=None,
                    ip=None,
                ),
                "impossible_travel",
            )

    def _episode_account_takeover(self, t: int, cust: Customer) -> None:
        card, (device, ip) = self.rng.choice(cust.cards), self._fraudster()
        transfer = [m for m in self.pop.online_merchants if m.mcc.code == "4829"] or self.pop.online_merchants
        for _ in range(self.rng.randint(1, 3)):
            t += self.rng.randint(MIN_MS, 30 * MIN_MS)
            merchant = self.rng.choice(transfer)
            amount = self._amount(cust, merchant, 1.0) * self.rng.uniform(5, 20)
            self._emit(
                t,
                self._txn(
                    t,
                    cust,
                    card,
                    merchant,
                    amount,
                    terminal=None,
                    channel="MOBILE",
                    device=device,
                    ip=ip,
                    ttype="TRANSFER",
                    country=cust.country,
                ),
                "account_takeover",
            )

    def _episode_amount_spike(self, t: int, cust: Customer) -> None:
        event = self._everyday(t, cust)
        spike = self.rng.uniform(8, 30)
        luxury = [m for m in cust.merchants if m.mcc.code in ("5732", "5944", "5311", "5691")]
        if luxury and event["card_present"]:
            merchant = self.rng.choice(luxury)
            event.update(merchant_id=merchant.merchant_id, merchant_category_code=merchant.mcc.code)
        event["amount"] = round(max(200.0, event["amount"] * spike), 2)
        self._emit(t, event, "amount_spike")

    def _episode_compromised_terminal(self, t: int, cust: Customer) -> None:
        merchant = self.rng.choice(cust.merchants)
        terminal = self.rng.choice(merchant.terminals)
        self._compromised_terminals[terminal.terminal_id] = t + int(self.cfg.compromise_days * DAY_MS)
        self._emit(
            t,
            self._txn(
                t,
                cust,
                self.rng.choice(cust.cards),
                merchant,
                self._amount(cust, merchant),
                terminal=terminal,
                channel="POS",
                device=None,
                ip=None,
            ),
            "compromised_terminal",
        )

    def _episode_compromised_merchant(self, t: int, cust: Customer) -> None:
        merchant = self.rng.choice(self.pop.online_merchants)
        self._compromised_merchants[merchant.merchant_id] = t + int(self.cfg.compromise_days * DAY_MS)
        self._emit(
            t,
            self._txn(
                t,
                cust,
                self.rng.choice(cust.cards),
                merchant,
                self._amount(cust, merchant, 2.5),
                terminal=None,
                channel="ONLINE",
                device=self.rng.choice(cust.devices),
                ip=cust.ip_hash,
                country=cust.country,
            ),
            "compromised_merchant",
        )
