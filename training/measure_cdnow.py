#!/usr/bin/env python3
"""Measures `pipeline.py fit` on real data it has never seen: the CDNOW order
table (23,570 customers of an online CD retailer, their purchases from January
1997 to June 1998), which the pinned `lifetimes` wheel ships as
lifetimes/datasets/CDNOW_master.txt. Nothing is downloaded and the data is not
copied into the repository: it is converted to the events contract in a
temporary directory (or --workdir) and evaluated with `fit --report`.

    .venv/bin/python training/measure_cdnow.py --report target/cdnow-report

The cutoff 1997-07-01 is the latest that leaves the 365-day LTV window inside
the data. Prints the report table; report.json has every figure.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fit as FIT  # noqa: E402

CUTOFF = "1997-07-01"


def cdnow_master() -> Path:
    import lifetimes.datasets as D

    path = Path(D.__file__).resolve().parent / "CDNOW_master.txt"
    if not path.is_file():
        raise SystemExit(f"{path}: not found; is lifetimes==0.11.3 (training/requirements.txt) installed?")
    return path


def to_events(master: Path, out: Path) -> int:
    """CDNOW_master.txt (customer id, yyyymmdd, CDs, dollars) -> events CSV."""
    df = pd.read_csv(master, sep=r"\s+", skiprows=1, header=None,
                     names=["customer_id", "date", "cds", "amount"], dtype={"customer_id": str, "date": str})
    events = pd.DataFrame({
        "customer_id": df["customer_id"],
        "timestamp": pd.to_datetime(df["date"], format="%Y%m%d").dt.strftime("%Y-%m-%d"),
        "event": "purchase",
        "amount": df["amount"],
    })
    events.to_csv(out, index=False)
    return len(events)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--report", required=True, help="directory for report.json and report.md")
    ap.add_argument("--workdir", help="where the converted events go (default: a temporary directory)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--snapshot-days", type=int, default=28)
    ap.add_argument("--backtest", type=int, default=3, help="cutoffs evaluated (default 3: 1997-07-01 and two earlier)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        events = work / "cdnow_events.csv"
        to_events(cdnow_master(), events)
        FIT.fit(events=events, cutoff=CUTOFF, repository=None, report_dir=args.report, seed=args.seed,
                snapshots=args.snapshots, snapshot_days=args.snapshot_days,
                backtest=args.backtest)
    print((Path(args.report) / "report.md").read_text())


if __name__ == "__main__":
    main()
