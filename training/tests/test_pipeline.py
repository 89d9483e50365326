"""End to end on a few thousand customers, into a temporary directory."""
import hashlib
import tomllib

import pytest

import features as F
import pipeline
from model_checks import check_version


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    summary = pipeline.run(
        customers=3000, seed=11, workdir=root / "out", models=root / "models",
        samples=root / "samples", sample_customers=200,
    )
    return root, summary


def test_every_version_is_complete_and_valid(small_run):
    root, summary = small_run
    for version in ("churn/2", "ltv/1", "propensity/2"):
        d = root / "models" / version
        assert sorted(p.name for p in d.iterdir()) == ["golden.csv", "model.onnx", "model.toml"]
        m = check_version(d)
        assert m["card"]["seed"] == 11


def test_metrics_are_sane(small_run):
    _, s = small_run
    churn, prop, ltv = (s["models"][k] for k in ("churn", "propensity", "ltv"))
    assert 0.8 < churn["metrics"]["roc_auc"] <= 1.0
    assert churn["metrics"]["roc_auc"] > churn["baselines"]["roc_auc_recency_days"]
    assert churn["metrics"]["log_loss"] < churn["baselines"]["log_loss_base_rate"]
    assert 0.75 < prop["metrics"]["roc_auc"] <= 1.0
    assert prop["metrics"]["log_loss"] < prop["baselines"]["log_loss_base_rate"]
    assert ltv["metrics"]["spearman"] > ltv["baselines"]["carry_forward_spearman"]
    assert ltv["metrics"]["mae"] < ltv["baselines"]["carry_forward_mae"]
    for k in ("churn", "propensity"):
        assert s["models"][k]["parity"] < 1e-5
    assert ltv["parity"] < 1e-4


def test_feature_tables_and_split(small_run):
    root, s = small_run
    tr = F.read_feature_csv(root / "out" / "features_train.csv")
    va = F.read_feature_csv(root / "out" / "features_valid.csv")
    assert len(tr) == s["n_train"] and len(va) == s["n_valid"]
    assert not set(tr["customer_id"]) & set(va["customer_id"])
    assert list(tr.columns) == ["customer_id"] + F.feature_names() + list(F.LABELS)
    assert tr[F.feature_names()].isna().any().any(), "missing values must stay empty, not imputed"
    assert set(tr["churned"].unique()) == {0.0, 1.0}
    samples = F.read_feature_csv(root / "samples" / "sample_users.csv")
    only = F.read_feature_csv(root / "samples" / "sample_users_purchases_only.csv")
    assert list(samples["customer_id"]) == list(only["customer_id"]) and len(samples) == 200
    assert only["sessions_7d"].isna().all()


def test_same_seed_same_models(small_run, tmp_path):
    root, first = small_run
    again = pipeline.run(customers=3000, seed=11, workdir=tmp_path / "out", models=tmp_path / "models", samples=None)
    assert again["models"]["churn"]["metrics"] == first["models"]["churn"]["metrics"]
    for version in ("churn/2", "ltv/1", "propensity/2"):
        a = (root / "models" / version / "model.onnx").read_bytes()
        b = (tmp_path / "models" / version / "model.onnx").read_bytes()
        assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), version
        with open(tmp_path / "models" / version / "model.toml", "rb") as f:
            assert tomllib.load(f)["sha256"] == hashlib.sha256(b).hexdigest()


def test_model_repository_option_and_its_deprecated_spelling(capsys):
    assert pipeline.parse_args(["synthetic", "--model-repository", "repo"]).model_repository == "repo"
    assert capsys.readouterr().err == ""
    # `--models` is a list of models everywhere else; for `synthetic` it is the
    # old spelling of the repository, accepted with a warning.
    assert pipeline.parse_args(["synthetic", "--models", "old"]).model_repository == "old"
    assert "--models is deprecated; use --model-repository" in capsys.readouterr().err


def test_the_invocation_without_a_subcommand_still_means_synthetic(capsys):
    args = pipeline.parse_args(["--customers", "10", "--model-repository", "repo"])
    assert (args.command, args.customers, args.model_repository) == ("synthetic", 10, "repo")
    assert "use `pipeline.py synthetic" in capsys.readouterr().err
