"""Every shipped ONNX model version: sha256, manifest, golden set in onnxruntime."""
from pathlib import Path

import pytest

from model_checks import check_version, load_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = ["churn/2", "ltv/1", "propensity/2"]  # written by training/pipeline.py


def onnx_versions():
    found = []
    for manifest in sorted(MODELS.glob("*/*/model.toml")):
        if load_manifest(manifest.parent).get("format") == "onnx":
            found.append(str(manifest.parent.relative_to(MODELS)))
    return found


def test_the_pipeline_models_are_shipped():
    assert set(SHIPPED) <= set(onnx_versions())


@pytest.mark.parametrize("version", onnx_versions() or ["<none>"])
def test_golden_set_reproduces(version):
    assert version != "<none>", f"no ONNX model under {MODELS}"
    m = check_version(MODELS / version)
    card = m["card"]
    assert {"description", "intended_use", "data", "split", "trained_at", "seed", "algorithm"} <= set(card)
    assert card["metrics"] and card["baselines"]


def test_quality_bar_in_the_cards():
    churn = load_manifest(MODELS / "churn/2")["card"]
    assert churn["metrics"]["roc_auc"] > churn["baselines"]["roc_auc_recency_days"] + 0.02
    ltv = load_manifest(MODELS / "ltv/1")["card"]
    assert ltv["metrics"]["spearman"] > ltv["baselines"]["carry_forward_spearman"]
    assert ltv["metrics"]["mae"] < ltv["baselines"]["carry_forward_mae"]
    prop = load_manifest(MODELS / "propensity/2")["card"]
    assert prop["metrics"]["roc_auc"] > max(
        prop["baselines"]["roc_auc_purchases_90d"], prop["baselines"]["roc_auc_recency_days"]
    )


@pytest.mark.parametrize("name", ["sample_users.csv", "sample_users_purchases_only.csv"])
def test_sample_files(name):
    import features as F

    path = Path(__file__).resolve().parents[1] / name
    df = F.read_feature_csv(path)
    assert len(df) == 1000 and df["customer_id"].is_unique
    assert path.read_text().splitlines()[0] == ",".join(["customer_id"] + F.feature_names())
    behavioural = ["sessions_7d", "cart_adds_7d", "checkout_visits_7d", "cart_abandoned_24h", "email_engagement"]
    if "purchases_only" in name:
        assert df[behavioural].isna().all().all()
    else:
        assert df[behavioural].notna().any().all() and df[behavioural].isna().any().all()
    F.to_matrix(F.impute(df))  # servable as-is
