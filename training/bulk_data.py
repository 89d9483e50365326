"""A large feature file for bulk-scoring benchmarks, in bounded memory.

Rows are drawn (with replacement, seeded) from a feature file the pipeline
generated (training/sample_users.csv by default), so every column keeps the
generator's joint distribution, missing values included; only the ids are
new (B000000001, ...). The output is written one chunk at a time as Parquet
row groups (or CSV), so memory stays at one chunk whatever --rows is.

    python training/bulk_data.py --rows 10000000 --out target/bulk/customers-10000000.parquet
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features import load_schema  # noqa: E402

ARROW_TYPES = {"f32": pa.float32(), "f64": pa.float64(), "i64": pa.int64(), "bool": pa.bool_(), "category": pa.string()}


def read_source(path: Path, id_column: str) -> pa.Table:
    schema = load_schema()
    types = {f.name: ARROW_TYPES[f.dtype] for f in schema}
    types[id_column] = pa.string()
    table = pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,
            true_values=["true", "True", "1"],
            false_values=["false", "False", "0"],
        ),
    )
    return table.select([id_column] + [f.name for f in schema])


def generate(source: Path, out: Path, rows: int, chunk_rows: int, seed: int, id_column: str) -> None:
    base = read_source(source, id_column)
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    parquet = out.suffix.lower() in (".parquet", ".pq")
    writer = None
    written = 0
    while written < rows:
        n = min(chunk_rows, rows - written)
        picked = base.take(pa.array(rng.integers(0, base.num_rows, n)))
        ids = pa.array([f"B{i:09d}" for i in range(written + 1, written + n + 1)], pa.string())
        chunk = picked.set_column(0, id_column, ids)
        if writer is None:
            writer = (
                pq.ParquetWriter(tmp, chunk.schema, compression="snappy")
                if parquet
                else pacsv.CSVWriter(tmp, chunk.schema)
            )
        writer.write_table(chunk, row_group_size=chunk_rows) if parquet else writer.write_table(chunk)
        written += n
    if writer is not None:
        writer.close()
    tmp.replace(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="*.parquet (row group per chunk) or *.csv")
    p.add_argument("--source", type=Path, default=Path(__file__).resolve().parent / "sample_users.csv")
    p.add_argument("--chunk-rows", type=int, default=250_000, help="rows per chunk = per Parquet row group")
    p.add_argument("--seed", type=int, default=20261123)
    p.add_argument("--id-column", default="customer_id")
    a = p.parse_args(argv)
    generate(a.source, a.out, a.rows, a.chunk_rows, a.seed, a.id_column)
    print(f"wrote {a.rows} rows to {a.out}")


if __name__ == "__main__":
    main()
