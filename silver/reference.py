"""Reference data (MCCs, countries, merchants, terminals, devices): seeds in ``conf/reference/*.csv``, tables in silver.

``python -m silver.reference load`` upserts the seeds into ``silver.ref_<name>`` (MERGE on the key, so an edited
seed updates rows in place and Delta keeps the earlier versions); the silver stream re-reads a reference table
whenever its version changes, so updates apply without a restart. ``seed`` regenerates the merchant, terminal
and device seeds from the synthetic population of the traffic settings.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from lakehouse import PROJECT_ROOT, delta
from lakehouse.catalog import REFERENCE_TABLES
from lakehouse.config import Settings, get_settings
from lakehouse.tables import TS, TableSpec, ensure

SEED_DIR = PROJECT_ROOT / "conf" / "reference"


@dataclass(frozen=True)
class Reference:
    """A reference table of the catalog and its seed."""

    spec: TableSpec

    @property
    def name(self) -> str:
        return self.spec.name.removeprefix("ref_")

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def columns(self) -> tuple[tuple[str, pa.DataType], ...]:
        """The seed's columns (the table's, without ``updated_at``)."""
        return tuple((f.name, f.type) for f in self.spec.schema if f.name != "updated_at")


REFERENCES = {name: Reference(spec) for name, spec in REFERENCE_TABLES.items()}

HIGH_RISK_MCC = {"4829", "7995", "5967", "6051", "5944"}
MEDIUM_RISK_MCC = {"5732", "5815", "5999", "4511", "7011", "6011"}
HIGH_RISK_COUNTRIES = {"NG", "PH"}
COUNTRIES = {  # country -> (name, region)
    "FR": ("France", "EU"), "DE": ("Germany", "EU"), "ES": ("Spain", "EU"), "IT": ("Italy", "EU"),
    "NL": ("Netherlands", "EU"), "BE": ("Belgium", "EU"), "RO": ("Romania", "EU"), "NG": ("Nigeria", "Africa"),
    "BR": ("Brazil", "Americas"), "TH": ("Thailand", "Asia"), "ID": ("Indonesia", "Asia"),
    "MX": ("Mexico", "Americas"), "US": ("United States", "Americas"), "PH": ("Philippines", "Asia"),
}  # fmt: skip


def read_seed(ref: Reference, seed_dir: Path = SEED_DIR) -> pa.Table:
    """A seed CSV as an Arrow table of the reference's schema (plus ``updated_at`` = now)."""
    path = seed_dir / f"{ref.name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"reference seed {path} is missing (run `python -m silver.reference seed`)")
    types = dict(ref.columns)
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True))
    missing = set(types) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    table = table.select([name for name, _ in ref.columns])
    now = pa.array([datetime.now(UTC)] * table.num_rows, TS)
    return table.append_column("updated_at", now)


def load(settings: Settings, names: list[str] | None = None, seed_dir: Path = SEED_DIR) -> dict[str, dict]:
    """Upsert each seed into its ``silver.ref_*`` table; returns the MERGE metrics per reference."""
    report = {}
    for name in names or list(REFERENCES):
        ref = REFERENCES[name]
        uri = ensure(settings, ref.spec)
        seed = read_seed(ref, seed_dir)
        cols = [c for c, _ in ref.columns if c != ref.key]
        changed = " OR ".join(f"NOT (t.{c} <=> s.{c})" for c in cols)
        report[name] = (
            delta.open_table(settings, uri)
            .merge(seed, f"t.{ref.key} = s.{ref.key}", source_alias="s", target_alias="t")
            .when_matched_update_all(predicate=changed)
            .when_not_matched_insert_all()
            .execute()
        )
    return report


def write_seeds(settings: Settings, seed_dir: Path = SEED_DIR) -> None:
    """Regenerate the seed CSVs from the synthetic population (deterministic for the traffic seed): a tool's
    command, so the traffic tool is imported here only."""
    from tools.traffic.population import FOREIGN_CITIES, HOME_CITIES, MCCS, build_population

    seed_dir.mkdir(parents=True, exist_ok=True)
    pop = build_population(settings.traffic.seed, settings.traffic.customers)
    cities = {c[1]: c for c in HOME_CITIES + FOREIGN_CITIES}
    rows = {
        "mcc": [
            (
                m.code,
                m.name,
                "high" if m.code in HIGH_RISK_MCC else "medium" if m.code in MEDIUM_RISK_MCC else "low",
                m.online,
            )
            for m in MCCS
        ],
        "countries": [
            (cc, *COUNTRIES[cc], city[2], "high" if cc in HIGH_RISK_COUNTRIES else "standard")
            for cc, city in sorted(cities.items())
        ],
        "merchants": [
            (m.merchant_id, m.country, m.lat, m.lon)
            for m in pop.merchants + pop.foreign_merchants + pop.online_merchants
        ],
        "terminals": [(t.terminal_id, m.merchant_id, t.lat, t.lon) for m, t in pop.terminals],
        "devices": [
            (d, c.customer_id, ("mobile", "desktop", "tablet")[int(d[1:3], 16) % 3])
            for c in pop.customers
            for d in c.devices
        ],
    }
    for name, data in rows.items():
        with open(seed_dir / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([c for c, _ in REFERENCES[name].columns])
            writer.writerows(data)
        print(f"{seed_dir / name}.csv: {len(data)} rows", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m silver.reference", description=__doc__)
    parser.add_argument("command", choices=["load", "seed"])
    parser.add_argument("--only", nargs="*", choices=list(REFERENCES), help="only these references")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.command == "seed":
        write_seeds(settings)
        return 0
    for name, metrics in load(settings, args.only).items():
        print(
            f"silver.ref_{name}: {metrics['num_target_rows_inserted']} inserted, "
            f"{metrics['num_target_rows_updated']} updated",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
