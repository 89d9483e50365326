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
    for line in ("wrote churn version 3", "wrote ltv version 2", "wrote propensity version 3"):
        assert line in out.stdout, out.stdout
    after = tree_digest(repo)
    assert {k: after[k] for k in before} == before, "an existing file changed"
    new = {str(Path(k).parent) for k in set(after) - set(before)}
    assert new == {"churn/3", "ltv/2", "propensity/3"}
    assert not [p for p in repo.rglob(".staging-*")], "a staging directory was left behind"
    for version in new:
        check_version(repo / version, min_rows=150, every_region=False)


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


def test_ltv_is_scaled_into_a_mean_inside_the_graph(fitted):
    import onnx

    repo = fitted[0]
    card = load_manifest(repo / "ltv/2")["card"]
    assert card["calibration_factor"] > 1.0, "a log-target model needs scaling up to be a mean"
    graph = onnx.load(str(repo / "ltv/2/model.onnx")).graph
    (factor,) = [i for i in graph.initializer if i.name == "ltv_factor"]
    assert onnx.numpy_helper.to_array(factor)[0] == pytest.approx(card["calibration_factor"], rel=1e-5)
    assert "sum_ratio" in card["metrics"] and "sum_ratio_ci95" in card["metrics"]


def test_the_gate_refuses_a_useless_feature_set(orders, tmp_path):
    repo = tmp_path / "models"
    out = run_cli("fit", "--events", orders, "--cutoff", CUTOFF, "--model-repository", repo,
                  "--models", "churn", "--features", "region", "--snapshots", 0)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "churn not written: roc_auc 0.5000 is" in out.stderr and "below the best baseline" in out.stderr
    assert not (repo / "churn").exists() or not any((repo / "churn").iterdir())


def test_same_seed_same_model_bytes(orders, tmp_path):
    digests = []
    for run in ("a", "b"):
        FIT.fit(orders, CUTOFF, tmp_path / run, models=("propensity",), allow_worse=True, seed=3,
                snapshots=0, log=lambda *_: None)
        m = load_manifest(tmp_path / run / "propensity/1")
        assert hashlib.sha256((tmp_path / run / "propensity/1/model.onnx").read_bytes()).hexdigest() == m["sha256"]
        digests.append(m["sha256"])
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
