"""Reading an events file for `fit` in customer shards, so memory is bounded by a
shard, not by the file.

Every feature, label and BTYD summary is a function of one customer's events.
So the file is streamed once in record batches, each batch normalised and split
by a hash of the customer id into `shards` temporary Parquet files; then each
shard is read alone and its per-customer frames (features + labels at every
cutoff) and BTYD summaries are computed; the frames are concatenated and sorted
by customer id, which is the order `features.build_features` gives on the whole
table, so the result is the same whatever the number of shards.

With one shard the file is read into memory whole, as before.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

import baselines as B
import features as F

EVENTS_PER_SHARD = 8_000_000
BATCH_ROWS = 1_000_000
COLUMNS = ["customer_id", "timestamp", "event", "amount"]


def estimate_rows(path: Path) -> int:
    if path.suffix.lower() in (".parquet", ".pq"):
        return pq.ParquetFile(path).metadata.num_rows
    return path.stat().st_size // 40  # an events CSV row is ~40-60 bytes


def auto_shards(path: Path) -> int:
    return max(1, math.ceil(estimate_rows(path) / EVENTS_PER_SHARD))


def _batches(path: Path):
    if path.suffix.lower() in (".parquet", ".pq"):
        yield from pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS)
    elif path.suffix.lower() == ".csv":
        opts = pacsv.ConvertOptions(include_columns=COLUMNS,
                                    # typed up front: a streaming reader infers types from its first
                                    # block, where `amount` may be all empty (no purchase yet)
                                    column_types={**{c: pa.string() for c in ("customer_id", "timestamp", "event")},
                                                  "amount": pa.float64()},
                                    strings_can_be_null=True)
        yield from pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=64 << 20), convert_options=opts)
    else:
        raise ValueError(f"{path}: unknown extension (use .csv or .parquet)")


def shard_of(ids, shards: int) -> np.ndarray:
    return (pd.util.hash_array(np.asarray(ids, dtype=object)) % np.uint64(shards)).astype(np.int64)


@dataclass
class Scan:
    """What `fit` needs to know of the whole file before building anything."""

    path: Path
    shards: int
    rows: int = 0
    counts: dict = field(default_factory=dict)
    ts_min: int | None = None
    ts_max: int | None = None
    customers: int = 0
    events: pd.DataFrame | None = None      # one shard: the table itself
    tmp: Path | None = None                 # several: shard_<i>.parquet in here

    def cleanup(self):
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def scan(path: Path, shards: int) -> Scan:
    path = Path(path)
    s = Scan(path, shards)
    if shards <= 1:
        ev = F.read_events(path)
        s.events, s.rows = ev, len(ev)
        s.counts = ev["event"].value_counts().to_dict()
        if len(ev):
            s.ts_min, s.ts_max = int(ev["ts"].min()), int(ev["ts"].max())
        s.customers = int(ev["customer_id"].nunique())
        return s
    s.tmp = Path(tempfile.mkdtemp(prefix="segscore-fit-shards-"))
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for batch in _batches(path):
            ev = F.normalize_events(batch.to_pandas())
            if not len(ev):
                continue
            s.rows += len(ev)
            for k, v in ev["event"].value_counts().items():
                s.counts[k] = s.counts.get(k, 0) + int(v)
            lo, hi = int(ev["ts"].min()), int(ev["ts"].max())
            s.ts_min = lo if s.ts_min is None else min(s.ts_min, lo)
            s.ts_max = hi if s.ts_max is None else max(s.ts_max, hi)
            sid = shard_of(ev["customer_id"].to_numpy(), shards)
            for i in np.unique(sid):
                t = pa.Table.from_pandas(ev[sid == i], preserve_index=False)
                if i not in writers:
                    writers[i] = pq.ParquetWriter(s.tmp / f"shard_{i}.parquet", t.schema)
                writers[i].write_table(t)
    except BaseException:
        for w in writers.values():
            w.close()
        s.cleanup()
        raise
    for w in writers.values():
        w.close()
    for i in range(shards):
        p = s.tmp / f"shard_{i}.parquet"
        if p.exists():
            s.customers += pq.read_table(p, columns=["customer_id"]).column(0).unique().__len__()
    return s


def shard_events(s: Scan):
    """(shard index, its events) for every shard."""
    if s.events is not None:
        yield 0, s.events
        return
    for i in range(s.shards):
        p = s.tmp / f"shard_{i}.parquet"
        if p.exists():
            yield i, pq.read_table(p).to_pandas()
        else:
            yield i, pd.DataFrame({"customer_id": np.array([], object), "ts": np.array([], np.int64),
                                   "event": np.array([], object), "amount": np.array([], float)})


def build(s: Scan, attributes: pd.DataFrame | None, cutoffs: list[pd.Timestamp], summary_cutoffs: list[str], schema,
          log=lambda *_: None):
    """{cutoff string: features + labels frame} for every cutoff and {cutoff:
    BTYD summary of every customer in that frame} for every summary cutoff."""
    names = [c.strftime("%Y-%m-%dT%H:%M:%SZ") for c in cutoffs]
    parts = {n: [] for n in names}
    summ = {c: [] for c in summary_cutoffs}
    for i, ev in shard_events(s):
        at = attributes
        if attributes is not None and s.shards > 1:
            at = attributes[shard_of(attributes["customer_id"].to_numpy(), s.shards) == i]
        if not len(ev) and (at is None or not len(at)):
            continue
        for c, n in zip(cutoffs, names):
            df = F.build_features(ev, at, c, labels=True, schema=schema)
            df["snapshot"] = n
            parts[n].append(df)
        for c in summary_cutoffs:
            ids = parts[c][-1]["customer_id"]
            summ[c].append(B.btyd_summary(ev, ids, c))
        if s.shards > 1:
            log(f"shard {i + 1}/{s.shards}: {len(ev):,} events")
        del ev
    frames = {}
    for n in names:
        df = pd.concat(parts[n], ignore_index=True) if len(parts[n]) > 1 else parts[n][0]
        if len(parts[n]) > 1:
            df = df.sort_values("customer_id", kind="stable").reset_index(drop=True)
        frames[n] = df
        parts[n] = None
    summaries = {c: (pd.concat(v) if len(v) > 1 else v[0]) for c, v in summ.items()}
    return frames, summaries
