"""A small purchases-only order table (an order export, as a retailer has one) for
the `pipeline.py fit` tests: the generator's purchases of `customers` customers,
written in the events contract without the behavioural events."""
from pathlib import Path

import pandas as pd

import features as F
import generate as G

CUTOFF = "2025-01-01"


def orders_csv(directory: Path, customers: int = 1200, seed: int = 5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    G.generate(directory / "events.parquet", directory / "customers.csv", customers=customers, seed=seed)
    ev = F.purchases_only(F.read_events(directory / "events.parquet"))
    out = directory / "orders.csv"
    pd.DataFrame({
        "customer_id": ev["customer_id"],
        "timestamp": pd.to_datetime(ev["ts"], unit="us", utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "event": "purchase",
        "amount": ev["amount"],
    }).to_csv(out, index=False)
    return out
