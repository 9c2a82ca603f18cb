"""Throughput of the line-level daily-file reader (bad lines quarantined) next to pandas' C reader (all or nothing).

Run: ``.venv/bin/python benchmarks/event_reader.py [--lines 100000]``; prints lines/s for a clean file, a file
with quoted fields (the per-line ``csv`` path) and pandas ``read_csv`` on the same clean file.
"""

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from recsys_pipeline.data.sources import _read_event_lines


def timed(fn, path: Path) -> float:
    started = time.perf_counter()
    fn(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=100_000)
    n = parser.parse_args().lines
    with tempfile.TemporaryDirectory() as tmp:
        clean, quoted = Path(tmp) / "clean.csv", Path(tmp) / "quoted.csv"
        rows = [f"u{i % 600},{i % 9000},2018-09-24T{i % 24:02d}:00:00Z,{i % 5}" for i in range(n)]
        clean.write_text("user_id,item_id,timestamp,value\n" + "\n".join(rows) + "\n")
        quoted.write_text(
            "user_id,item_id,timestamp,value\n" + "\n".join(f'"{r}'.replace(",", '",', 1) for r in rows) + "\n"
        )
        for label, fn, path in (
            ("line-level reader, clean file", _read_event_lines, clean),
            ("line-level reader, quoted fields", _read_event_lines, quoted),
            ("pandas read_csv (C engine), clean file", lambda p: pd.read_csv(p, dtype=str), clean),
        ):
            seconds = timed(fn, path)
            print(f"{label:<42} {n:>9,} lines {seconds:6.2f} s {n / seconds:>12,.0f} lines/s")


if __name__ == "__main__":
    main()
