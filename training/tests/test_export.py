"""ONNX export: graph shape, outputs, and byte-identical files across processes."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

import train as T

TRAINING = Path(__file__).resolve().parents[1]
NAMES = [f"f{i}" for i in range(12)]

SCRIPT = """
import hashlib, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import train as T
rng = np.random.default_rng(0)
X = rng.normal(size=(300, 12)).astype(np.float32)
y = (X[:, 0] > 0).astype(int)
h = hashlib.sha256()
h.update(T.export_classifier(T.gbc(0).fit(X, y), 12, "churn", 2, [f"f{i}" for i in range(12)]))
h.update(T.export_regressor(T.gbr_log(0).fit(X, np.abs(X[:, 1]) * 10), 12, "ltv", 1, [f"f{i}" for i in range(12)]))
print(h.hexdigest())
"""


def test_model_bytes_do_not_depend_on_the_hash_seed():
    # skl2onnx orders opset domains by string hash; seeds 0 and 6 order them differently.
    digests = set()
    for seed in ("0", "6"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", SCRIPT, str(TRAINING)], env=env,
                             capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    assert len(digests) == 1


def _data():
    rng = np.random.default_rng(1)
    X = rng.gamma(2.0, 3.0, size=(400, 12)).astype(np.float32)
    y = X[:, 0] * 3 + rng.gamma(1.0, 5.0, 400)
    return X, y


def test_log_target_regressor_graph_returns_the_value():
    X, y = _data()
    reg = T.gbr_log(0).fit(X, y)
    onx = T.export_regressor(reg, 12, "ltv", 1, NAMES)
    m = onnx.load_from_string(onx)
    assert [i.name for i in m.graph.input] == ["features"]
    assert [o.name for o in m.graph.output] == ["ltv"]
    domains = [o.domain for o in m.opset_import]
    assert domains == sorted(set(domains)), "one opset entry per domain, sorted"
    got = T.run_onnx(onx, X, "ltv", 0)
    want = reg.predict(X)
    assert (got >= 0).all()
    assert np.all(np.abs(got - want) <= 1e-4 * np.maximum(1.0, np.abs(want)))
    assert not np.allclose(got, reg.model.predict(X), atol=1e-2)  # expm1 really applied


def test_classifier_outputs_without_zipmap():
    X, y = _data()
    lab = (y > np.median(y)).astype(int)
    for model in (T.gbc(0).fit(X, lab), T.logistic(0).fit(X, lab)):
        onx = T.export_classifier(model, 12, "c", 1, NAMES)
        m = onnx.load_from_string(onx)
        assert [o.name for o in m.graph.output] == ["label", "probabilities"]
        p = T.run_onnx(onx, X, "probabilities", 1)
        assert np.max(np.abs(p - model.predict_proba(X)[:, 1])) < 1e-5


def test_manifest_round_trips_through_toml():
    import tomllib

    text = T.render_manifest(
        "churn", 2, "binary_classification", "model.onnx", "ab" * 32,
        {"output": "probabilities", "column": 1},
        [{"name": "x", "dtype": "f32", "min": 0.0, "max": 1.0, "missing": {"impute": 0.5}},
         {"name": "r", "dtype": "category", "categories": ["a", "b \"q\""], "missing": "reject"}],
        "golden.csv", 1e-5,
        {"description": "d", "seed": 3, "metrics": {"roc_auc": 0.9}, "flag": True},
    )
    doc = tomllib.loads(text)
    assert doc["features"][1]["categories"] == ["a", 'b "q"']
    assert doc["golden"] == {"file": "golden.csv", "tolerance": 1e-5}
    assert doc["card"]["metrics"] == {"roc_auc": 0.9} and doc["card"]["flag"] is True
    assert doc["score"] == {"output": "probabilities", "column": 1}
