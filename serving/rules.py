"""Tier 1 of the decision: deterministic rules from ``conf/rules.yaml``, each with an id and a reason code.

``RuleSet.parse`` validates the file (unknown kinds or operators, duplicate ids and missing fields are errors
naming the rule); ``RuleSet.evaluate`` returns the rules a transaction (its fields and features) triggers.
``RuleBook`` follows the file: it re-reads it when it changes, at most every ``reload_seconds``, and keeps the
last good rules when a new version does not parse.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

log = logging.getLogger(__name__)

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne}
KINDS = ("threshold", "in_list", "prefix", "amount_limit")
Action = Literal["block", "review"]


@dataclass(frozen=True)
class Hit:
    rule_id: str
    reason: str
    action: Action
    score: float


@dataclass(frozen=True)
class Rule:
    id: str
    reason: str
    kind: str
    action: Action
    score: float
    field: str | None = None
    op: str | None = None
    value: Any = None
    values: frozenset = dataclasses.field(default_factory=frozenset)
    prefixes: tuple[str, ...] = ()
    limits: dict[str, float] = dataclasses.field(default_factory=dict)

    def fires(self, event: dict) -> bool:
        """Whether the rule triggers on ``event``; a missing (null) field never triggers it."""
        if self.kind == "amount_limit":
            limit = self.limits.get(str(event.get("merchant_category_code")), self.limits.get("*"))
            return limit is not None and event.get("amount") is not None and event["amount"] > limit
        v = event.get(self.field)
        if v is None:
            return False
        if self.kind == "threshold":
            try:
                return bool(OPS[self.op](v, self.value))
            except TypeError:  # a field of the wrong type (e.g. text against a number) does not fire
                return False
        if self.kind == "in_list":
            return v in self.values
        return str(v).startswith(self.prefixes)


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _rule(raw: dict, n: int) -> Rule:
    if not isinstance(raw, dict):
        raise ValueError(f"rule #{n} ({raw}) is not a mapping")
    where = f"rule #{n} ({raw.get('id', 'no id')})"
    missing = [k for k in ("id", "reason", "kind", "action", "score") if k not in raw]
    if missing:
        raise ValueError(f"{where}: missing {missing}")
    kind, action, score = raw["kind"], raw["action"], raw["score"]
    if kind not in KINDS:
        raise ValueError(f"{where}: kind {kind!r} is not one of {KINDS}")
    if action not in ("block", "review"):
        raise ValueError(f"{where}: action {action!r} is not block or review")
    if not _number(score) or not 0 <= score <= 100:
        raise ValueError(f"{where}: score {score!r} is not a number in 0..100")
    needs = {"threshold": ("field", "op", "value"), "in_list": ("field", "values"), "prefix": ("field", "prefixes"),
             "amount_limit": ("limits",)}[kind]  # fmt: skip
    if missing := [k for k in needs if k not in raw]:
        raise ValueError(f"{where}: a {kind} rule needs {missing}")
    if kind == "threshold":
        if not isinstance(raw["op"], str) or raw["op"] not in OPS:
            raise ValueError(f"{where}: op {raw['op']!r} is not one of {list(OPS)}")
        if raw["op"] not in ("==", "!=") and not _number(raw["value"]):
            raise ValueError(f"{where}: {raw['op']} needs a number, not {raw['value']!r}")
    for key in ("values", "prefixes"):
        if key in raw and not isinstance(raw[key], list):
            raise ValueError(f"{where}: {key} must be a list")
    limits = raw.get("limits") or {}
    if not isinstance(limits, dict) or not all(_number(v) for v in limits.values()):
        raise ValueError(f"{where}: limits must map MCCs (or *) to numbers")
    return Rule(
        id=str(raw["id"]),
        reason=str(raw["reason"]),
        kind=kind,
        action=action,
        score=float(score),
        field=raw.get("field"),
        op=raw.get("op"),
        value=raw.get("value"),
        values=frozenset(raw.get("values") or ()),
        prefixes=tuple(str(p) for p in raw.get("prefixes") or ()),
        limits={str(k): float(v) for k, v in limits.items()},
    )


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]
    version: str = ""

    @classmethod
    def parse(cls, text: str, version: str = "") -> RuleSet:
        doc = yaml.safe_load(text) or {}
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
            raise ValueError("a rules file is a mapping with a list under `rules`")
        rules = tuple(_rule(r, n) for n, r in enumerate(doc["rules"], 1))
        ids = [r.id for r in rules]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"duplicate rule ids: {dupes}")
        return cls(rules, version)

    def evaluate(self, event: dict) -> list[Hit]:
        """The rules ``event`` (transaction fields and feature values) triggers, in file order."""
        return [Hit(r.id, r.reason, r.action, r.score) for r in self.rules if r.fires(event)]


class RuleBook:
    """The rules of a file, re-read when it changes (checked at most every ``reload_seconds``)."""

    def __init__(self, path: Path, reload_seconds: float = 5.0):
        self.path, self.reload_seconds = Path(path), reload_seconds
        self.errors = 0  # reloads that failed (the last good rules stayed)
        self._stamp = self._file_stamp()
        self._rules = RuleSet.parse(self.path.read_text(), self._version())
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int]:
        st = self.path.stat()
        return st.st_mtime_ns, st.st_size

    def _version(self) -> str:
        return f"{self.path.name}@{self._stamp[0]}"

    @property
    def current(self) -> RuleSet:
        now = time.monotonic()
        if now - self._checked >= self.reload_seconds:
            self._checked = now
            self.reload()
        return self._rules

    def reload(self) -> bool:
        """Re-read the file if it changed; True if new rules are in force."""
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return False
            self._stamp = stamp
            self._rules = RuleSet.parse(self.path.read_text(), self._version())
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
            self.errors += 1
            log.error("rules file %s not reloaded (keeping %s): %s", self.path, self._rules.version, exc)
            return False
        log.info("rules reloaded from %s: %d rules", self.path, len(self._rules.rules))
        return True
