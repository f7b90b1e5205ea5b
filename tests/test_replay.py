"""Replay of external files: mapping, event-time order, delayed labels, clear errors naming row and field."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lakehouse import PROJECT_ROOT
from tools.traffic.replay import Mapping, Replayer, ReplayError, read_table

DATA = Path(__file__).parent / "data" / "small_sparkov.csv"
MAPPING = PROJECT_ROOT / "conf" / "mappings" / "sparkov.yaml"


def replay(frame: pd.DataFrame, **kw):
    return list(Replayer(Mapping.load(MAPPING)).events(frame, **kw))


def test_small_csv_yields_expected_events_in_order():
    events = replay(read_table(DATA))
    assert [k for k, _ in events] == ["transaction"] * 4 + ["label"] * 2
    tx = [e for k, e in events if k == "transaction"]
    assert [e["transaction_id"] for e in tx] == [
        "c81755dbbbea9d5c77f094348a7579be",
        "2da90c7d74bd46a0caf3777415b3ebd3",
        "324cc204407e99f51b0d6ca0055005e7",
        "2159175b9efe66dc301f149d3d5abf8c",
    ]
    first = tx[0]
    assert first["event_time"] == 1371816850_000
    assert first["amount"] == 41.28
    assert first["card_id"] == hashlib.sha256(b"3598215285024754").hexdigest()[:32]
    assert first["merchant_category_code"] == "5999" and first["currency"] == "USD"
    assert first["terminal_id"] is None if "terminal_id" in first else True  # optional fields stay absent/null
    labels = [e for k, e in events if k == "label"]
    assert [lab["transaction_id"] for lab in labels] == [tx[2]["transaction_id"], tx[3]["transaction_id"]]
    assert all(lab["label"] == "fraud" and lab["source"] == "replay" for lab in labels)
    assert labels[0]["reported_at"] == tx[2]["event_time"] + 3 * 86_400_000


def test_parquet_gives_the_same_events(tmp_path):
    frame = read_table(DATA)
    frame.to_parquet(tmp_path / "x.parquet")
    assert replay(read_table(tmp_path / "x.parquet")) == replay(frame)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("amt", "abc", "row 1 (line 3): field 'amount'"),
        ("amt", "-5", "row 1 (line 3): field 'amount'"),
        ("unix_time", "soon", "row 1 (line 3): field 'event_time'"),
        ("unix_time", "nan", "row 1 (line 3): field 'event_time'"),
        ("merchant", "", "row 1 (line 3): field 'merchant_id'"),
    ],
)
def test_bad_rows_name_the_row_and_field(column, value, message):
    frame = read_table(DATA)
    frame.loc[1, column] = value
    with pytest.raises(ReplayError, match=message.replace("(", r"\(").replace(")", r"\)")):
        replay(frame)


def test_skip_mode_reports_bad_rows_and_keeps_the_rest():
    frame = read_table(DATA)
    frame.loc[1, "amt"] = "abc"
    errors: list[str] = []
    events = replay(frame, on_error="skip", errors=errors)
    assert sum(k == "transaction" for k, _ in events) == 3
    assert len(errors) == 1 and "row 1" in errors[0]


def test_missing_column_and_unreadable_files(tmp_path):
    with pytest.raises(ReplayError, match="column 'amt'"):
        replay(read_table(DATA).drop(columns=["amt"]))
    truncated = tmp_path / "t.parquet"
    truncated.write_bytes(b"PAR1" + b"\x00" * 10)
    with pytest.raises(ReplayError, match="cannot be read"):
        read_table(truncated)
    ragged = tmp_path / "r.csv"
    ragged.write_text(DATA.read_text() + "1,2,3,4,5,6,7,8,9,10,11,12,13,14\n")
    with pytest.raises(ReplayError, match="cannot be read"):
        read_table(ragged)
    with pytest.raises(ReplayError, match="no such file"):
        read_table(tmp_path / "none.csv")


def test_cli_writes_events_and_fails_clearly(tmp_path):
    out = tmp_path / "events.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "tools.traffic",
        "replay",
        str(DATA),
        "--mapping",
        str(MAPPING),
        "--out",
        str(out),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["kind"] for line in out.read_text().splitlines()].count("label") == 2
    bad = tmp_path / "bad.csv"
    bad.write_text(DATA.read_text().replace("41.28", "forty"))
    done = subprocess.run([*cmd[:4], str(bad), *cmd[5:]], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "row 2 (line 4): field 'amount'" in done.stderr
