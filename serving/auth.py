"""Bearer-token authentication with scopes (``score``, ``read``, ``audit``) and a per-token rate limit.

Tokens come from ``api.tokens`` (configuration or ``LAKEHOUSE__API__TOKENS``). A presented token is compared
with every configured one in constant time (``hmac.compare_digest`` on all of them, so the time taken does not
say which one nearly matched). No or an unknown token: 401 with ``WWW-Authenticate: Bearer``; a known token
without the endpoint's scope: 403. The rate limit is a token bucket per token name (``rate_limit_per_s``,
``rate_limit_burst``); an empty bucket answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import hmac
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, status

from lakehouse.config import ApiSettings


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; ``take`` says whether a request may go, else how long to wait."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self.level, self.at = float(burst), time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 if allowed (a token is taken), else the seconds until one is available."""
        with self.lock:
            now = time.monotonic()
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
            self.at = now
            if self.level >= 1:
                self.level -= 1
                return 0.0
            return (1 - self.level) / self.rate


class Authenticator:
    def __init__(self, cfg: ApiSettings):
        self.tokens = [
            (name, t.token.get_secret_value().encode(), frozenset(t.scopes)) for name, t in cfg.tokens.items()
        ]
        self.buckets = (
            {name: TokenBucket(cfg.rate_limit_per_s, cfg.rate_limit_burst) for name in cfg.tokens}
            if cfg.rate_limit_per_s > 0
            else {}
        )
        self.failures = 0  # refused requests (401 and 403), for the metrics

    def identify(self, header: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer <token>`` header; 401 if there is none or it is unknown."""
        scheme, _, presented = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            self._refuse(status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer <token>'")
        given = presented.strip().encode()
        found = None
        for name, token, scopes in self.tokens:  # every token compared, constant time each
            if hmac.compare_digest(given, token) and found is None:
                found = Principal(name, scopes)
        if found is None:
            self._refuse(status.HTTP_401_UNAUTHORIZED, "invalid bearer token")
        return found

    def authorize(self, request: Request, scope: str) -> Principal:
        principal = self.identify(request.headers.get("authorization"))
        if scope not in principal.scopes:
            self._refuse(
                status.HTTP_403_FORBIDDEN,
                f"token '{principal.name}' lacks the '{scope}' scope (it has: {', '.join(sorted(principal.scopes))})",
            )
        bucket = self.buckets.get(principal.name)
        if bucket is not None and (wait := bucket.take()) > 0:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                f"rate limit of token '{principal.name}' exceeded",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        request.state.principal = principal
        return principal

    def _refuse(self, code: int, detail: str) -> None:
        self.failures += 1
        headers = {"WWW-Authenticate": "Bearer"} if code == status.HTTP_401_UNAUTHORIZED else None
        raise HTTPException(code, detail, headers=headers)
