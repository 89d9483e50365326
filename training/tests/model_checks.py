"""Checks a model version directory the way the server does (Python reference)."""
import hashlib
import tomllib
from pathlib import Path

import numpy as np
import onnxruntime as ort

import features as F

REQUIRED_TOP = {"name", "version", "task", "format", "file", "sha256", "score", "features", "golden", "card"}


def load_manifest(d: Path) -> dict:
    with open(d / "model.toml", "rb") as f:
        return tomllib.load(f)


def check_version(d: Path, min_rows: int = 200, every_region: bool = True) -> dict:
    """Asserts everything about one ONNX version directory; returns the manifest.
    `every_region`: the golden set covers every region and a missing one (data
    with attributes; a fit on an order table alone has no region at all)."""
    m = load_manifest(d)
    assert REQUIRED_TOP <= set(m), f"{d}: manifest lacks {REQUIRED_TOP - set(m)}"
    assert m["name"] == d.parent.name and m["version"] == int(d.name)
    assert m["format"] == "onnx"
    with open(F.SCHEMA_PATH, "rb") as f:
        assert m["features"] == tomllib.load(f)["features"], "features differ from features.toml"
    model_bytes = (d / m["file"]).read_bytes()
    assert hashlib.sha256(model_bytes).hexdigest() == m["sha256"], f"{d}: sha256 mismatch"
    assert len(model_bytes) < 2_000_000

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == "features" and inp.type == "tensor(float)"
    assert inp.shape[1] == len(m["features"])
    outputs = {o.name: o for o in sess.get_outputs()}
    if m["task"] == "binary_classification":
        assert set(outputs) == {"label", "probabilities"}
        assert m["score"] == {"output": "probabilities", "column": 1}
        assert m["golden"]["tolerance"] == 1e-5
    else:
        assert set(outputs) == {"ltv"}
        assert m["score"] == {"output": "ltv", "column": 0}
        assert m["golden"]["tolerance"] == 1e-4

    schema = F.load_schema()
    golden = F.read_feature_csv(d / m["golden"]["file"], schema)
    header = (d / m["golden"]["file"]).read_text().splitlines()[0].split(",")
    assert header == ["customer_id"] + [f["name"] for f in m["features"]] + ["expected"]
    assert len(golden) >= min_rows
    assert golden[F.feature_names(schema)].isna().any().any(), "golden set has no missing value"
    region = golden["region"]
    assert region.isna().any()
    if every_region:
        assert set(region.dropna()) == set(schema[-1].categories), "golden set misses a region"

    X = F.to_matrix(F.impute(golden, schema), schema)
    out = sess.run([m["score"]["output"]], {"features": X})[0][:, m["score"]["column"]]
    expected = golden["expected"].to_numpy()
    tol = m["golden"]["tolerance"]
    bad = np.abs(out - expected) > tol * np.maximum(1.0, np.abs(expected))
    assert not bad.any(), f"{d}: {int(bad.sum())} golden rows off, first at {np.flatnonzero(bad)[0]}"
    assert np.isfinite(out).all()
    if m["task"] == "binary_classification":
        assert ((out >= 0) & (out <= 1)).all()
    else:
        assert (out >= 0).all()
    return m
