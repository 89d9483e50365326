#!/usr/bin/env python3
"""Seeded synthetic retail data in segscore's raw data contract.

Writes two files:

* an events file (CSV or Parquet, chosen by extension) with columns
  ``customer_id, timestamp, event, amount``; ``event`` is one of
  ``purchase, session, cart_add, checkout_visit, cart_abandon, email_open`` and
  ``amount`` is set for purchases only (empty/null otherwise);
* a customer attributes file ``customer_id, region, signup_date``.

The generative story (per customer) follows the BG/NBD model of repeat buying,
with behaviour layered on top:

* signup dates grow over time (more customers sign up later);
* 85% of customers ever buy; their first purchase follows signup by an
  exponential delay;
* purchase rate ``lambda ~ Gamma(r, 1/alpha)`` (heterogeneous buyers), modulated
  by retail seasonality (late-November/Black Friday spike, December peak,
  January dip): purchases form an inhomogeneous Poisson process;
* dropout: after every purchase the customer becomes inactive with probability
  ``p ~ Beta(a, b)`` (BG/NBD), so the number of purchases while alive is
  ``Geometric(p)``;
* spend per purchase ``~ Gamma(shape, 1/nu)`` with ``nu ~ Gamma(q, 1/gamma)``
  per customer (the Gamma-Gamma spend model), times a region factor and a
  December gift bump;
* browsing: an engagement level correlated with the purchase rate drives
  background sessions while the customer is active, decaying after they drop
  out; every purchase is preceded by an intent episode (sessions in the days
  before, cart additions, a checkout visit minutes before the order) and
  sometimes by an abandoned cart; alive customers also abandon carts without
  buying;
* weekly email campaigns (Tuesdays); open probability grows with engagement and
  falls once the customer has dropped out; some customers are not subscribed;
* incomplete data: 15% of customers buy offline/untracked (purchases but no
  behavioural events), ~7% have an empty region, ~2% an explicit "unknown"
  region, and ~3% have no attributes row at all.

Customers are generated and written in chunks, so memory stays bounded whatever
the number of customers (10 M works; the disk needs roughly 50 bytes per event
for CSV, much less for Parquet). The output is a pure function of the seed, the
number of customers, the chunk size and the date arguments.

Usage:
    python training/generate.py --customers 50000 --seed 20261123 \\
        --events out/events.parquet --attributes out/customers.csv
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

EVENT_NAMES = np.array(
    ["purchase", "session", "cart_add", "checkout_visit", "cart_abandon", "email_open"]
)
PURCHASE, SESSION, CART_ADD, CHECKOUT, ABANDON, EMAIL = range(6)

REGIONS = np.array(["north_america", "europe", "asia_pacific", "latin_america", "middle_east_africa"])
REGION_P = np.array([0.36, 0.30, 0.20, 0.09, 0.05])
REGION_SPEND = np.array([1.15, 1.0, 0.9, 0.7, 0.85])

DEFAULT_START = "2021-01-01"
DEFAULT_SIGNUP_END = "2025-07-01"
DEFAULT_END = "2026-01-01"
DEFAULT_CHUNK = 100_000
MIN = 1.0 / 1440.0  # one minute in days

# Generative parameters (days as the time unit).
RATE_SHAPE, RATE_ALPHA = 0.6, 22.0  # purchase rate lambda ~ Gamma(r, 1/alpha): mean ~0.027/day (10 a year)
RATE_CAP = 0.3
DROP_A, DROP_B = 0.9, 5.0  # dropout after each purchase ~ Beta(a, b)
SPEND_P, SPEND_Q, SPEND_GAMMA = 5.0, 3.5, 30.0  # Gamma-Gamma spend: mean ~ p*gamma/(q-1) = 60
BUYER_SHARE = 0.85
OFFLINE_SHARE = 0.15
SUBSCRIBED_SHARE = 0.70
MISSING_REGION, UNKNOWN_REGION, NO_ATTRIBUTES = 0.07, 0.02, 0.03


def _days(date: str) -> np.datetime64:
    return np.datetime64(date, "D")


class Season:
    """Daily seasonal intensity and its cumulative integral (for time warping)."""

    def __init__(self, start: np.datetime64, n_days: int):
        dates = start + np.arange(n_days + 1).astype("timedelta64[D]")
        years = dates.astype("datetime64[Y]")
        doy = (dates - years.astype("datetime64[D]")).astype(np.float64) + 1.0
        dow = (dates.astype(np.int64) + 3) % 7  # 0 = Monday
        s = (
            1.0
            + 0.9 * np.exp(-0.5 * ((doy - 345.0) / 12.0) ** 2)  # December peak
            + 0.8 * np.exp(-0.5 * ((doy - 331.0) / 2.5) ** 2)  # Black Friday week
            - 0.25 * np.exp(-0.5 * ((doy - 20.0) / 15.0) ** 2)  # January dip
        )
        s = s * np.where(dow >= 5, 1.1, 0.96)  # weekends a little busier
        self.s = s[:n_days]
        months = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
        self.month = months[:n_days]
        self.start_dow = int(dow[0])
        self.cum = np.concatenate([[0.0], np.cumsum(self.s)])
        self.n_days = n_days

    def cum_at(self, t: np.ndarray) -> np.ndarray:
        t = np.clip(t, 0.0, self.n_days)
        k = np.minimum(np.floor(t).astype(np.int64), self.n_days - 1)
        return self.cum[k] + self.s[k] * (t - k)

    def inverse(self, u: np.ndarray) -> np.ndarray:
        u = np.clip(u, 0.0, self.cum[-1])
        k = np.clip(np.searchsorted(self.cum, u, side="right") - 1, 0, self.n_days - 1)
        return k + (u - self.cum[k]) / self.s[k]


def _segment_ranks(group: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal (sorted) group ids."""
    n = len(group)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    lengths = np.diff(np.r_[starts, n])
    return np.arange(n) - np.repeat(starts, lengths)


def _uniform_in_warped(rng, season: Season, idx, lo, hi):
    """One time per element of idx, uniform in seasonal (warped) time on [lo, hi)."""
    a, b = season.cum_at(lo[idx]), season.cum_at(hi[idx])
    return season.inverse(a + rng.random(len(idx)) * (b - a))


class _Events:
    def __init__(self):
        self.parts: list[tuple[np.ndarray, np.ndarray, int | np.ndarray, np.ndarray | None]] = []

    def add(self, cust, t, ev, amount=None):
        self.parts.append((cust, t, ev, amount))

    def arrays(self):
        cust = np.concatenate([p[0] for p in self.parts])
        t = np.concatenate([p[1] for p in self.parts])
        ev = np.concatenate(
            [np.broadcast_to(np.asarray(p[2], np.int8), p[0].shape) for p in self.parts]
        )
        amount = np.concatenate(
            [p[3] if p[3] is not None else np.full(len(p[0]), np.nan) for p in self.parts]
        )
        return cust, t, ev, amount


def simulate_chunk(rng: np.random.Generator, n: int, season: Season, signup_end: float):
    """Simulates n customers. Returns per-customer attributes and flat event arrays
    (customer index, time in days since start, event code, amount)."""
    end = float(season.n_days)
    ev = _Events()

    # --- customer-level latent traits -------------------------------------------------
    # Signups grow linearly over time: density ~ 1 + 2 t/T, inverse CDF below.
    g = 2.0
    u = rng.random(n)
    signup = signup_end * (-1.0 + np.sqrt(1.0 + 2.0 * g * u + g * g * u)) / g
    region = rng.choice(len(REGIONS), size=n, p=REGION_P)
    lam = np.minimum(rng.gamma(RATE_SHAPE, 1.0 / RATE_ALPHA, n), RATE_CAP)
    p_drop = rng.beta(DROP_A, DROP_B, n)
    nu = rng.gamma(SPEND_Q, 1.0 / SPEND_GAMMA, n)
    # Engagement: log-normal, correlated with the purchase rate.
    log_e = 0.35 * np.log(lam / (RATE_SHAPE / RATE_ALPHA)) + 0.55 * rng.standard_normal(n)
    engage = np.clip(np.exp(log_e), 0.05, 8.0)
    buyer = rng.random(n) < BUYER_SHARE
    offline = rng.random(n) < OFFLINE_SHARE
    subscribed = rng.random(n) < SUBSCRIBED_SHARE

    # --- purchases: BG/NBD in seasonal time --------------------------------------------
    first = signup + rng.exponential(20.0, n)
    buys = buyer & (first < end)
    n_allowed = rng.geometric(p_drop)  # purchases while alive (>= 1)
    span = season.cum_at(np.full(n, end)) - season.cum_at(first)
    n_candidates = np.where(buys, rng.poisson(lam * np.maximum(span, 0.0)), 0)
    n_extra = np.minimum(n_allowed - 1, n_candidates)
    # Given n_candidates Poisson events uniform on the warped span, the first n_extra
    # order statistics via exponential spacings: U_(j) = S_j / (S_k + Gamma(m + 1 - k)).
    rep = np.repeat(np.arange(n), n_extra)
    gaps = rng.exponential(1.0, len(rep))
    csum = np.cumsum(gaps)
    offsets = np.r_[0.0, csum][np.r_[0, np.cumsum(n_extra)][:-1]]
    s_j = csum - np.repeat(offsets, n_extra)
    s_k = np.zeros(n)
    np.add.at(s_k, rep, gaps)
    tail = rng.gamma(np.maximum(n_candidates + 1 - n_extra, 1).astype(np.float64), 1.0)
    frac = s_j / (s_k[rep] + tail[rep])
    t_extra = season.inverse(season.cum_at(first[rep]) + frac * span[rep])
    p_cust = np.concatenate([np.flatnonzero(buys), rep])
    p_time = np.concatenate([first[buys], t_extra])
    keep = p_time < end
    p_cust, p_time = p_cust[keep], p_time[keep]
    n_purchases = np.bincount(p_cust, minlength=n)
    last_purchase = np.full(n, -np.inf)
    np.maximum.at(last_purchase, p_cust, p_time)
    # Dropped out (dead) when all allowed purchases happened before the end.
    dead = buys & (n_allowed - 1 <= n_candidates)
    # Activity (browsing, email interest) lasts until a little after the dropout.
    active_until = np.where(
        buys,
        np.where(dead, last_purchase + rng.exponential(14.0, n), end),
        signup + rng.exponential(45.0, n),
    )
    active_until = np.clip(active_until, signup, end)

    december = (season.month[np.floor(p_time).astype(np.int64)] == 12).astype(np.float64)
    amount = rng.gamma(SPEND_P, 1.0 / nu[p_cust]) * REGION_SPEND[region[p_cust]] * (1.0 + 0.2 * december)
    amount = np.maximum(np.round(amount, 2), 1.0)
    ev.add(p_cust, p_time, PURCHASE, amount)

    # --- behaviour (tracked customers only) ---------------------------------------------
    tracked = ~offline
    rate_factor = (lam / (RATE_SHAPE / RATE_ALPHA)) ** 0.3
    sess_rate = np.clip(0.06 * engage * rate_factor, 0.002, 1.5)

    # Background sessions while active (seasonal), then a decaying tail after dropout.
    active_span = season.cum_at(active_until) - season.cum_at(signup)
    n_bg = np.where(tracked, rng.poisson(sess_rate * active_span), 0)
    idx = np.repeat(np.arange(n), n_bg)
    t_bg = _uniform_in_warped(rng, season, idx, signup, active_until)
    tau = 30.0
    left = end - active_until
    n_tail = np.where(tracked, rng.poisson(0.3 * sess_rate * tau * (1 - np.exp(-left / tau))), 0)
    idx2 = np.repeat(np.arange(n), n_tail)
    uu = rng.random(len(idx2))
    t_tail = active_until[idx2] - tau * np.log1p(-uu * (1 - np.exp(-left[idx2] / tau)))
    s_cust = np.concatenate([idx, idx2])
    s_time = np.concatenate([t_bg, t_tail])
    # Some background sessions put something in the cart.
    browse_cart = rng.random(len(s_cust)) < 0.12
    ev.add(s_cust, s_time, SESSION)
    ev.add(s_cust[browse_cart], s_time[browse_cart] + rng.uniform(1, 20, browse_cart.sum()) * MIN, CART_ADD)

    # Intent episodes before every tracked purchase.
    tp = tracked[p_cust]
    pc, pt = p_cust[tp], p_time[tp]
    e_p = np.minimum(engage[pc], 3.0)
    # the purchase session itself, cart adds within it, a checkout visit minutes before the order
    start = pt - rng.uniform(4, 45, len(pt)) * MIN
    ev.add(pc, start, SESSION)
    n_add = 1 + rng.poisson(1.0, len(pt))
    ai = np.repeat(np.arange(len(pt)), n_add)
    ev.add(pc[ai], start[ai] + rng.random(len(ai)) * (pt[ai] - start[ai] - 2 * MIN), CART_ADD)
    ev.add(pc, pt - rng.uniform(0.5, 2.0, len(pt)) * MIN, CHECKOUT)
    # research sessions in the days before (mean 4 days ahead)
    n_pre = rng.poisson(0.6 + 0.8 * e_p)
    pi = np.repeat(np.arange(len(pt)), n_pre)
    t_pre = pt[pi] - rng.exponential(4.0, len(pi)) - 0.05
    ev.add(pc[pi], t_pre, SESSION)
    with_cart = rng.random(len(pi)) < 0.35
    ev.add(pc[pi][with_cart], t_pre[with_cart] + rng.uniform(1, 30, with_cart.sum()) * MIN, CART_ADD)
    with_checkout = rng.random(len(pi)) < 0.08
    ev.add(pc[pi][with_checkout], t_pre[with_checkout] + rng.uniform(5, 40, with_checkout.sum()) * MIN, CHECKOUT)
    # an abandoned cart before 30% of purchases (the customer comes back to buy)
    ab = rng.random(len(pt)) < 0.30
    t_ab = pt[ab] - rng.exponential(2.5, ab.sum()) - 0.1
    ab_episodes = [(pc[ab], t_ab)]

    # Abandoned carts without a purchase: alive customers, rarely after dropout.
    ab_rate = 0.006 * engage
    n_ab = np.where(tracked, rng.poisson(ab_rate * (active_until - signup)), 0)
    ia = np.repeat(np.arange(n), n_ab)
    ab_episodes.append((ia, signup[ia] + rng.random(len(ia)) * (active_until - signup)[ia]))
    n_ab2 = np.where(tracked, rng.poisson(0.1 * ab_rate * left), 0)
    ib = np.repeat(np.arange(n), n_ab2)
    ab_episodes.append((ib, active_until[ib] + rng.random(len(ib)) * left[ib]))
    ac = np.concatenate([x[0] for x in ab_episodes])
    at = np.concatenate([x[1] for x in ab_episodes])
    ev.add(ac, at, SESSION)
    k = 1 + rng.poisson(0.7, len(ac))
    ki = np.repeat(np.arange(len(ac)), k)
    t_adds = at[ki] + rng.uniform(1, 25, len(ki)) * MIN
    ev.add(ac[ki], t_adds, CART_ADD)
    co = rng.random(len(ac)) < 0.4
    ev.add(ac[co], at[co] + rng.uniform(26, 35, co.sum()) * MIN, CHECKOUT)
    ev.add(ac, at + rng.uniform(60, 180, len(ac)) * MIN, ABANDON)

    # --- email: weekly Tuesday 10:00 UTC campaigns --------------------------------------
    first_tuesday = (1 - season.start_dow) % 7  # day offset of the first Tuesday
    p_open = np.clip(1.0 - np.exp(-0.3 * engage), 0.02, 0.9)
    unsub = np.where(rng.random(n) < 0.5, active_until + rng.exponential(90.0, n), np.inf)
    sub_end = np.minimum(unsub, end)

    def week_range(lo, hi):
        w0 = np.ceil((lo - first_tuesday - 10 / 24) / 7.0)
        w1 = np.ceil((hi - first_tuesday - 10 / 24) / 7.0)
        return w0, np.maximum(w1 - w0, 0).astype(np.int64)

    em_c, em_t = [], []
    for lo, hi, prob in (
        (signup, np.minimum(active_until, sub_end), p_open),
        (active_until, sub_end, 0.3 * p_open),
    ):
        w0, nw = week_range(lo, hi)
        n_open = np.where(subscribed, rng.binomial(nw, prob), 0)
        ie = np.repeat(np.arange(n), n_open)
        week = w0[ie] + np.floor(rng.random(len(ie)) * nw[ie])
        em_c.append(ie)
        em_t.append(first_tuesday + 7 * week + 10 / 24 + np.minimum(rng.exponential(0.4, len(ie)), 6.0))
    ev.add(np.concatenate(em_c), np.concatenate(em_t), EMAIL)

    cust, t, code, amt = ev.arrays()
    ok = (t >= signup[cust]) & (t < end)
    cust, t, code, amt = cust[ok], t[ok], code[ok], amt[ok]
    attrs = {"signup": signup, "region": region}
    return attrs, (cust, t, code, amt)


def _make_season(start: str, end: str) -> Season:
    s0, s1 = _days(start), _days(end)
    return Season(s0, int((s1 - s0).astype(np.int64)))


def _format_for(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise SystemExit(f"{path}: unknown extension (use .csv or .parquet)")


class _TableWriter:
    """Appends pyarrow tables to a CSV or Parquet file."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.kind = _format_for(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "csv":
            # Plain header and unquoted cells (no value here contains a comma or quote).
            self.f = open(path, "wb")
            self.f.write((",".join(schema.names) + "\n").encode())
            self.w = pacsv.CSVWriter(
                self.f, schema,
                write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"),
            )
        else:
            self.w = pq.ParquetWriter(str(path), schema, compression="zstd")

    def write(self, table: pa.Table):
        self.w.write_table(table)

    def close(self):
        self.w.close()
        if self.kind == "csv":
            self.f.close()


def generate(
    events_path: str | Path,
    attributes_path: str | Path,
    customers: int = 50_000,
    seed: int = 20261123,
    start: str = DEFAULT_START,
    signup_end: str = DEFAULT_SIGNUP_END,
    end: str = DEFAULT_END,
    chunk_size: int = DEFAULT_CHUNK,
    id_prefix: str = "C",
    verbose: bool = False,
) -> dict:
    """Generates `customers` customers into the two files. Returns counts."""
    events_path, attributes_path = Path(events_path), Path(attributes_path)
    season = _make_season(start, end)
    signup_end_days = float((_days(signup_end) - _days(start)).astype(np.int64))
    if not 0 < signup_end_days <= season.n_days:
        raise ValueError("signup_end must fall between start and end")
    epoch_s = _days(start).astype("datetime64[s]").astype(np.int64)
    ts_type = pa.timestamp("s", tz="UTC")
    ev_kind = _format_for(events_path)
    ev_schema = pa.schema(
        [
            ("customer_id", pa.string()),
            ("timestamp", pa.string() if ev_kind == "csv" else ts_type),
            ("event", pa.string()),
            ("amount", pa.float64()),
        ]
    )
    at_kind = _format_for(attributes_path)
    at_schema = pa.schema(
        [
            ("customer_id", pa.string()),
            ("region", pa.string()),
            ("signup_date", pa.string() if at_kind == "csv" else pa.date32()),
        ]
    )
    ev_w = _TableWriter(events_path, ev_schema)
    at_w = _TableWriter(attributes_path, at_schema)
    width = max(8, len(str(customers)))
    n_events = 0
    counts = np.zeros(len(EVENT_NAMES), np.int64)
    t0 = time.time()
    try:
        for chunk, lo in enumerate(range(0, customers, chunk_size)):
            n = min(chunk_size, customers - lo)
            rng = np.random.default_rng([seed, chunk])
            attrs, (cust, t, code, amt) = simulate_chunk(rng, n, season, signup_end_days)
            ids = np.array([f"{id_prefix}{i:0{width}d}" for i in range(lo + 1, lo + n + 1)])
            secs = epoch_s + np.round(t * 86400.0).astype(np.int64)
            order = np.lexsort((code, secs, cust))
            cust, secs, code, amt = cust[order], secs[order], code[order], amt[order]
            if ev_kind == "csv":
                ts = pa.array(np.datetime_as_string(secs.astype("datetime64[s]"), timezone="UTC"))
            else:
                ts = pa.array(secs, type=ts_type)
            table = pa.Table.from_arrays(
                [
                    pa.array(ids[cust]),
                    ts,
                    pa.array(EVENT_NAMES[code]),
                    pa.array(amt, mask=np.isnan(amt)),
                ],
                schema=ev_schema,
            )
            ev_w.write(table)
            n_events += len(cust)
            counts += np.bincount(code, minlength=len(EVENT_NAMES))

            # Attributes: some rows missing entirely, some regions empty or "unknown".
            has_row = rng.random(n) >= NO_ATTRIBUTES
            r = rng.random(n)
            region = np.where(
                r < MISSING_REGION, "", np.where(r < MISSING_REGION + UNKNOWN_REGION, "unknown", REGIONS[attrs["region"]])
            )
            signup_date = _days(start) + np.floor(attrs["signup"]).astype("timedelta64[D]")
            rows = np.flatnonzero(has_row)
            region_arr = pa.array(region[rows], mask=region[rows] == "")
            if at_kind == "csv":
                sd = pa.array(signup_date[rows].astype(str))
            else:
                sd = pa.array(signup_date[rows], type=pa.date32())
            at_w.write(pa.Table.from_arrays([pa.array(ids[rows]), region_arr, sd], schema=at_schema))
            if verbose:
                done = lo + n
                print(f"  generated {done:,}/{customers:,} customers, {n_events:,} events ({time.time() - t0:.1f}s)", file=sys.stderr)
    finally:
        ev_w.close()
        at_w.close()
    return {
        "customers": customers,
        "events": int(n_events),
        **{f"events_{name}": int(c) for name, c in zip(EVENT_NAMES, counts)},
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--events", required=True, help="events output (.csv or .parquet)")
    ap.add_argument("--attributes", required=True, help="customer attributes output (.csv or .parquet)")
    ap.add_argument("--start", default=DEFAULT_START, help="first day of the data (UTC)")
    ap.add_argument("--signup-end", default=DEFAULT_SIGNUP_END, help="no signups after this day")
    ap.add_argument("--end", default=DEFAULT_END, help="the data stops before this day")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK, help="customers per chunk (memory bound)")
    ap.add_argument("--id-prefix", default="C")
    args = ap.parse_args(argv)
    t0 = time.time()
    stats = generate(
        args.events, args.attributes, args.customers, args.seed, args.start, args.signup_end,
        args.end, args.chunk_size, args.id_prefix, verbose=True,
    )
    print(f"wrote {stats['events']:,} events for {stats['customers']:,} customers in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
