"""The notebooks (``notebooks/*.ipynb``) executed with nbclient against the scored test lake (``decided``): the
kernel is this interpreter, its environment the lake's, every cell runs within ``CELL_TIMEOUT`` without an error,
and the figures the notebooks print are the tables' and the registry's. The saved notebooks carry their outputs."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from lakehouse import delta
from training import registry

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_gold_tables.ipynb", "02_time_travel_audit.ipynb", "03_train_and_compare.ipynb"]
CELL_TIMEOUT = 120  # seconds per cell; the three notebooks take well under a minute each


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> Path:
    """A kernel spec directory whose ``python3`` is this interpreter (the venv's), whatever else is installed."""
    spec = tmp_path_factory.mktemp("kernels") / "python3"
    spec.mkdir()
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3", "language": "python"}))
    return spec.parent


def execute(name: str, env: dict, kernels: Path) -> nbformat.NotebookNode:
    """Run every cell of ``notebooks/<name>`` in a kernel with ``env`` (fails on the first cell that raises)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env=env)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    return nb


def text(nb: nbformat.NotebookNode) -> str:
    """Everything the code cells printed or returned as text."""
    parts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            parts.append(o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def printed(pattern: str, output: str) -> re.Match:
    found = re.search(pattern, output)
    assert found, f"{pattern!r} not in the notebook's output:\n{output[-3000:]}"
    return found


def row(settings, uri: str, tx: str, version: int | None = None, columns: tuple[str, ...] = ("label",)) -> dict:
    """A transaction's ``columns`` in a table (at ``version``), matched here: the test lake is small, and some data
    files hold strings as ``string_view``, which a plain filter does not match."""
    table = delta.read_arrow(settings, uri, version, columns=["transaction_id", *columns]).to_pylist()
    [found] = [r for r in table if r["transaction_id"] == tx]
    return found


def test_the_saved_notebooks_are_executed():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code and all(c.execution_count for c in code), name
        assert not [o for c in code for o in c.outputs if o.output_type == "error"], name
        assert len(re.findall(r"^#+ ", "\n".join(c.source for c in nb.cells if c.cell_type == "markdown"), re.M)) >= 4


def test_gold_tables(decided, kernels):
    settings, env, _, _ = decided
    nb = execute(NAMES[0], env, kernels)
    output = text(nb)
    uri = settings.table_uri("gold", "decisions")
    dates = sorted({date.fromisoformat(p["event_date"]) for p in delta.open_table(settings, uri).partitions()})[-7:]
    decisions = delta.read_arrow(settings, uri, columns=["decision"],
                                 filters=[("event_date", ">=", dates[0]), ("event_date", "<=", dates[-1])])  # fmt: skip
    counts = Counter(decisions.column("decision").to_pylist())
    assert len(decisions) > 100
    shown = json.loads(printed(r"decisions by outcome: (\{.*\})", output).group(1))
    assert shown == {d: counts.get(d, 0) for d in ("approve", "review", "block")}
    assert f"reading {dates[0]}..{dates[-1]}" in output
    assert images(nb) == 1


def test_time_travel_audit(decided, kernels):
    settings, env, _, _ = decided
    output = text(execute(NAMES[1], env, kernels))
    found = printed(r"transaction (\S+): label '(\w+)' merged in silver version (\d+)", output)
    tx, label, version = found.group(1), found.group(2), int(found.group(3))
    silver = settings.table_uri("silver", "transactions")
    assert row(settings, silver, tx, version - 1)["label"] is None
    assert row(settings, silver, tx, version)["label"] == label
    assert f"label then: None; label now: {row(settings, silver, tx)['label']}" in output
    decision = row(settings, settings.table_uri("gold", "decisions"), tx, columns=("model_name", "model_version"))
    model = decision["model_name"] and f"{decision['model_name']} v{decision['model_version']}"
    assert (model or "(no model: rules and statistics)") in output


def test_train_and_compare(decided, kernels):
    settings, env, summary, _ = decided
    nb = execute(NAMES[2], env, kernels)
    output = text(nb)
    pr_auc = json.loads(printed(r"PR-AUC: (\{.*\})", output).group(1))
    mc = registry.client(settings)
    # each champion on its own test period: the rows and model it was registered with, so its registered figure
    for name in (settings.models.supervised_name, settings.models.unsupervised_name):
        version = registry.alias_version(mc, name, registry.CHAMPION)
        registered = float(mc.get_model_version(name, version).tags["test_average_precision"])  # 4 decimals
        assert pr_auc[f"{name} v{version}"] == pytest.approx(registered, abs=5e-5), name
    assert 0 < pr_auc["candidate (not registered)"] <= 1
    periods = summary["periods"]
    assert f"period {periods.test_start}..{periods.test_end}: " in output
    assert images(nb) == 1
