"""`pipeline.py fit` on a small purchases-only order table: next versions, untouched
old ones, truthful cards, the quality gate, determinism and the CLI."""
import hashlib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

import fit as FIT
import pipeline
from fit_data import CUTOFF, orders_csv
from model_checks import check_version, load_manifest

TRAINING = Path(__file__).resolve().parents[1]
SHIPPED = TRAINING.parent / "models"


def tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(TRAINING / "pipeline.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def orders(tmp_path_factory):
    return orders_csv(tmp_path_factory.mktemp("orders"))


@pytest.fixture(scope="module")
def fitted(orders, tmp_path_factory):
    """One CLI fit into a copy of the shipped repository."""
    repo = tmp_path_factory.mktemp("fit") / "models"
    shutil.copytree(SHIPPED, repo)
    before = tree_digest(repo)
    out = run_cli("fit", "--events", orders, "--cutoff", CUTOFF, "--model-repository", repo,
                  "--allow-worse", "--seed", 7, "--snapshots", 1)
    assert out.returncode == 0, out.stderr + out.stdout
    return repo, before, out


def test_fit_writes_next_versions_and_leaves_existing_ones_byte_identical(fitted):
    repo, before, out = fitted
    for line in ("wrote churn version 3", "wrote ltv version 2", "wrote propensity version 3",
                 "wrote clusters version 2"):
        assert line in out.stdout, out.stdout
    after = tree_digest(repo)
    assert {k: after[k] for k in before} == before, "an existing file changed"
    new = {str(Path(k).parent) for k in set(after) - set(before)}
    assert new == {"churn/3", "ltv/2", "propensity/3", "clusters/2"}
    assert not [p for p in repo.rglob(".staging-*")], "a staging directory was left behind"
    for version in new - {"clusters/2"}:
        check_version(repo / version, min_rows=150, every_region=False)


def test_clusters_are_the_next_version_in_the_served_contract(fitted, orders):
    """clusters/2 next to the shipped smartcore clusters/1: an ONNX clustering
    version whose golden set is what the server computes (nearest centroid of
    `scores`, its distance), with the k curve and the normalisation in its card."""
    import pandas as pd

    import clusters as CL
    import features as F

    repo = fitted[0]
    d = repo / "clusters/2"
    m = load_manifest(d)
    assert (m["task"], m["format"], m["score"]) == ("clustering", "onnx", {"output": "scores", "column": 0})
    assert [f["name"] for f in m["features"]] == list(CL.FEATURES) and m["golden"]["tolerance"] == 1e-5
    model = (d / "model.onnx").read_bytes()
    assert hashlib.sha256(model).hexdigest() == m["sha256"]
    schema = [f for f in F.load_schema() if f.name in CL.FEATURES]
    golden = F.read_feature_csv(d / "golden.csv", schema)
    header = (d / "golden.csv").read_text().splitlines()[0].split(",")
    assert header[-2:] == ["expected_cluster", "expected"] and len(golden) >= 150
    cluster, distance = CL.score(model, F.to_matrix(F.impute(golden, schema), schema))
    raw = pd.read_csv(d / "golden.csv")
    assert np.array_equal(cluster, raw["expected_cluster"].to_numpy())
    np.testing.assert_allclose(distance, raw["expected"].to_numpy(), rtol=1e-5, atol=1e-5)
    card = m["card"]
    sel = card["k_selection"]
    assert sel["k"] == list(range(2, 11)) and sel["chosen"] == sel["k"][int(np.argmax(sel["silhouette"]))]
    assert len(card["clusters"]) == sel["chosen"] == len(card["metrics"]["cluster_shares_valid"])
    # purchases-only: the behavioural columns are constant, weight 0
    assert card["normalization"]["sd"]["sessions_7d"] == 0.0 and card["normalization"]["sd"]["recency_days"] > 0
    assert card["data"]["sources"][0]["rows"] == sum(1 for _ in open(orders)) - 1


def test_cards_describe_the_data_given(fitted, orders):
    repo, _, out = fitted
    text_lines = (repo / "churn/3/model.toml").read_text()
    assert "generate" not in text_lines and "synthetic" not in text_lines.lower()
    assert "generated" not in out.stdout
    rows = sum(1 for _ in open(orders)) - 1
    sha = hashlib.sha256(orders.read_bytes()).hexdigest()
    for version in ("churn/3", "ltv/2", "propensity/3"):
        card = load_manifest(repo / version)["card"]
        (source,) = card["data"]["sources"]
        assert source["sha256"] == sha and source["rows"] == rows
        assert card["data"]["purchases_only"] is True
        assert card["data"]["events_by_type"] == {"purchase": rows}
        assert card["data"]["cutoff"] == "2025-01-01T00:00:00Z" and card["seed"] == 7
        assert card["data"]["missing_share_at_cutoff"]["sessions_7d"] == 1.0
        assert set(card["baselines"]) >= {"recency_alone", "rfm_gradient_boosting"}
        assert card["gate"]["best_baseline"] in card["baselines"]
        assert card["libraries"]["lifetimes"] == "0.11.3"
        lo, hi = card["metrics"][f"{card['gate']['metric']}_ci95"]
        assert lo <= card["metrics"][card["gate"]["metric"]] <= hi
    ltv = load_manifest(repo / "ltv/2")["card"]
    assert "bgnbd_gamma_gamma" in ltv["baselines"] and ltv["label_column"] == "ltv_365d"
    churn = load_manifest(repo / "churn/3")["card"]
    assert "bgnbd" in churn["baselines"]
    assert 0 < churn["base_rates"]["churned"] < 1


def test_ltv_is_a_mean_and_the_graph_computes_the_derived_features(fitted):
    import onnx

    repo = fitted[0]
    card = load_manifest(repo / "ltv/2")["card"]
    graph = onnx.load(str(repo / "ltv/2/model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert "Exp" in ops, "the Poisson model's log link is applied in the graph"
    assert [i.name for i in graph.input] == ["features"]
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_value == 12, "served on the 12 served features"
    assert "sum_ratio" in card["metrics"] and "sum_ratio_ci95" in card["metrics"]
    # The seasonal calibration is the graph's Mul, with the card's factor.
    cal = card["calibration"]
    assert cal["snapshot"] == "2024-01-03T00:00:00Z" and cal["factor"] != 1.0
    (factor,) = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name == "ltv_factor"]
    assert float(factor[0]) == pytest.approx(cal["factor"], rel=1e-6)
    assert "ltv_calibration" in [n.name for n in graph.node]
    for version in ("churn/3", "ltv/2", "propensity/3"):
        d = load_manifest(repo / version)["card"]["derived_features"]
        assert d["columns"][:4] == ["recency_over_gap", "purchase_rate", "recency_share", "recent_share"]
        assert set(d["bgnbd_parameters"]) == {"r", "alpha", "a", "b"}
        ops = {n.op_type for n in onnx.load(str(repo / version / "model.onnx")).graph.node}
        assert {"Concat", "Log", "Exp"} <= ops


def test_derived_columns_are_bit_identical_in_numpy_and_onnx():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper
    from sklearn.linear_model import LogisticRegression

    import derived as D
    import features as F
    import train as T

    names = [f.name for f in F.load_schema()]
    c = {n: i for i, n in enumerate(names)}
    rng = np.random.default_rng(0)
    X = np.zeros((3000, len(names)), np.float32)
    X[:, c["frequency"]] = rng.poisson(2, 3000)
    X[:10, c["frequency"]] = 0
    X[10:20, c["frequency"]] = 5000  # P(alive) underflows to 0 in both
    X[:, c["tenure_days"]] = rng.uniform(0, 900, 3000)
    X[:, c["recency_days"]] = X[:, c["tenure_days"]] * rng.uniform(0, 1, 3000).astype(np.float32)
    X[::7, c["recency_days"]] = 730.0  # the impute value of a customer who never bought
    X[:, c["purchases_90d"]] = np.minimum(rng.poisson(1, 3000), X[:, c["frequency"]])
    drv = D.Derived(names, {"r": 0.24, "alpha": 29.4, "a": 0.47, "b": 1.04})
    y = (rng.random(3000) < 0.3).astype(int)
    model = D.WithDerived(drv, LogisticRegression(max_iter=500)).fit(X, y)
    onx = onnx.load_from_string(T.export_classifier(model, len(names), "churn", 1, names))
    onx.graph.output.append(helper.make_tensor_value_info("derived_features", TensorProto.FLOAT, None))
    got = ort.InferenceSession(onx.SerializeToString()).run(["derived_features"], {"features": X})[0]
    want = drv.transform(X)
    assert got.shape == (3000, len(names) + 7)
    assert np.array_equal(got, want)


def test_backtest_reports_every_cutoff(orders, tmp_path):
    import json

    FIT.fit(orders, CUTOFF, None, models=("churn",), report_dir=tmp_path, snapshots=1, backtest=3,
            backtest_days=28, log=lambda *_: None)
    report = json.loads((tmp_path / "report.json").read_text())
    cutoffs = [b["cutoff"] for b in report["backtests"]]
    assert cutoffs == ["2025-01-01T00:00:00Z", "2024-12-04T00:00:00Z", "2024-11-06T00:00:00Z"]
    for b in report["backtests"]:
        assert [c["metric"] for c in b["models"]["churn"]["checks"]] == ["roc_auc", "log_loss"]
    assert report["backtests"][0]["models"]["churn"]["checks"] == report["models"]["churn"]["gate"]["checks"]
    for b in report["backtests"]:
        scores = b["models"]["churn"]["scores"]
        assert set(scores) == {"model", "recency_alone", "bgnbd", "rfm_logistic_regression", "rfm_gradient_boosting"}
        assert all(set(v) == {"roc_auc", "log_loss"} for v in scores.values())
    assert "every scorer at every cutoff" in (tmp_path / "report.md").read_text()
    assert "| 2024-11-06 | churn | roc_auc |" in (tmp_path / "report.md").read_text()


def test_the_gate_refuses_a_useless_feature_set(orders, tmp_path):
    repo = tmp_path / "models"
    out = run_cli("fit", "--events", orders, "--cutoff", CUTOFF, "--model-repository", repo,
                  "--models", "churn,ltv", "--features", "region", "--snapshots", 0)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "churn not written: roc_auc 0.5000 is" in out.stderr and "below the best baseline" in out.stderr
    # The calibrated total does not buy a useless LTV model a pass: it still ranks no one.
    assert "ltv not written: spearman" in out.stderr
    for m in ("churn", "ltv"):
        assert not (repo / m).exists() or not any((repo / m).iterdir())


def test_ltv_calibration_keeps_the_total_in_range_on_a_held_out_period(orders, tmp_path):
    """The evaluated model trained on snapshots before the cutoff, judged on the
    validation customers' following year; its factor measured a year back (labels
    that end before the cutoff). On this small draw the uncalibrated total is 29%
    over (the December features at a 1 January cutoff); calibrated it is in range."""
    import json

    FIT.fit(orders, CUTOFF, None, models=("ltv",), report_dir=tmp_path, jobs=1, log=lambda *_: None)
    ltv = json.loads((tmp_path / "report.json").read_text())["models"]["ltv"]
    cal, ratio = ltv["calibration"], ltv["metrics"]["sum_ratio"]
    assert cal["snapshot"] == "2024-01-03T00:00:00Z" and cal["buyers"] >= FIT.CALIBRATION_MIN_BUYERS
    assert 0.9 <= ratio <= 1.1
    assert not 0.9 <= ratio / cal["factor"] <= 1.1, "the draw no longer shows what the calibration fixes"
    assert "ltv seasonal calibration: factor" in (tmp_path / "report.md").read_text()


def test_no_calibration_without_a_year_of_history():
    import features as F
    import train as T

    day = F.US_PER_DAY
    start = F._cutoff_us("2021-01-01")
    assert FIT.calibration_possible(start + FIT.CALIBRATION_HISTORY_DAYS * day, start)
    assert not FIT.calibration_possible(start + FIT.CALIBRATION_HISTORY_DAYS * day - 1, start)
    model = T.PoissonMean(None, factor=0.5)
    cal = FIT.calibrate_ltv(model, None, F.load_schema(), F.load_schema())
    assert cal["factor"] == 1.0 and model.factor == 1.0 and cal["note"].startswith("none")


def test_same_seed_same_model_bytes(orders, tmp_path):
    digests = []
    for run in ("a", "b"):
        FIT.fit(orders, CUTOFF, tmp_path / run, models=("propensity", "clusters"), allow_worse=True, seed=3,
                snapshots=0, jobs=1, log=lambda *_: None)
        ms = [load_manifest(tmp_path / run / f"{m}/1") for m in ("propensity", "clusters")]
        for m in ms:
            onnx_file = tmp_path / run / m["name"] / "1/model.onnx"
            assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == m["sha256"]
        digests.append([m["sha256"] for m in ms])
    assert digests[0] == digests[1]


def test_report_writes_no_version(orders, tmp_path):
    FIT.fit(orders, CUTOFF, tmp_path / "models", models=("churn",), report_dir=tmp_path / "report",
            snapshots=0, log=lambda *_: None)
    assert not (tmp_path / "models").exists()
    import json
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["written"] == {} and "roc_auc" in report["models"]["churn"]["metrics"]


def test_a_cutoff_without_a_full_label_window_is_refused(orders, tmp_path):
    out = run_cli("fit", "--events", orders, "--cutoff", "2025-06-01", "--model-repository", tmp_path)
    assert out.returncode == 2
    assert "ltv: its label needs events until 2026-06-01" in out.stderr


def test_options_are_never_abbreviated():
    # `--events x.csv` used to be taken for `--events-format` by argparse's prefix matching.
    with pytest.raises(SystemExit):
        pipeline.parse_args(["synthetic", "--events", "x.csv"])
    with pytest.raises(SystemExit):
        pipeline.parse_args(["fit", "--event", "x.csv", "--cutoff", "2025-01-01"])
    a = pipeline.parse_args(["fit", "--events", "x.csv", "--cutoff", "2025-01-01", "--models", "churn,ltv"])
    assert a.models == ["churn", "ltv"] and a.model_repository.endswith("models")
    with pytest.raises(SystemExit):
        pipeline.parse_args(["fit", "--events", "x.csv", "--cutoff", "2025-01-01", "--models", "models/"])


def test_train_py_help_works():
    out = subprocess.run([sys.executable, str(TRAINING / "train.py"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "pipeline.py fit" in out.stdout


def test_fast_bootstrap_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random(500) < 0.3).astype(int)
    p = np.round(rng.random(500), 2)  # ties on purpose
    assert FIT._auc_fast(y, p) == pytest.approx(FIT._auc(y, p), abs=1e-12)
    assert FIT._logloss_fast(y, p) == pytest.approx(FIT._logloss(y, p), abs=1e-12)
    v = rng.gamma(1.0, 10.0, 500) * (rng.random(500) < 0.5)
    assert FIT._spearman_fast(v, p) == pytest.approx(FIT._spearman(v, p), abs=1e-12)


def test_customer_shards_give_the_same_figures(orders, tmp_path):
    import json

    reports = []
    for shards in (1, 3):
        FIT.fit(orders, CUTOFF, None, models=("churn", "ltv"), report_dir=tmp_path / str(shards), snapshots=1,
                shards=shards, log=lambda *_: None)
        r = json.loads((tmp_path / str(shards) / "report.json").read_text())
        reports.append((r["models"], r["data"]["events"], r["data"]["customers"]))
    assert reports[0] == reports[1]
