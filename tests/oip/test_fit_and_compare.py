"""`pipeline.py fit` -> a running server, and `segscore models compare`, against the
release binary (SEGSCORE_BIN).

* a version written by `fit` into the repository of a running server becomes
  ready (OIP ModelReady for that version, from an unmodified tritonclient) with
  no restart; the test polls with a generous deadline instead of sleeping;
* `models compare` prints figures equal to sklearn.metrics / scipy on the same
  scores, computed here with onnxruntime in Python from the same rows.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from scipy.stats import spearmanr
from sklearn.metrics import brier_score_loss, log_loss, mean_absolute_error, roc_auc_score

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))
sys.path.insert(0, str(ROOT / "training" / "tests"))
import features as F  # noqa: E402
from fit_data import CUTOFF, orders_csv  # noqa: E402
from served import BIN, serve, stop  # noqa: E402

DEADLINE_S = 300  # a safety net on a loaded machine, not an expected duration


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
    d = tmp_path_factory.mktemp("fit_serving")
    return d, orders_csv(d / "orders")


def start_server(repo: Path):
    return serve(["--model-repository", repo], timeout=120)


def test_a_fitted_version_serves_without_a_restart(data):
    d, orders = data
    repo = d / "models"
    shutil.copytree(ROOT / "models", repo)
    proc, addr = start_server(repo)
    try:
        client = triton.InferenceServerClient(url=addr)
        assert client.is_model_ready("churn", model_version="2")
        assert not client.is_model_ready("churn", model_version="3")
        out = subprocess.run(
            [sys.executable, str(ROOT / "training" / "pipeline.py"), "fit", "--events", str(orders),
             "--cutoff", CUTOFF, "--model-repository", str(repo), "--models", "churn", "--allow-worse",
             "--snapshots", "1"],
            capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "wrote churn version 3" in out.stdout
        deadline = time.monotonic() + DEADLINE_S
        while not client.is_model_ready("churn", model_version="3"):
            assert proc.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "churn version 3 never became ready"
            time.sleep(0.2)  # poll interval, not a guess at how long loading takes
        # It answers with the new version's scores.
        golden = F.read_feature_csv(repo / "churn/3/golden.csv")
        x = F.to_matrix(F.impute(golden))
        inp = triton.InferInput("features", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        res = client.infer("churn", [inp], model_version="3")
        assert np.allclose(res.as_numpy("score").reshape(-1), golden["expected"].to_numpy(), atol=1e-5)
    finally:
        assert stop(proc) == 0


def onnx_scores(repo: Path, name: str, version: int, x: np.ndarray) -> np.ndarray:
    d = repo / name / str(version)
    import tomllib

    with open(d / "model.toml", "rb") as f:
        score = tomllib.load(f)["score"]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(d / "model.onnx"), so, providers=["CPUExecutionProvider"])
    return sess.run([score["output"]], {"features": x})[0][:, score["column"]].astype(np.float64)


def reference(y: np.ndarray, p: np.ndarray, binary: bool) -> dict:
    k = max(1, len(y) // 10)
    top = np.argsort(-p, kind="stable")[:k]
    out = {
        "spearman": spearmanr(p, y)[0],
        "mae": mean_absolute_error(y, p),
        "sum_ratio": p.sum() / y.sum(),
        "top_decile_lift": y[top].mean() / y.mean(),
    }
    if binary:
        bins = np.minimum((p * 10).astype(int), 9)
        ece = sum(abs(p[bins == b].mean() - y[bins == b].mean()) * (bins == b).sum()
                  for b in range(10) if (bins == b).any()) / len(y)
        out.update(roc_auc=roc_auc_score(y, p), log_loss=log_loss(y, p), brier=brier_score_loss(y, p), ece=ece)
    return out


# Two different binary models on one outcome, so the columns differ; the one
# shipped ONNX regression against itself.
@pytest.mark.parametrize("specs,label", [(("churn:2", "propensity:2"), "churned"), (("ltv:1", "ltv:1"), "ltv_365d")])
def test_compare_figures_equal_sklearn(data, specs, label):
    d, _ = data
    events = d / "orders" / "events.parquet"
    table = F.build_features(events, d / "orders" / "customers.csv", CUTOFF, labels=True)
    path = d / f"labelled_{label}.csv"
    F.write_feature_csv(path, table, extra=list(F.LABELS))
    out = subprocess.run(
        [str(BIN), "models", "compare", "--input", str(path), "--labels", str(path), "--label-column", label,
         "--model-repository", str(ROOT / "models"), "--json", "--workers", "1", *specs],
        capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    y = table[label].to_numpy(dtype=np.float64)
    assert got["rows"] == len(y) and got["rows_skipped"] == 0
    x = F.to_matrix(F.impute(table))
    binary = label != "ltv_365d"
    for report, spec in zip(got["models"], specs):
        name, version = spec.split(":")
        assert (report["name"], report["version"]) == (name, int(version))
        want = reference(y, onnx_scores(ROOT / "models", name, int(version), x), binary)
        assert set(want) <= set(report["metrics"])
        for metric, value in want.items():
            assert report["metrics"][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), metric
        if binary:
            assert sum(b["rows"] for b in report["reliability"]) == len(y)
    # The table form names both versions and the change.
    text = subprocess.run(
        [str(BIN), "models", "compare", "--input", str(path), "--labels", str(path), "--label-column", label,
         "--model-repository", str(ROOT / "models"), "--workers", "1", *specs],
        capture_output=True, text=True, check=True).stdout
    assert f"{specs[0]}" in text and "top_decile_lift" in text and "change" in text
