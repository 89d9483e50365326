#!/usr/bin/env python3
"""segscore training pipeline.

    python training/pipeline.py fit --events orders.csv --cutoff 2025-01-01 \\
        --model-repository models          # your own data -> next versions
    python training/pipeline.py synthetic --customers 50000 --seed 20261123 \\
        --workdir training/out --model-repository models   # what `make models` runs

`synthetic` generates data, then features -> split -> train -> export, and

writes
    <workdir>/events.parquet, <workdir>/customers.csv     raw synthetic data
    <workdir>/features_train.csv, features_valid.csv      features + labels (missing = empty)
    <workdir>/summary.json                                 metrics of every model
    <repository>/churn/2/        GradientBoostingClassifier, target churned
    <repository>/propensity/2/   chosen on an inner split (boosting vs logistic), target purchase_30d
    <repository>/ltv/1/          GradientBoostingRegressor (log1p target baked into the graph)
    <samples>/sample_users.csv, sample_users_purchases_only.csv

Same seed -> same data, metrics and model.onnx bytes. Only `trained_at` in the
manifests changes between runs (set SOURCE_DATE_EPOCH to pin it too).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import features as F  # noqa: E402
import fit as FIT  # noqa: E402
import generate as G  # noqa: E402
import train as T  # noqa: E402

DEFAULT_CUTOFF = "2025-01-01"
SAMPLE_CUTOFF = "2025-09-01"
VALID_SHARE = 0.3
INNER_SHARE = 0.2


def _log(msg: str, t0: float):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


def _data_text(customers: int, seed: int, cutoff: str) -> str:
    return (
        f"synthetic retail data from training/generate.py (seed {seed}, {customers} customers): "
        "BG/NBD purchases (gamma rates, beta dropout) with seasonality, Gamma-Gamma spend, "
        "sessions/cart/checkout activity tied to purchase intent, weekly email opens, "
        "15% untracked (purchases only) customers, ~9% missing region. "
        f"Features at cutoff {cutoff} from events before it; labels from [cutoff, cutoff + N days)."
    )


def _split_text(seed: int, n_train: int, n_valid: int) -> str:
    return (
        f"customer level, one row per customer: validation when blake2b('{seed}:split:<customer_id>') "
        f"< {VALID_SHARE}; {n_train} training / {n_valid} validation customers, none in both. "
        f"Model choices were made on an inner {INNER_SHARE:.0%} of the training customers; "
        "metrics are on the validation customers only."
    )


def _importances(model, names) -> dict:
    imp = getattr(model, "feature_importances_", None)
    if imp is None:
        return {}
    return {n: round(float(v), 4) for n, v in zip(names, imp)}


def _golden_frame(valid_df: pd.DataFrame, rows: np.ndarray, expected: np.ndarray, names) -> pd.DataFrame:
    g = valid_df.iloc[rows][["customer_id"] + names].reset_index(drop=True)
    g["expected"] = expected[rows].astype(np.float64)
    return g


def run(
    customers: int = 50_000,
    seed: int = 20261123,
    workdir: str | Path = HERE / "out",
    models: str | Path = HERE.parent / "models",
    samples: str | Path | None = HERE,
    cutoff: str = DEFAULT_CUTOFF,
    sample_customers: int = 1000,
    versions: dict | None = None,
    events_format: str = "parquet",
) -> dict:
    t0 = time.time()
    versions = {"churn": 2, "ltv": 1, "propensity": 2, **(versions or {})}
    workdir, models = Path(workdir), Path(models)
    workdir.mkdir(parents=True, exist_ok=True)
    schema = F.load_schema()
    names = [f.name for f in schema]
    imputes = {f.name: f.impute for f in schema if not f.reject_missing}

    # 1. raw data
    ev_path = workdir / f"events.{events_format}"
    at_path = workdir / "customers.csv"
    stats = G.generate(ev_path, at_path, customers=customers, seed=seed)
    _log(f"generated {stats['events']:,} events for {customers:,} customers -> {ev_path}", t0)

    # 2. features + labels
    events = F.read_events(ev_path)
    attrs = F.read_attributes(at_path)
    df = F.build_features(events, attrs, cutoff, labels=True, schema=schema)
    # The same customers seen through a purchases-only file (an order table), to
    # report how the models do when behavioural and email features are missing.
    df_po = F.build_features(F.purchases_only(events), attrs, cutoff, labels=True, schema=schema)
    del events
    _log(f"built features for {len(df):,} customers at cutoff {cutoff}", t0)

    # 3. customer-level split
    valid = T.validation_mask(df["customer_id"], seed, VALID_SHARE)
    tr, va = df[~valid].reset_index(drop=True), df[valid].reset_index(drop=True)
    F.write_feature_csv(workdir / "features_train.csv", tr, schema, extra=list(F.LABELS))
    F.write_feature_csv(workdir / "features_valid.csv", va, schema, extra=list(F.LABELS))
    assert not set(tr["customer_id"]) & set(va["customer_id"])
    Xt = F.to_matrix(F.impute(tr, schema), schema)
    Xv = F.to_matrix(F.impute(va, schema), schema)
    inner = T.hash_share(tr["customer_id"], seed, "inner") < INNER_SHARE
    va_po = df_po[df_po["customer_id"].isin(set(va["customer_id"]))].reset_index(drop=True)
    Xv_po = F.to_matrix(F.impute(va_po, schema), schema)
    po_note = (
        f"metrics_purchases_only: the same validation customers ({len(va_po)} of {len(va)} are identifiable "
        "without behavioural events) with features built from their purchases only, so sessions, cart, "
        "checkout and email features are missing and imputed"
    )
    _log(f"split: {len(tr):,} train / {len(va):,} validation customers", t0)

    golden_idx = T.golden_rows(va, seed, schema=schema)
    common = {
        "data": _data_text(customers, seed, cutoff),
        "split": _split_text(seed, len(tr), len(va)),
        "trained_at": T.trained_at(),
        "seed": seed,
        "cutoff": cutoff,
        "features_source": "training/features.py (imputation from the manifest, then float32 matrix in manifest order)",
    }
    col = {n: i for i, n in enumerate(names)}
    recency_v = Xv[:, col["recency_days"]].astype(np.float64)  # imputed as the server does
    p90_v = Xv[:, col["purchases_90d"]].astype(np.float64)
    results = {}

    # 4a. churn --------------------------------------------------------------------------
    y_t, y_v = tr["churned"].to_numpy(), va["churned"].to_numpy()
    model = T.gbc(seed).fit(Xt, y_t)
    onx = T.export_classifier(model, len(names), "churn", versions["churn"], names)
    p = T.run_onnx(onx, Xv, "probabilities", 1)
    parity = float(np.max(np.abs(p - model.predict_proba(Xv)[:, 1])))
    metrics = T._round(T.classifier_metrics(y_v, p))
    base_rate = float(y_t.mean())
    baselines = T._round(
        {
            "roc_auc_recency_days": T.roc_auc_score(y_v, recency_v),
            "roc_auc_purchases_90d": T.roc_auc_score(y_v, -p90_v),
            "log_loss_base_rate": T.log_loss(y_v, np.full(len(y_v), base_rate), labels=[0, 1]),
        }
    )
    card = {
        "description": "Probability that the customer makes no purchase in the 90 days after the scoring date (churned = 1).",
        "intended_use": "Rank and target customers for retention; score = probabilities[:, 1]. Not for decisions about individuals without review; trained on synthetic data, retrain on your own before real use.",
        **common,
        "label": "churned: no purchase in [cutoff, cutoff + 90 days)",
        "algorithm": "sklearn GradientBoostingClassifier (200 trees, depth 3, learning_rate 0.1, subsample 0.8). HistGradientBoostingClassifier was within 0.003 ROC AUC in a development comparison, but skl2onnx 1.20 fails to convert it, so it was not used",
        "onnx_parity_max_abs_diff": float(f"{parity:.3g}"),
        "purchases_only_note": po_note,
        "metrics": metrics,
        "metrics_purchases_only": T._round(T.classifier_metrics(
            va_po["churned"].to_numpy(), T.run_onnx(onx, Xv_po, "probabilities", 1))),
        "baselines": baselines,
        "feature_importance": _importances(model, names),
    }
    golden = _golden_frame(va, golden_idx, p, names)
    T.write_version(models, "churn", versions["churn"], "binary_classification", onx,
                    {"output": "probabilities", "column": 1}, golden, card)
    results["churn"] = {"metrics": metrics, "baselines": baselines, "parity": parity, "bytes": len(onx)}
    results["churn"]["metrics_purchases_only"] = card["metrics_purchases_only"]
    _log(f"churn v{versions['churn']}: AUC {metrics['roc_auc']:.4f} vs recency-only {baselines['roc_auc_recency_days']:.4f}", t0)

    # 4b. propensity ----------------------------------------------------------------------
    y_t, y_v = tr["purchase_30d"].to_numpy(), va["purchase_30d"].to_numpy()
    cands = [
        T.Candidate("gradient_boosting", T.gbc, "sklearn GradientBoostingClassifier (200 trees, depth 3, learning_rate 0.1, subsample 0.8)"),
        T.Candidate("logistic_regression", T.logistic, "sklearn StandardScaler + LogisticRegression (C=1) in one pipeline"),
    ]
    pick, inner_scores = T.select(
        cands, Xt, y_t, inner, seed,
        lambda y, m, X: T.log_loss(y, m.predict_proba(X)[:, 1], labels=[0, 1]), higher_is_better=False,
    )
    model = pick.make(seed).fit(Xt, y_t)
    onx = T.export_classifier(model, len(names), "propensity", versions["propensity"], names)
    p = T.run_onnx(onx, Xv, "probabilities", 1)
    parity = float(np.max(np.abs(p - model.predict_proba(Xv)[:, 1])))
    metrics = T._round(T.classifier_metrics(y_v, p))
    base_rate = float(y_t.mean())
    baselines = T._round(
        {
            "roc_auc_purchases_90d": T.roc_auc_score(y_v, p90_v),
            "roc_auc_recency_days": T.roc_auc_score(y_v, -recency_v),
            "log_loss_base_rate": T.log_loss(y_v, np.full(len(y_v), base_rate), labels=[0, 1]),
        }
    )
    other = [c for c in cands if c is not pick][0]
    card = {
        "description": "Probability that the customer purchases at least once in the 30 days after the scoring date.",
        "intended_use": "Rank customers for campaigns and offers; score = probabilities[:, 1]. Trained on synthetic data, retrain on your own before real use.",
        **common,
        "label": "purchase_30d: at least one purchase in [cutoff, cutoff + 30 days)",
        "algorithm": pick.description,
        "selection": (
            f"{pick.key} chosen over {other.key} by log loss on the inner split "
            f"({inner_scores[pick.key]:.5f} vs {inner_scores[other.key]:.5f}); "
            "boosting captures the non-linear recency x frequency interplay and count thresholds a linear model on raw features cannot"
            if pick.key == "gradient_boosting"
            else f"{pick.key} chosen over {other.key} by log loss on the inner split ({inner_scores[pick.key]:.5f} vs {inner_scores[other.key]:.5f})"
        ),
        "onnx_parity_max_abs_diff": float(f"{parity:.3g}"),
        "purchases_only_note": po_note,
        "metrics": metrics,
        "metrics_purchases_only": T._round(T.classifier_metrics(
            va_po["purchase_30d"].to_numpy(), T.run_onnx(onx, Xv_po, "probabilities", 1))),
        "baselines": baselines,
        "inner_split_log_loss": T._round(inner_scores),
    }
    if pick.key == "gradient_boosting":
        card["feature_importance"] = _importances(model, names)
    golden = _golden_frame(va, golden_idx, p, names)
    T.write_version(models, "propensity", versions["propensity"], "binary_classification", onx,
                    {"output": "probabilities", "column": 1}, golden, card)
    results["propensity"] = {"metrics": metrics, "baselines": baselines, "parity": parity, "bytes": len(onx),
                             "picked": pick.key, "inner_log_loss": inner_scores}
    results["propensity"]["metrics_purchases_only"] = card["metrics_purchases_only"]
    _log(f"propensity v{versions['propensity']} ({pick.key}): AUC {metrics['roc_auc']:.4f} vs purchases_90d-only {baselines['roc_auc_purchases_90d']:.4f}", t0)

    # 4c. ltv -----------------------------------------------------------------------------
    y_t, y_v = tr["ltv_365d"].to_numpy(), va["ltv_365d"].to_numpy()
    cands = [
        T.Candidate("gbr_log1p", T.gbr_log, "sklearn GradientBoostingRegressor (200 trees, depth 3, learning_rate 0.1, subsample 0.8, squared error) on log1p(ltv_365d); the ONNX graph applies expm1 and clamps at 0"),
        T.Candidate("gbr_huber", T.gbr_huber, "sklearn GradientBoostingRegressor (200 trees, depth 3, learning_rate 0.1, subsample 0.8, huber loss) on ltv_365d; the ONNX graph clamps at 0"),
    ]
    pick, inner_scores = T.select(
        cands, Xt, y_t, inner, seed,
        lambda y, m, X: T.spearmanr(m.predict(X), y)[0], higher_is_better=True,
    )
    reg = pick.make(seed).fit(Xt, y_t)
    onx = T.export_regressor(reg, len(names), "ltv", versions["ltv"], names)
    pred = T.run_onnx(onx, Xv, "ltv", 0)
    parity = float(np.max(np.abs(pred - reg.predict(Xv)) / np.maximum(1.0, np.abs(reg.predict(Xv)))))
    metrics = T._round(T.regression_metrics(y_v, pred))
    mt = Xv[:, col["monetary_total"]].astype(np.float64)
    tenure = Xv[:, col["tenure_days"]].astype(np.float64)
    mean_v = Xv[:, col["monetary_mean"]].astype(np.float64)
    lifetime = mt * 365.0 / np.maximum(tenure, 30.0)
    recent = p90_v * mean_v * 365.0 / 90.0
    bl = T.regression_metrics(y_v, lifetime)
    br = T.regression_metrics(y_v, recent)
    baselines = T._round(
        {
            "carry_forward_spearman": bl["spearman"],
            "carry_forward_mae": bl["mae"],
            "carry_forward_top_decile_capture": bl["top_decile_capture"],
            "recent_90d_carry_forward_spearman": br["spearman"],
            "recent_90d_carry_forward_mae": br["mae"],
            "zero_mae": float(np.mean(np.abs(y_v))),
        }
    )
    card = {
        "description": "Expected spend in the 365 days after the scoring date (same currency as the purchase amounts).",
        "intended_use": "Rank customers by future value, budget retention and acquisition; score = ltv[:, 0]. The log1p target makes it a typical (median-like) value, not a mean: sums over customers underestimate total revenue. Trained on synthetic data.",
        **common,
        "label": "ltv_365d: sum of purchase amounts in [cutoff, cutoff + 365 days)",
        "algorithm": pick.description,
        "selection": f"{pick.key} chosen over {[c.key for c in cands if c is not pick][0]} by Spearman on the inner split ({', '.join(f'{k} {v:.4f}' for k, v in inner_scores.items())})",
        "baseline_definitions": "carry_forward = monetary_total * 365 / max(tenure_days, 30) (lifetime spend rate carried forward for a year); recent_90d_carry_forward = purchases_90d * monetary_mean * 365 / 90; zero = predict 0 for everyone",
        "onnx_parity_max_rel_diff": float(f"{parity:.3g}"),
        "purchases_only_note": po_note,
        "metrics": metrics,
        "metrics_purchases_only": T._round(T.regression_metrics(
            va_po["ltv_365d"].to_numpy(), T.run_onnx(onx, Xv_po, "ltv", 0))),
        "baselines": baselines,
        "inner_split_spearman": T._round(inner_scores),
        "feature_importance": _importances(reg.model, names),
    }
    golden = _golden_frame(va, golden_idx, pred, names)
    T.write_version(models, "ltv", versions["ltv"], "regression", onx, {"output": "ltv", "column": 0}, golden, card)
    results["ltv"] = {"metrics": metrics, "baselines": baselines, "parity": parity, "bytes": len(onx),
                      "picked": pick.key, "inner_spearman": inner_scores}
    results["ltv"]["metrics_purchases_only"] = card["metrics_purchases_only"]
    _log(f"ltv v{versions['ltv']} ({pick.key}): Spearman {metrics['spearman']:.4f} / MAE {metrics['mae']:.2f} vs carry-forward {baselines['carry_forward_spearman']:.4f} / {baselines['carry_forward_mae']:.2f}", t0)

    # 5. sample input files -----------------------------------------------------------------
    if samples is not None:
        write_samples(Path(samples), workdir, seed, sample_customers, schema)
        _log(f"wrote {sample_customers} sample users to {samples}", t0)

    summary = {"customers": customers, "seed": seed, "cutoff": cutoff, "n_train": len(tr), "n_valid": len(va),
               "events": stats["events"], "imputes": imputes, "models": results,
               "seconds": round(time.time() - t0, 1)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def write_samples(samples: Path, workdir: Path, seed: int, n: int, schema) -> None:
    """1,000 customers from a separately seeded dataset at another cutoff, with their
    natural missing values; and the same customers built from purchases only."""
    sdir = workdir / "samples"
    ev_path, at_path = sdir / "events.parquet", sdir / "customers.csv"
    G.generate(ev_path, at_path, customers=int(n * 1.6), seed=seed + 1, id_prefix="S")
    events = F.read_events(ev_path)
    attrs = F.read_attributes(at_path)
    full = F.build_features(events, attrs, SAMPLE_CUTOFF, labels=False, schema=schema)
    only = F.build_features(F.purchases_only(events), attrs, SAMPLE_CUTOFF, labels=False, schema=schema)
    ids = full["customer_id"][full["customer_id"].isin(only["customer_id"])].iloc[:n]
    if len(ids) < n:
        raise RuntimeError(f"only {len(ids)} sample customers; generate more")
    full = full.set_index("customer_id").loc[ids].reset_index()
    only = only.set_index("customer_id").loc[ids].reset_index()
    samples.mkdir(parents=True, exist_ok=True)
    F.write_feature_csv(samples / "sample_users.csv", full, schema)
    F.write_feature_csv(samples / "sample_users_purchases_only.csv", only, schema)


def print_summary(s: dict) -> None:
    m = s["models"]
    c, p, l = m["churn"], m["propensity"], m["ltv"]
    rows = [
        ("churn", "ROC AUC", c["metrics"]["roc_auc"], "recency_days only", c["baselines"]["roc_auc_recency_days"]),
        ("churn", "log loss", c["metrics"]["log_loss"], "base rate", c["baselines"]["log_loss_base_rate"]),
        ("propensity", "ROC AUC", p["metrics"]["roc_auc"], "purchases_90d only", p["baselines"]["roc_auc_purchases_90d"]),
        ("propensity", "ROC AUC", p["metrics"]["roc_auc"], "recency_days only", p["baselines"]["roc_auc_recency_days"]),
        ("propensity", "log loss", p["metrics"]["log_loss"], "base rate", p["baselines"]["log_loss_base_rate"]),
        ("ltv", "Spearman", l["metrics"]["spearman"], "carry-forward", l["baselines"]["carry_forward_spearman"]),
        ("ltv", "MAE", l["metrics"]["mae"], "carry-forward", l["baselines"]["carry_forward_mae"]),
        ("ltv", "Spearman", l["metrics"]["spearman"], "recent-90d carry-forward", l["baselines"]["recent_90d_carry_forward_spearman"]),
        ("ltv", "MAE", l["metrics"]["mae"], "recent-90d carry-forward", l["baselines"]["recent_90d_carry_forward_mae"]),
    ]
    print(f"\nvalidation ({s['n_valid']:,} customers; trained on {s['n_train']:,}):")
    print(f"  {'model':<11}{'metric':<10}{'model':>10}   {'baseline':<26}{'value':>10}")
    for name, metric, v, bname, bv in rows:
        print(f"  {name:<11}{metric:<10}{v:>10.4f}   {bname:<26}{bv:>10.4f}")
    print(f"  propensity picked {p['picked']}, ltv picked {l['picked']}; pipeline {s['seconds']}s")


SUBCOMMANDS = ("fit", "synthetic")


def _synthetic_parser(sub) -> None:
    ap = sub.add_parser(
        "synthetic", allow_abbrev=False,
        help="generate seeded synthetic data and train the shipped models (what `make models` runs)",
        description="generate -> features -> split -> train -> export on synthetic data (see the module doc)")
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--workdir", default=str(HERE / "out"))
    ap.add_argument("--model-repository", default=str(HERE.parent / "models"),
                    help="the model repository to write the shipped versions into")
    # The old spelling: `--models` is only ever a list of models elsewhere.
    ap.add_argument("--models", dest="deprecated_models", help=argparse.SUPPRESS)
    ap.add_argument("--samples", default=str(HERE), help="where sample_users*.csv go ('-' = skip)")
    ap.add_argument("--cutoff", default=DEFAULT_CUTOFF)
    ap.add_argument("--events-format", choices=["parquet", "csv"], default="parquet")


def _fit_parser(sub) -> None:
    ap = sub.add_parser(
        "fit", allow_abbrev=False,
        help="train churn, ltv, propensity and clusters on your own events and write them as next versions",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=FIT.__doc__)
    ap.add_argument("--events", required=True,
                    help="events file, CSV or Parquet: customer_id,timestamp,event,amount (purchases-only works)")
    ap.add_argument("--attributes", help="optional customer_id,region,signup_date file (CSV or Parquet)")
    ap.add_argument("--cutoff", required=True,
                    help="scoring date of the final snapshot (UTC); the events must reach cutoff + 365 days for ltv")
    ap.add_argument("--model-repository", default=str(HERE.parent / "models"),
                    help="the repository to add versions to (default: models); existing versions are never touched")
    ap.add_argument("--models", default=",".join(FIT.MODELS),
                    help="models to train, comma-separated (default: churn,ltv,propensity,clusters)")
    ap.add_argument("--report", metavar="DIR",
                    help="write the evaluation (report.json, report.md) to DIR and no model version")
    ap.add_argument("--allow-worse", action="store_true",
                    help="write a model even when it does not beat the best baseline on validation")
    ap.add_argument("--seed", type=int, default=20261123, help="seeds the split and every model")
    ap.add_argument("--snapshots", type=int, default=3,
                    help="earlier cutoffs stacked for training (default 3; 0 = train at the cutoff only)")
    ap.add_argument("--snapshot-days", type=int, default=28, help="days between snapshots (default 28)")
    ap.add_argument("--backtest", type=int, default=1, metavar="N",
                    help="evaluate at N cutoffs (the cutoff and N-1 earlier ones), the whole protocol at each, "
                         "and report every cutoff's figures in the report and the cards (default 1)")
    ap.add_argument("--backtest-days", type=int, metavar="D",
                    help="days between backtest cutoffs (default: --snapshot-days)")
    ap.add_argument("--jobs", type=int, metavar="N",
                    help="processes that train the models side by side (default: one per model, at most one per core)")
    ap.add_argument("--shards", type=int, metavar="N",
                    help="read the events in N customer shards so memory is bounded by a shard (default: one shard "
                         "per 8 M events); the figures do not depend on it")
    ap.add_argument("--observed-until", metavar="DATE",
                    help="when the data's observation ends (default: the last event); label windows must fit before it")
    ap.add_argument("--features", help="train on these features only (comma-separated, features.toml order kept)")
    ap.add_argument("--clusters", default="auto", metavar="K|auto",
                    help="K-Means clusters: a number, or auto (default) to choose k in 2..--clusters-max by the "
                         "validation customers' silhouette")
    ap.add_argument("--clusters-max", type=int, default=10, metavar="K",
                    help="the largest k --clusters auto tries (default 10)")


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help")):
        # The invocation before subcommands existed: options only = synthetic.
        print("warning: pipeline.py without a subcommand is deprecated; use `pipeline.py synthetic ...`",
              file=sys.stderr)
        argv = ["synthetic", *argv]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    sub = ap.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _synthetic_parser(sub)
    args = ap.parse_args(argv)
    if args.command == "synthetic" and args.deprecated_models is not None:
        print("warning: --models is deprecated; use --model-repository", file=sys.stderr)
        args.model_repository = args.deprecated_models
    if args.command == "fit":
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = set(args.models) - set(FIT.MODELS)
        if unknown or not args.models:
            ap.error(f"--models: unknown model(s) {sorted(unknown)}; choose from {', '.join(FIT.MODELS)}")
        args.features = [f.strip() for f in args.features.split(",")] if args.features else None
        if args.clusters != "auto" and not (args.clusters.isdigit() and int(args.clusters) >= 2):
            ap.error(f"--clusters: `{args.clusters}`: expected a number of clusters (at least 2) or auto")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.command == "fit":
        try:
            FIT.fit(
                events=args.events, attributes=args.attributes, cutoff=args.cutoff,
                repository=args.model_repository, models=tuple(args.models), report_dir=args.report,
                allow_worse=args.allow_worse, seed=args.seed, snapshots=args.snapshots,
                snapshot_days=args.snapshot_days, backtest=args.backtest, backtest_days=args.backtest_days, jobs=args.jobs,
                shards=args.shards,
                feature_names=args.features,
                observed_until=args.observed_until,
                clusters=args.clusters, clusters_max=args.clusters_max,
            )
        except FIT.GateError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except (ValueError, FileNotFoundError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        return
    s = run(
        customers=args.customers, seed=args.seed, workdir=args.workdir, models=args.model_repository,
        samples=None if args.samples == "-" else args.samples, cutoff=args.cutoff,
        events_format=args.events_format,
    )
    print_summary(s)


if __name__ == "__main__":
    main()
