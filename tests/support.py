"""Helpers shared by the test modules: running the project's CLIs as real processes, comparing feature values."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime

from tools.stack.process import free_port  # noqa: F401 - re-exported for the tests

# the shared feature lake (conftest ``feature_lake``): two days of generated traffic from this instant
FEATURE_LAKE_START = datetime(2026, 3, 2, tzinfo=UTC)
FEATURE_LAKE_DAYS = 2


def _process(env: dict, args: tuple[str, ...], timeout: int) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:  # a Spark failure's message is far above its plan: show the error lines first
        errors = [line for line in done.stderr.splitlines() if "Error" in line or "Exception" in line][:15]
        raise AssertionError("\n".join([f"exit {done.returncode}:", *errors, "...", done.stderr[-3000:]]))
    return done


def run(env: dict, *args: str, timeout: int = 900) -> str:
    """``python *args`` in ``env``; fails the test unless it exits 0. Returns its stderr (the progress lines)."""
    return _process(env, args, timeout).stderr


def run_json(env: dict, *args: str, timeout: int = 900) -> dict:
    """Like ``run``, for a CLI that prints one JSON document: returns it."""
    return json.loads(_process(env, args, timeout).stdout)


def same(a: object, b: object) -> bool:
    """Two feature values agree: both null, the same boolean, or numbers equal to a relative 1e-9."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
