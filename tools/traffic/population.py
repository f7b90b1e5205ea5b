"""A synthetic population: customers with homes and habits, cards, devices, merchants by MCC, terminals."""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

# (city, country, currency, lat, lon); the first block is the bank's home market
HOME_CITIES = [
    ("Paris", "FR", "EUR", 48.857, 2.352),
    ("Lyon", "FR", "EUR", 45.764, 4.836),
    ("Berlin", "DE", "EUR", 52.520, 13.405),
    ("Munich", "DE", "EUR", 48.135, 11.582),
    ("Madrid", "ES", "EUR", 40.417, -3.704),
    ("Barcelona", "ES", "EUR", 41.385, 2.173),
    ("Milan", "IT", "EUR", 45.464, 9.190),
    ("Rome", "IT", "EUR", 41.903, 12.496),
    ("Amsterdam", "NL", "EUR", 52.368, 4.904),
    ("Brussels", "BE", "EUR", 50.850, 4.352),
]
FOREIGN_CITIES = [
    ("Lagos", "NG", "NGN", 6.524, 3.379),
    ("Sao Paulo", "BR", "BRL", -23.551, -46.633),
    ("Bangkok", "TH", "THB", 13.756, 100.502),
    ("Jakarta", "ID", "IDR", -6.208, 106.846),
    ("Mexico City", "MX", "MXN", 19.433, -99.133),
    ("New York", "US", "USD", 40.713, -74.006),
    ("Manila", "PH", "PHP", 14.600, 120.984),
    ("Bucharest", "RO", "RON", 44.427, 26.103),
]


@dataclass(frozen=True)
class Mcc:
    code: str
    name: str
    amount_mu: float  # log-scale mean amount
    amount_sigma: float
    online: bool  # card-not-present merchants
    weight: float  # share of everyday spending


MCCS = [
    Mcc("5411", "grocery", math.log(35), 0.7, False, 0.24),
    Mcc("5812", "restaurants", math.log(28), 0.6, False, 0.14),
    Mcc("5541", "fuel", math.log(55), 0.4, False, 0.09),
    Mcc("5912", "pharmacy", math.log(20), 0.6, False, 0.05),
    Mcc("5691", "clothing", math.log(70), 0.7, False, 0.06),
    Mcc("5311", "department stores", math.log(60), 0.8, False, 0.05),
    Mcc("4121", "taxis", math.log(18), 0.5, False, 0.04),
    Mcc("6011", "atm cash", math.log(80), 0.6, False, 0.05),
    Mcc("5732", "electronics", math.log(150), 0.9, False, 0.02),
    Mcc("5944", "jewelry", math.log(250), 0.9, False, 0.005),
    Mcc("5815", "digital goods", math.log(12), 0.8, True, 0.07),
    Mcc("5967", "direct marketing", math.log(25), 0.8, True, 0.02),
    Mcc("5999", "online retail", math.log(45), 0.9, True, 0.10),
    Mcc("4511", "airlines", math.log(280), 0.6, True, 0.01),
    Mcc("7011", "hotels", math.log(180), 0.6, True, 0.015),
    Mcc("4829", "money transfer", math.log(150), 1.0, True, 0.01),
    Mcc("7995", "gambling", math.log(40), 1.0, True, 0.005),
]
MCC_BY_CODE = {m.code: m for m in MCCS}


def hash_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


@dataclass
class Terminal:
    terminal_id: str
    lat: float
    lon: float


@dataclass
class Merchant:
    merchant_id: str
    mcc: Mcc
    country: str
    currency: str
    lat: float
    lon: float
    terminals: list[Terminal]


@dataclass
class Customer:
    customer_id: str
    country: str
    currency: str
    lat: float
    lon: float
    cards: list[str]
    devices: list[str]
    ip_hash: str
    amount_scale: float  # multiplies the MCC's typical amount
    activity: float  # relative transaction rate
    peak_hour: float  # local hour of peak activity
    online_share: float
    merchants: list[Merchant] = field(default_factory=list)
    merchant_weights: list[float] = field(default_factory=list)


@dataclass
class Population:
    customers: list[Customer]
    merchants: list[Merchant]
    foreign_merchants: list[Merchant]
    online_merchants: list[Merchant]

    @property
    def terminals(self) -> list[tuple[Merchant, Terminal]]:
        return [(m, t) for m in self.merchants for t in m.terminals]


def _jitter(rng: random.Random, lat: float, lon: float, km: float) -> tuple[float, float]:
    return (
        round(lat + rng.gauss(0, km / 111), 5),
        round(lon + rng.gauss(0, km / 111 / max(0.2, math.cos(math.radians(lat)))), 5),
    )


def _merchant(rng: random.Random, idx: int, city: tuple, mcc: Mcc, seed: int) -> Merchant:
    _, country, currency, lat, lon = city
    mlat, mlon = _jitter(rng, lat, lon, 8)
    terminals = []
    if not mcc.online:
        for t in range(rng.randint(1, 4)):
            tlat, tlon = _jitter(rng, mlat, mlon, 0.3)
            terminals.append(Terminal(f"T{hash_id(seed, 'terminal', idx, t)[:12]}", tlat, tlon))
    return Merchant(f"M{hash_id(seed, 'merchant', idx)[:12]}", mcc, country, currency, mlat, mlon, terminals)


def build_population(seed: int, customers: int = 5000, merchants: int | None = None) -> Population:
    """A deterministic population for ``seed``."""
    rng = random.Random(seed)
    n_merchants = merchants or max(60, customers // 8)
    weights = [m.weight for m in MCCS]
    local: list[Merchant] = []
    online: list[Merchant] = []
    for i in range(n_merchants):
        mcc = rng.choices(MCCS, weights)[0]
        merchant = _merchant(rng, i, rng.choice(HOME_CITIES), mcc, seed)
        (online if mcc.online else local).append(merchant)
    foreign = [
        _merchant(rng, n_merchants + i, city, rng.choice([m for m in MCCS if not m.online]), seed)
        for i, city in enumerate(FOREIGN_CITIES * 4)
    ]
    by_city: dict[str, list[Merchant]] = {}
    for m in local:
        by_city.setdefault(m.country, []).append(m)
    people = []
    for c in range(customers):
        city = rng.choice(HOME_CITIES)
        lat, lon = _jitter(rng, city[3], city[4], 6)
        cust = Customer(
            customer_id=f"C{hash_id(seed, 'customer', c)[:12]}",
            country=city[1],
            currency=city[2],
            lat=lat,
            lon=lon,
            cards=[hash_id(seed, "card", c, k) for k in range(1 if rng.random() < 0.8 else 2)],
            devices=[f"D{hash_id(seed, 'device', c, k)[:15]}" for k in range(rng.randint(1, 2))],
            ip_hash=hash_id(seed, "ip", c)[:24],
            amount_scale=math.exp(rng.gauss(0, 0.45)),
            activity=rng.lognormvariate(0, 0.6),
            peak_hour=rng.gauss(14, 3),
            online_share=min(0.9, max(0.02, rng.betavariate(2, 5))),
        )
        nearby = by_city.get(cust.country) or local
        cust.merchants = rng.sample(nearby, min(len(nearby), rng.randint(8, 25)))
        cust.merchant_weights = [rng.paretovariate(1.5) * m.mcc.weight for m in cust.merchants]
        people.append(cust)
    return Population(people, local, foreign, online)


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, a)))
