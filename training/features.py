#!/usr/bin/env python3
"""Customer features (and labels) at a cutoff, from raw events.

The one feature builder for everything: training tables, golden sets and the
sample input files are all built here, so names and semantics cannot drift. The
schema (names, order, dtypes, categories, missing-value policy) comes from
``training/features.toml``.

Raw data contract
-----------------
* events (CSV or Parquet): ``customer_id, timestamp, event, amount``.
  ``timestamp`` is ISO 8601 (a zone offset or ``Z``; without one it is taken as
  UTC) or a Parquet timestamp. ``event`` is one of ``purchase, session,
  cart_add, checkout_visit, cart_abandon, email_open``; other event names are
  ignored. ``amount`` is required (>= 0) for purchases and ignored otherwise.
  Row order does not matter. A purchases-only file (an order table) works: the
  behavioural and email features are then missing.
* attributes (optional, CSV or Parquet): ``customer_id, region, signup_date``
  (extra columns are ignored). An empty region is missing; a region outside the
  schema's categories becomes ``"unknown"``.

Time windows (``cutoff`` is an instant; a date means 00:00 UTC that day)
-------------------------------------------------------------------------
* features see events with ``timestamp < cutoff``: ``[.., cutoff)``; an event
  exactly at the cutoff instant belongs to the future (the label window);
* "in the N days before the cutoff" means ``[cutoff - N days, cutoff)``;
* labels use ``[cutoff, cutoff + N days)``: ``churned`` = no purchase in 90
  days, ``ltv_365d`` = spend in 365 days, ``purchase_30d`` = any purchase in 30
  days.

Customers included: those whose signup date is before the cutoff, or who have an
event before it. ``tenure_days`` runs from the signup day (00:00 UTC) or, when
the signup is unknown or later than the first event, from the first event.

Missing values (NaN / <NA> in the output; imputation happens later, see
``impute``): recency_days and monetary_mean when the customer never purchased;
sessions_7d, cart_adds_7d, checkout_visits_7d and cart_abandoned_24h when the
customer has no behavioural event (session, cart_add, checkout_visit,
cart_abandon) before the cutoff; email_engagement when the customer has no
email_open before the cutoff; region when unknown.
"""
from __future__ import annotations

import argparse
import csv
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

SCHEMA_PATH = Path(__file__).resolve().with_name("features.toml")

EVENTS = ("purchase", "session", "cart_add", "checkout_visit", "cart_abandon", "email_open")
BEHAVIOURAL = ("session", "cart_add", "checkout_visit", "cart_abandon")
LABELS = ("churned", "ltv_365d", "purchase_30d")
LABEL_WINDOW_DAYS = {"churned": 90, "ltv_365d": 365, "purchase_30d": 30}
# email_engagement = share of the ~13 weekly campaigns of the last 90 days that were
# opened, as 0-100: min(100, 100 * opens_90d / 13).
EMAILS_PER_90D = 13.0

US_PER_DAY = 86_400_000_000


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Feature:
    name: str
    dtype: str  # f32 | f64 | i64 | bool | category
    categories: tuple[str, ...] = ()
    reject_missing: bool = True
    impute: Any = None
    min: float | None = None
    max: float | None = None
    raw: dict = field(default_factory=dict, compare=False)


def load_schema(path: str | Path | None = None) -> list[Feature]:
    """The feature list of features.toml, in model input order."""
    with open(path or SCHEMA_PATH, "rb") as f:
        doc = tomllib.load(f)
    out = []
    for spec in doc["features"]:
        missing = spec["missing"]
        if missing == "reject":
            reject, impute = True, None
        elif isinstance(missing, dict) and set(missing) == {"impute"}:
            reject, impute = False, missing["impute"]
        else:
            raise ValueError(f"feature {spec['name']}: bad missing policy {missing!r}")
        out.append(
            Feature(
                name=spec["name"],
                dtype=spec["dtype"],
                categories=tuple(spec.get("categories", ())),
                reject_missing=reject,
                impute=impute,
                min=spec.get("min"),
                max=spec.get("max"),
                raw=spec,
            )
        )
    return out


def feature_names(schema: list[Feature] | None = None) -> list[str]:
    return [f.name for f in (schema or load_schema())]


def _pandas_dtype(f: Feature):
    return {
        "f32": "Float32",
        "f64": "Float64",
        "i64": "Int64",
        "bool": "boolean",
        "category": pd.CategoricalDtype(list(f.categories)),
    }[f.dtype]


# --------------------------------------------------------------------------------------
# reading raw data
# --------------------------------------------------------------------------------------
def _read_table(path: str | Path, columns: list[str], string_cols: list[str]) -> pd.DataFrame:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        opts = pacsv.ConvertOptions(
            include_columns=columns,
            column_types={c: pa.string() for c in string_cols},
            strings_can_be_null=True,
        )
        table = pacsv.read_csv(path, convert_options=opts)
    elif suffix in (".parquet", ".pq"):
        table = pq.read_table(path, columns=columns)
    else:
        raise ValueError(f"{path}: unknown extension (use .csv or .parquet)")
    return table.to_pandas(types_mapper=None)


def _to_utc_us(values: pd.Series) -> np.ndarray:
    """Timestamps (strings, naive or tz-aware datetimes) -> int64 microseconds UTC."""
    if not (pd.api.types.is_datetime64_any_dtype(values)):
        values = pd.to_datetime(values, utc=True, format="ISO8601")
    elif values.dt.tz is None:
        values = values.dt.tz_localize("UTC")
    else:
        values = values.dt.tz_convert("UTC")
    if values.isna().any():
        raise ValueError(f"{int(values.isna().sum())} event(s) have no timestamp")
    return values.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)


def read_events(path: str | Path) -> pd.DataFrame:
    """Reads an events file into columns customer_id (str), ts (int64 µs UTC),
    event (str), amount (float64, NaN when empty)."""
    cols = ["customer_id", "timestamp", "event", "amount"]
    df = _read_table(path, cols, ["customer_id", "timestamp", "event"])
    return normalize_events(df)


def normalize_events(df: pd.DataFrame) -> pd.DataFrame:
    """Accepts an in-memory events frame (timestamp as strings or datetimes)."""
    missing = {"customer_id", "timestamp", "event"} - set(df.columns)
    if missing:
        raise ValueError(f"events: missing column(s) {sorted(missing)}")
    amount = df["amount"] if "amount" in df.columns else pd.Series(np.nan, index=df.index)
    out = pd.DataFrame(
        {
            "customer_id": df["customer_id"].astype(str).to_numpy(),
            "ts": _to_utc_us(pd.Series(df["timestamp"]).reset_index(drop=True)),
            "event": df["event"].astype(str).to_numpy(),
            "amount": pd.to_numeric(amount, errors="raise").astype(np.float64).to_numpy(),
        }
    )
    return out


def read_attributes(path: str | Path) -> pd.DataFrame:
    cols = ["customer_id", "region", "signup_date"]
    df = _read_table(path, cols, ["customer_id", "region", "signup_date"])
    return normalize_attributes(df)


def normalize_attributes(df: pd.DataFrame) -> pd.DataFrame:
    if "customer_id" not in df.columns:
        raise ValueError("attributes: missing column customer_id")
    out = pd.DataFrame({"customer_id": df["customer_id"].astype(str).to_numpy()})
    region = df["region"] if "region" in df.columns else pd.Series([None] * len(df))
    region = pd.Series(region).reset_index(drop=True)
    out["region"] = region.where(region.notna() & (region.astype(str).str.strip() != ""), None)
    if "signup_date" in df.columns:
        sd = pd.Series(df["signup_date"]).reset_index(drop=True)
        sd = sd.where(sd.notna() & (sd.astype(str).str.strip() != ""), None)
        parsed = pd.to_datetime(sd, utc=True, format="ISO8601")
        us = parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[us]").astype(np.int64)
        out["signup_us"] = np.where(parsed.isna().to_numpy(), np.iinfo(np.int64).max, us)
    else:
        out["signup_us"] = np.iinfo(np.int64).max
    if out["customer_id"].duplicated().any():
        raise ValueError("attributes: duplicate customer_id rows")
    return out


def _cutoff_us(cutoff) -> int:
    ts = pd.Timestamp(cutoff)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.tz_localize(None).to_datetime64().astype("datetime64[us]").astype(np.int64))


# --------------------------------------------------------------------------------------
# the builder
# --------------------------------------------------------------------------------------
def build_features(
    events: pd.DataFrame | str | Path,
    attributes: pd.DataFrame | str | Path | None,
    cutoff,
    labels: bool | None = None,
    schema: list[Feature] | None = None,
) -> pd.DataFrame:
    """One row per customer at `cutoff`: customer_id, the schema's features (in
    order, nullable pandas dtypes, missing values left missing) and, when
    `labels` (None = when the events reach cutoff + 365 days), the labels."""
    schema = schema or load_schema()
    if isinstance(events, (str, Path)):
        events = read_events(events)
    elif "ts" not in events.columns:
        events = normalize_events(events)
    if isinstance(attributes, (str, Path)):
        attributes = read_attributes(attributes)
    elif attributes is not None and "signup_us" not in attributes.columns:
        attributes = normalize_attributes(attributes)
    cut = _cutoff_us(cutoff)
    day = US_PER_DAY

    known = events["event"].isin(EVENTS).to_numpy()
    if not known.all():
        warnings.warn(f"ignoring {int((~known).sum())} event(s) of unknown type")
        events = events[known]
    ev_code = pd.Categorical(events["event"], categories=list(EVENTS)).codes.astype(np.int8)
    ts = events["ts"].to_numpy()
    amt = events["amount"].to_numpy()
    is_purchase = ev_code == 0
    bad = is_purchase & ~(amt >= 0)  # NaN or negative
    if bad.any():
        raise ValueError(f"{int(bad.sum())} purchase(s) have a missing or negative amount")

    # Customer universe: everyone in the events or attributes.
    ids = [events["customer_id"].to_numpy()]
    if attributes is not None:
        ids.append(attributes["customer_id"].to_numpy())
    uniq = pd.Index(pd.unique(np.concatenate(ids))).sort_values()
    n = len(uniq)
    c = uniq.get_indexer(events["customer_id"])

    pre = ts < cut
    big = np.iinfo(np.int64).max
    first_event = np.full(n, big)
    np.minimum.at(first_event, c[pre], ts[pre])
    signup = np.full(n, big)
    region = np.full(n, None, dtype=object)
    if attributes is not None:
        ac = uniq.get_indexer(attributes["customer_id"])
        signup[ac] = attributes["signup_us"].to_numpy()
        region[ac] = attributes["region"].to_numpy()
    start = np.minimum(signup, first_event)
    include = start < cut

    def count(mask):
        return np.bincount(c[mask], minlength=n)

    p_pre = is_purchase & pre
    frequency = count(p_pre)
    total = np.bincount(c[p_pre], weights=amt[p_pre], minlength=n)
    last = np.full(n, np.iinfo(np.int64).min)
    np.maximum.at(last, c[p_pre], ts[p_pre])
    bought = frequency > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recency = np.where(bought, (cut - last) / day, np.nan)
        mean = np.where(bought, total / np.maximum(frequency, 1), np.nan)
    p90 = count(p_pre & (ts >= cut - 90 * day))

    behav = np.isin(ev_code, [EVENTS.index(e) for e in BEHAVIOURAL]) & pre
    has_behav = count(behav) > 0
    w7 = pre & (ts >= cut - 7 * day)

    def behav_count(name):
        v = count(w7 & (ev_code == EVENTS.index(name))).astype(np.float64)
        return np.where(has_behav, v, np.nan)

    abandoned = count(pre & (ts >= cut - day) & (ev_code == EVENTS.index("cart_abandon"))) > 0
    email = pre & (ev_code == EVENTS.index("email_open"))
    has_email = count(email) > 0
    opens90 = count(email & (ts >= cut - 90 * day))
    engagement = np.where(has_email, np.minimum(100.0, 100.0 * opens90 / EMAILS_PER_90D), np.nan)

    values: dict[str, Any] = {
        "recency_days": recency,
        "frequency": frequency,
        "tenure_days": (cut - start.astype(np.float64)) / day,
        "monetary_mean": mean,
        "monetary_total": total,
        "purchases_90d": p90,
        "sessions_7d": behav_count("session"),
        "cart_adds_7d": behav_count("cart_add"),
        "checkout_visits_7d": behav_count("checkout_visit"),
        "cart_abandoned_24h": np.where(has_behav, abandoned, None),
        "email_engagement": engagement,
        "region": region,
    }

    keep = np.flatnonzero(include)
    out = pd.DataFrame({"customer_id": np.asarray(uniq)[keep].astype(str)})
    for f in schema:
        if f.name not in values:
            raise ValueError(f"features.toml declares {f.name!r}, which the builder does not know")
        col = values[f.name][keep]
        if f.dtype == "category":
            s = pd.Series(col, dtype=object)
            unknown = s.notna() & ~s.isin(f.categories)
            if unknown.any():
                fallback = "unknown" if "unknown" in f.categories else None
                warnings.warn(f"{f.name}: {int(unknown.sum())} value(s) outside the categories -> {fallback}")
                s[unknown] = fallback
            out[f.name] = pd.Categorical(s, categories=list(f.categories))
        elif f.dtype == "bool":
            out[f.name] = pd.array(list(col), dtype="boolean")
        elif f.dtype == "i64":
            out[f.name] = pd.array(np.asarray(col, dtype=np.float64), dtype="Float64").astype("Int64")
        else:
            arr = np.asarray(col, dtype=np.float64)
            if f.dtype == "f32":
                arr = arr.astype(np.float32)
            out[f.name] = pd.array(arr, dtype=_pandas_dtype(f))

    if labels is None:
        labels = bool(len(ts)) and ts.max() >= cut + (max(LABEL_WINDOW_DAYS.values()) - 1) * day
    if labels:
        def window(days):
            return is_purchase & (ts >= cut) & (ts < cut + days * day)

        out["churned"] = (count(window(90)) == 0)[keep].astype(np.int64)
        w = window(365)
        out["ltv_365d"] = np.bincount(c[w], weights=amt[w], minlength=n)[keep]
        out["purchase_30d"] = (count(window(30)) > 0)[keep].astype(np.int64)
    return out


def purchases_only(events: pd.DataFrame) -> pd.DataFrame:
    return events[events["event"] == "purchase"].reset_index(drop=True)


# --------------------------------------------------------------------------------------
# imputation and encoding (exactly what the server does)
# --------------------------------------------------------------------------------------
def impute(df: pd.DataFrame, schema: list[Feature] | None = None) -> pd.DataFrame:
    """Replaces missing values by the schema's impute values; raises when a
    feature with `missing = "reject"` is missing."""
    schema = schema or load_schema()
    out = df.copy()
    for f in schema:
        col = out[f.name]
        miss = col.isna()
        if not miss.any():
            continue
        if f.reject_missing:
            raise ValueError(f"{f.name}: {int(miss.sum())} missing value(s) but missing = \"reject\"")
        out[f.name] = col.fillna(f.impute)
    return out


def to_matrix(df: pd.DataFrame, schema: list[Feature] | None = None) -> np.ndarray:
    """The model input: float32 [rows, features] in schema order. Every value must be
    present (call `impute` first): value as float32, bool as 0/1, category as the
    index of the value in `categories`."""
    schema = schema or load_schema()
    cols = []
    for f in schema:
        col = df[f.name]
        if col.isna().any():
            raise ValueError(f"{f.name}: missing values; impute first")
        if f.dtype == "category":
            codes = pd.Categorical(col.astype(object), categories=list(f.categories)).codes
            if (codes < 0).any():
                raise ValueError(f"{f.name}: value outside the categories")
            cols.append(codes.astype(np.float32))
        elif f.dtype == "bool":
            cols.append(col.astype(bool).to_numpy().astype(np.float32))
        elif f.dtype == "f64":
            cols.append(col.to_numpy(dtype=np.float64).astype(np.float32))
        else:
            cols.append(col.to_numpy(dtype=np.float64).astype(np.float32))
    return np.ascontiguousarray(np.stack(cols, axis=1), dtype=np.float32)


# --------------------------------------------------------------------------------------
# CSV cells (the format the Rust side parses)
# --------------------------------------------------------------------------------------
def fmt_float(x) -> str:
    """A float as its float32 value, shortest form that round-trips to float32."""
    return format(float(np.float32(x)), ".9g")


def _format_column(values: pd.Series, kind: str) -> list[str]:
    miss = values.isna().to_numpy()
    if kind in ("f32", "f64", "float"):
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return ["" if m else fmt_float(v) for v, m in zip(arr, miss)]
    if kind in ("i64", "int"):
        arr = values.to_numpy(dtype=np.float64, na_value=np.nan)
        return ["" if m else str(int(v)) for v, m in zip(arr, miss)]
    if kind == "bool":
        return ["" if m else ("true" if v else "false") for v, m in zip(values.astype(object), miss)]
    return ["" if m else str(v) for v, m in zip(values.astype(object), miss)]


LABEL_KINDS = {"churned": "int", "ltv_365d": "float", "purchase_30d": "int", "expected": "float",
               "expected_cluster": "int"}


def write_feature_csv(
    path: str | Path,
    df: pd.DataFrame,
    schema: list[Feature] | None = None,
    extra: list[str] = (),
) -> None:
    """customer_id, the features in schema order, then `extra` columns (labels,
    expected). Missing values are empty cells; floats as float32 '.9g'."""
    schema = schema or load_schema()
    names = ["customer_id"] + [f.name for f in schema] + list(extra)
    cols = [df["customer_id"].astype(str).tolist()]
    cols += [_format_column(df[f.name], f.dtype) for f in schema]
    cols += [_format_column(df[e], LABEL_KINDS.get(e, "float")) for e in extra]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(names)
        w.writerows(zip(*cols))


def read_feature_csv(path: str | Path, schema: list[Feature] | None = None) -> pd.DataFrame:
    """Reads a file written by write_feature_csv back into builder dtypes (extra
    columns as float64, empty cells missing)."""
    schema = schema or load_schema()
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = pd.DataFrame({"customer_id": raw["customer_id"]})
    for f in schema:
        s = raw[f.name]
        blank = s.str.strip() == ""
        if f.dtype == "category":
            out[f.name] = pd.Categorical(s.where(~blank, None), categories=list(f.categories))
        elif f.dtype == "bool":
            m = {"true": True, "false": False}
            out[f.name] = pd.array([None if b else m[v.strip().lower()] for v, b in zip(s, blank)], dtype="boolean")
        else:
            num = pd.to_numeric(s.where(~blank, None))
            if f.dtype == "f32":
                out[f.name] = pd.array(num.to_numpy(dtype=np.float64).astype(np.float32), dtype="Float32")
            elif f.dtype == "i64":
                out[f.name] = pd.array(num.to_numpy(dtype=np.float64), dtype="Float64").astype("Int64")
            else:
                out[f.name] = pd.array(num.to_numpy(dtype=np.float64), dtype="Float64")
    for extra in raw.columns[len(schema) + 1:]:
        out[extra] = pd.to_numeric(raw[extra].where(raw[extra] != "", None)).astype(np.float64)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="Build customer features at a cutoff.")
    ap.add_argument("--events", required=True)
    ap.add_argument("--attributes")
    ap.add_argument("--cutoff", required=True, help="ISO date or instant (UTC)")
    ap.add_argument("--output", required=True, help="feature CSV to write")
    ap.add_argument("--labels", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--purchases-only", action="store_true", help="use only the purchase events")
    args = ap.parse_args(argv)
    ev = read_events(args.events)
    if args.purchases_only:
        ev = purchases_only(ev)
    labels = {"auto": None, "yes": True, "no": False}[args.labels]
    df = build_features(ev, args.attributes, args.cutoff, labels=labels)
    extra = [label for label in LABELS if label in df.columns]
    write_feature_csv(args.output, df, extra=extra)
    print(f"wrote {len(df):,} customers to {args.output}")


if __name__ == "__main__":
    main()
