"""`pipeline.py fit`: train churn, ltv and propensity on a user's own events and
write each as the next version of its model, with a card derived from that data.

Protocol (what the card's `validation` says):
* customers are split by a seeded hash of their id: 30% are validation
  customers and never train the model that is evaluated;
* training rows are *stacked snapshots*: the training customers' features and
  labels at `snapshots` cutoffs spaced `snapshot_days` apart, all *before* the
  final cutoff (each labelled from its own window), so the evaluated model
  has never seen the final cutoff's time period either (time-based and
  customer-held-out validation at once);
* the candidate (boosting or logistic regression, log1p or Huber LTV) is chosen
  on an inner split of the training customers, never on the validation ones;
* every baseline is scored on the same validation rows; the gate compares the
  model with the best baseline there;
* the shipped model is then refitted on every customer and every snapshot,
  the final cutoff included.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.metrics import log_loss, roc_auc_score

import baselines as B
import features as F
import train as T

MODELS = ("churn", "ltv", "propensity")
LABEL_OF = {"churn": "churned", "ltv": "ltv_365d", "propensity": "purchase_30d"}
VALID_SHARE = 0.3
INNER_SHARE = 0.2
BOOTSTRAP = 200
LIBRARIES = ("numpy", "pandas", "pyarrow", "scipy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime", "lifetimes")


class GateError(RuntimeError):
    """A model did not beat the best baseline and --allow-worse was not given."""


def _log(msg: str, t0: float):
    print(f"[{time.time() - t0:6.1f}s] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# models (boosting sized so that 50k customers x 4 snapshots fit in the time budget)
# --------------------------------------------------------------------------------------
def gbc(seed: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(n_estimators=150, max_depth=3, learning_rate=0.1, subsample=0.5,
                                      random_state=seed)


def gbr_log(seed: int) -> T.LogTarget:
    return T.LogTarget(GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.1,
                                                 subsample=0.5, random_state=seed))


def gbr_huber(seed: int) -> T.Plain:
    return T.Plain(GradientBoostingRegressor(loss="huber", n_estimators=150, max_depth=3, learning_rate=0.1,
                                             subsample=0.5, random_state=seed))


CLASSIFIERS = [
    T.Candidate("gradient_boosting", gbc, "sklearn GradientBoostingClassifier (150 trees, depth 3, learning_rate 0.1, subsample 0.5)"),
    T.Candidate("logistic_regression", T.logistic, "sklearn StandardScaler + LogisticRegression (C=1)"),
]
REGRESSORS = [
    T.Candidate("gbr_log1p", gbr_log, "sklearn GradientBoostingRegressor (150 trees, depth 3, learning_rate 0.1, subsample 0.5) on log1p(ltv_365d), times a factor so that the total matches on the latest snapshot; the ONNX graph applies expm1, the factor and a clamp at 0"),
    T.Candidate("gbr_huber", gbr_huber, "sklearn GradientBoostingRegressor (huber loss, 150 trees, depth 3, learning_rate 0.1, subsample 0.5) on ltv_365d, times a factor so that the total matches on the latest snapshot; the ONNX graph applies the factor and clamps at 0"),
]


@dataclass
class Scaled:
    """A regressor times a factor fitted so that Σpredicted = Σactual on the rows it
    was fitted on. A log-target model predicts a typical (median-like) value; the
    factor turns it into a mean, so totals are a revenue forecast, and leaves the
    ranking (Spearman, top-decile capture) unchanged."""

    inner: object
    factor: float = 1.0

    def fit(self, X, y, calibrate_on=None):
        """`calibrate_on`: the rows the factor is fitted on (default all). The
        latest snapshot is used: spend drifts over time (an ageing cohort buys
        less), so the total of the most recent period is the one to match."""
        self.inner.fit(X, y)
        rows = slice(None) if calibrate_on is None else calibrate_on
        pred = self.inner.predict(X[rows])
        self.factor = float(np.sum(y[rows]) / np.sum(pred)) if np.sum(pred) > 0 else 1.0
        return self

    def predict(self, X):
        return self.inner.predict(X) * self.factor


# --------------------------------------------------------------------------------------
# metrics with bootstrap confidence intervals
# --------------------------------------------------------------------------------------
def _auc(y, p):
    return float(roc_auc_score(y, p)) if 0 < np.sum(y) < len(y) else float("nan")


def _logloss(y, p):
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


def _spearman(y, p):
    return float(spearmanr(p, y)[0])


# The same three in plain numpy for the bootstrap: sklearn's input checks cost
# ~30 ms a call, which made 200 resamples dominate the fit. Equal to the above
# (tests/test_fit.py checks): AUC is the Mann-Whitney statistic with average
# ranks for ties, Spearman the Pearson correlation of average ranks.
def _auc_fast(y, p):
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    r = rankdata(p)
    return float((r[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _logloss_fast(y, p):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _spearman_fast(y, p):
    a, b = rankdata(p), rankdata(y)
    a, b = a - a.mean(), b - b.mean()
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 0 else float("nan")


def _sum_ratio(y, p):
    return float(np.sum(p) / np.sum(y)) if np.sum(y) > 0 else float("nan")


# metric -> (reference implementation for the point value, fast one for resamples)
CLASSIFIER_METRICS = {"roc_auc": (_auc, _auc_fast), "log_loss": (_logloss, _logloss_fast)}
REGRESSION_METRICS = {"spearman": (_spearman, _spearman_fast), "sum_ratio": (_sum_ratio, _sum_ratio)}


def bootstrap(y, preds: dict[str, np.ndarray], fns: dict, seed: int, n: int = BOOTSTRAP) -> dict:
    """Point value and 95% percentile interval of every metric for every scorer,
    and of each scorer's difference to `model` (paired: the same resampled
    customers for all)."""
    rng = np.random.default_rng(seed)
    idx = [rng.integers(0, len(y), len(y)) for _ in range(n)]
    out = {}
    for who, p in preds.items():
        for m, (fn, fast) in fns.items():
            point = fn(y, p)
            samples = np.array([fast(y[i], p[i]) for i in idx])
            out.setdefault(who, {})[m] = point
            out[who][f"{m}_ci95"] = [float(np.nanpercentile(samples, 2.5)), float(np.nanpercentile(samples, 97.5))]
            out[who][f"_{m}_samples"] = samples
    return out


def _r(x, digits=4):
    if isinstance(x, (list, tuple)):
        return [_r(v, digits) for v in x]
    return float(f"{x:.{digits}g}") if isinstance(x, (float, np.floating)) and np.isfinite(x) else x


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    return T.sha256_file(Path(path))


def _iso(us: int) -> str:
    return pd.Timestamp(int(us), unit="us", tz="UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def describe_source(path: Path, rows: int) -> dict:
    return {"path": str(path), "sha256": sha256_file(path), "bytes": Path(path).stat().st_size, "rows": int(rows)}


def library_versions() -> dict:
    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = "not installed"
    return out


@dataclass
class Snapshots:
    cutoffs: list[str]            # [final, final - d, final - 2d, ...]
    frames: list[pd.DataFrame]    # features + labels per cutoff


def build_snapshots(events, attrs, cutoff, count: int, days: int, schema) -> Snapshots:
    final = pd.Timestamp(cutoff)
    final = final.tz_localize("UTC") if final.tzinfo is None else final.tz_convert("UTC")
    cutoffs = [(final - pd.Timedelta(days=days * k)) for k in range(count + 1)]
    frames = []
    for c in cutoffs:
        df = F.build_features(events, attrs, c, labels=True, schema=schema)
        df["snapshot"] = c.strftime("%Y-%m-%dT%H:%M:%SZ")
        frames.append(df)
    return Snapshots([c.strftime("%Y-%m-%dT%H:%M:%SZ") for c in cutoffs], frames)


# --------------------------------------------------------------------------------------
# the fit
# --------------------------------------------------------------------------------------
@dataclass
class ModelReport:
    name: str
    task: str
    metrics: dict
    baselines: dict
    gate: dict
    card: dict
    selection: dict = field(default_factory=dict)
    pick: T.Candidate | None = None
    label: str = ""
    y_all: np.ndarray | None = None  # the label over every customer and snapshot (the refit)
    final_model: object | None = None


def fit(
    events: str | Path,
    cutoff: str,
    repository: str | Path | None,
    attributes: str | Path | None = None,
    models: tuple[str, ...] = MODELS,
    report_dir: str | Path | None = None,
    allow_worse: bool = False,
    seed: int = 20261123,
    snapshots: int = 3,
    snapshot_days: int = 28,
    feature_names: list[str] | None = None,
    observed_until: str | None = None,
    log=print,
) -> dict:
    """Trains, evaluates against the baselines, gates, and writes next versions
    (unless `report_dir` is given: then only the evaluation is written). Returns
    a summary; raises GateError when a model was refused."""
    t0 = time.time()
    events, attributes = Path(events), Path(attributes) if attributes else None
    full_schema = F.load_schema()
    if feature_names:
        unknown = set(feature_names) - {f.name for f in full_schema}
        if unknown:
            raise ValueError(f"--features: unknown feature(s) {sorted(unknown)}; features.toml has "
                             f"{', '.join(f.name for f in full_schema)}")
        schema = [f for f in full_schema if f.name in feature_names]
    else:
        schema = full_schema
    names = [f.name for f in schema]

    ev = F.read_events(events)
    at = F.read_attributes(attributes) if attributes else None
    sources = [describe_source(events, len(ev))]
    if attributes:
        sources.append(describe_source(attributes, len(at)))
    counts = ev["event"].value_counts().to_dict()
    ts = ev["ts"].to_numpy()
    if not len(ts):
        raise ValueError(f"{events}: no events")
    cut_us = F._cutoff_us(cutoff)
    end_us = int(ts.max())
    horizon = {m: F.LABEL_WINDOW_DAYS[LABEL_OF[m]] for m in models}
    observed = F._cutoff_us(observed_until) if observed_until else end_us
    for m, days in horizon.items():
        # The label window must be observed. A file cannot say when its
        # observation ended, so the last event stands for it (or
        # --observed-until), with a slack of 2% of the window (7 days of 365): an
        # order export rarely ends with an order in its very last hours.
        slack = max(1.0, days / 50) * F.US_PER_DAY
        if observed < cut_us + days * F.US_PER_DAY - slack:
            raise ValueError(
                f"{m}: its label needs events until {_iso(cut_us + days * F.US_PER_DAY)} (cutoff + {days} days), "
                f"but {events.name} ends at {_iso(observed)}; choose an earlier --cutoff or leave {m} out of --models")
    if ts.min() >= cut_us:
        raise ValueError(f"{events.name}: no event before the cutoff {cutoff}")
    log(f"read {len(ev):,} events ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}) "
        f"for {ev['customer_id'].nunique():,} customers from {events}")

    snaps = build_snapshots(ev, at, cutoff, snapshots, snapshot_days, full_schema)
    final = snaps.frames[0]
    valid_ids = set(final["customer_id"][T.validation_mask(final["customer_id"], seed, VALID_SHARE)])
    train_rows = pd.concat(
        [f[~f["customer_id"].isin(valid_ids)] for f in snaps.frames[1:]] or [final[~final["customer_id"].isin(valid_ids)]],
        ignore_index=True)
    va = final[final["customer_id"].isin(valid_ids)].reset_index(drop=True)
    all_rows = pd.concat(snaps.frames, ignore_index=True)
    if len(va) < 50 or len(train_rows) < 100:
        raise ValueError(f"too few customers to train and validate: {len(train_rows)} training rows, "
                         f"{len(va)} validation customers")
    log(f"{len(final):,} customers at cutoff {snaps.cutoffs[0]}; {len(train_rows):,} training rows from "
        f"{len(snaps.cutoffs) - 1 or 1} snapshot(s), {len(va):,} validation customers")

    imp_t, imp_v, imp_all = (F.impute(d, full_schema) for d in (train_rows, va, all_rows))
    Xt, Xv, Xall = (F.to_matrix(d, schema) for d in (imp_t, imp_v, imp_all))
    # The inner split (candidate choice): training customers by another hash;
    # inner-valid rows are theirs at the latest training snapshot, inner-train
    # rows every other training customer's at every training snapshot (training
    # the candidates on the latest snapshot alone saved a third of the time but
    # picked logistic regression for propensity on CDNOW, 0.017 ROC AUC worse).
    inner_cust = T.hash_share(train_rows["customer_id"], seed, "inner") < INNER_SHARE
    latest = (train_rows["snapshot"] == train_rows["snapshot"].max()).to_numpy()
    inner_train, inner_valid = ~inner_cust, inner_cust & latest

    # BTYD fitted at the final cutoff on the training customers' purchases only.
    summ_v = B.btyd_summary(ev, va["customer_id"], snaps.cutoffs[0])
    summ_t = B.btyd_summary(ev, final["customer_id"][~final["customer_id"].isin(valid_ids)], snaps.cutoffs[0])
    btyd = B.BgNbd().fit(summ_t)
    # BG/NBD starts its clock at the first purchase: it says nothing about a
    # customer who has not bought yet (a signup from the attributes file). The
    # baseline gives those the training rows' mean outcome of such customers,
    # not the model's prior, which ranks them as fresh buyers.
    never_t = (train_rows["frequency"] == 0).to_numpy()
    never_v = (va["frequency"] == 0).to_numpy()

    def never_rate(y):
        return float(y[never_t].mean()) if never_t.any() else float(y.mean())

    rfm_t, rfm_v = B.rfm_matrix(train_rows), B.rfm_matrix(va)
    rec_t, rec_v = rfm_t[:, 0], rfm_v[:, 0]
    log(f"baselines: BG/NBD + Gamma-Gamma fitted on {int(summ_t['bought'].sum()):,} training customers")

    missing = {f.name: round(float(final[f.name].isna().mean()), 4) for f in full_schema}
    data_card = {
        "sources": sources,
        "purchases_only": set(counts) <= {"purchase"},
        "events": int(len(ev)),
        "events_by_type": {k: int(v) for k, v in sorted(counts.items())},
        "customers": int(len(final)),
        "date_range": [_iso(int(ts.min())), _iso(end_us)],
        "observed_until": _iso(observed),
        "cutoff": snaps.cutoffs[0],
        "snapshots": snaps.cutoffs,
        "missing_share_at_cutoff": missing,
        "imputation": {f.name: ("reject" if f.reject_missing else f.impute) for f in schema},
    }
    protocol = (
        f"customers split by blake2b('{seed}:split:<customer_id>') < {VALID_SHARE}: {len(va):,} validation "
        f"customers scored at the cutoff {snaps.cutoffs[0]}; the evaluated model was trained on the other "
        f"customers at {len(snaps.cutoffs) - 1} earlier snapshot(s) ({', '.join(snaps.cutoffs[1:]) or 'none: the cutoff itself'}; "
        f"{len(train_rows):,} rows, each labelled from its own window), so it saw neither these customers nor this "
        f"period. Candidates chosen on an inner {INNER_SHARE:.0%} of the training customers. Baselines scored on the "
        f"same validation customers. The written model was then refitted on all {len(all_rows):,} rows (every "
        f"customer, every snapshot, the cutoff included). Intervals: {BOOTSTRAP} bootstrap resamples of the "
        "validation customers, 95% percentile.")
    common = {
        "trained_at": T.trained_at(), "seed": seed, "cutoff": snaps.cutoffs[0],
        "features_source": "training/features.py (imputation from the manifest, float32 in manifest order)",
        "libraries": library_versions(),
    }

    reports: list[ModelReport] = []
    for m in models:
        label = LABEL_OF[m]
        y_t = train_rows[label].to_numpy(float)
        y_v = va[label].to_numpy(float)
        y_all = all_rows[label].to_numpy(float)
        if m in ("churn", "propensity"):
            pick, inner = T.select(
                CLASSIFIERS, Xt[inner_train | inner_valid], y_t[inner_train | inner_valid].astype(int),
                inner_valid[inner_train | inner_valid], seed,
                lambda y, mod, X: _logloss(y, mod.predict_proba(X)[:, 1]), higher_is_better=False)
            model = pick.make(seed).fit(Xt, y_t.astype(int))
            p_model = model.predict_proba(Xv)[:, 1]
            churn_like = m == "churn"
            rec_score, rec_prob = B.recency_probability(rec_t, y_t.astype(int), rec_v, positive_when_recent=not churn_like)
            q = btyd.p_no_purchase(summ_v.loc[va["customer_id"]], F.LABEL_WINDOW_DAYS[label])
            p_btyd = np.where(never_v, never_rate(y_t), q if churn_like else 1 - q)
            lr = B.rfm_logistic(seed).fit(rfm_t, y_t.astype(int))
            hgb = B.rfm_boosting_classifier(seed).fit(rfm_t, y_t.astype(int))
            preds = {"model": p_model, "recency_alone": rec_prob, "bgnbd": p_btyd,
                     "rfm_logistic_regression": lr.predict_proba(rfm_v)[:, 1],
                     "rfm_gradient_boosting": hgb.predict_proba(rfm_v)[:, 1]}
            stats = bootstrap(y_v.astype(int), preds, CLASSIFIER_METRICS, seed)
            # The ROC AUC of recency alone is its raw ranking's (the logistic fit is monotone).
            stats["recency_alone"]["roc_auc"] = _auc(y_v.astype(int), rec_score)
            primary = "roc_auc"
        else:
            pick, inner = T.select(
                REGRESSORS, Xt[inner_train | inner_valid], y_t[inner_train | inner_valid],
                inner_valid[inner_train | inner_valid], seed,
                lambda y, mod, X: _spearman(y, mod.predict(X)), higher_is_better=True)
            model = Scaled(pick.make(seed)).fit(Xt, y_t, calibrate_on=latest)
            p_model = model.predict(Xv)
            hgb = B.rfm_boosting_regressor(seed).fit(rfm_t, y_t)
            vcol = {f.name: i for i, f in enumerate(full_schema)}
            Xv_full = F.to_matrix(imp_v, full_schema)
            carry = Xv_full[:, vcol["monetary_total"]] * 365.0 / np.maximum(Xv_full[:, vcol["tenure_days"]], 30.0)
            preds = {"model": p_model, "recency_alone": -rec_v,
                     "past_spend_carried_forward": carry.astype(float),
                     "bgnbd_gamma_gamma": np.where(never_v, never_rate(y_t),
                                                   btyd.ltv(summ_v.loc[va["customer_id"]], 365.0)),
                     "rfm_gradient_boosting": np.maximum(hgb.predict(rfm_v), 0.0)}
            stats = bootstrap(y_v, preds, REGRESSION_METRICS, seed)
            for k in ("sum_ratio", "sum_ratio_ci95", "_sum_ratio_samples"):
                del stats["recency_alone"][k]  # a ranking, not an amount
            primary = "spearman"

        base_names = [k for k in preds if k != "model"]
        best = max(base_names, key=lambda k: stats[k][primary])
        diff = stats["model"][f"_{primary}_samples"] - stats[best][f"_{primary}_samples"]
        margin = stats["model"][primary] - stats[best][primary]
        reasons = []
        if not margin > 0 and not (m == "ltv" and margin == 0):
            reasons.append(f"{primary} {stats['model'][primary]:.4f} is {-margin:.4f} below the best baseline "
                           f"({best} {stats[best][primary]:.4f})" if margin < 0 else
                           f"{primary} {stats['model'][primary]:.4f} only ties the best baseline ({best})")
        if m == "ltv" and not (0.9 <= stats["model"]["sum_ratio"] <= 1.1):
            reasons.append(f"sum(predicted)/sum(actual) {stats['model']['sum_ratio']:.3f} is outside 0.9-1.1")
        gate = {
            "metric": primary, "best_baseline": best, "best_baseline_value": _r(stats[best][primary]),
            "model_value": _r(stats["model"][primary]), "margin": _r(margin),
            "margin_ci95": _r([float(np.nanpercentile(diff, 2.5)), float(np.nanpercentile(diff, 97.5))]),
            "passed": not reasons, "reasons": reasons,
        }
        public = {who: {k: _r(v) for k, v in s.items() if not k.startswith("_")} for who, s in stats.items()}
        if m != "ltv":
            public["model"].update({k: _r(v) for k, v in T.classifier_metrics(y_v.astype(int), p_model).items()})
        else:
            public["model"].update({k: _r(v) for k, v in T.regression_metrics(y_v, p_model).items()})
        report = ModelReport(name=m, task="regression" if m == "ltv" else "binary_classification",
                             metrics=public["model"], baselines={k: v for k, v in public.items() if k != "model"},
                             gate=gate, card={}, selection={"picked": pick.key, "inner": {k: _r(v) for k, v in inner.items()}},
                             pick=pick, label=label, y_all=y_all)
        reports.append(report)
        log(f"{m}: {primary} {stats['model'][primary]:.4f} vs best baseline {best} {stats[best][primary]:.4f} "
            f"({'+' if margin >= 0 else ''}{margin:.4f})"
            + (f", sum ratio {stats['model']['sum_ratio']:.3f}" if m == "ltv" else "")
            + ("" if gate["passed"] else "  [below the gate]"))

    base_rates = {LABEL_OF[r.name]: _r(float(va[LABEL_OF[r.name]].mean())) for r in reports if r.name != "ltv"}
    if any(r.name == "ltv" for r in reports):
        base_rates["ltv_365d_mean"] = _r(float(va["ltv_365d"].mean()))
        base_rates["ltv_365d_share_zero"] = _r(float((va["ltv_365d"] == 0).mean()))

    # Refit on everything, export, golden set, card (not for --report: nothing is written).
    golden_idx = T.golden_rows(va, seed, schema=schema) if len(va) else np.array([], int)
    for r in ([] if report_dir is not None else reports):
        if r.name == "ltv":
            final_model = Scaled(r.pick.make(seed)).fit(
                Xall, r.y_all, calibrate_on=(all_rows["snapshot"] == snaps.cutoffs[0]).to_numpy())
        else:
            final_model = r.pick.make(seed).fit(Xall, r.y_all.astype(int))
        r.final_model = final_model
        r.card = {
            "description": {
                "churn": "Probability that the customer makes no purchase in the 90 days after the scoring date (churned = 1).",
                "propensity": "Probability that the customer purchases at least once in the 30 days after the scoring date.",
                "ltv": "Expected spend in the 365 days after the scoring date (same currency as the purchase amounts); "
                       "a mean, so sums over customers are a revenue forecast.",
            }[r.name],
            "intended_use": "Trained by `pipeline.py fit` on the data named in [card.data]; valid for customers "
                            "and periods like those. Review before decisions about individuals.",
            **common,
            "label": f"{r.label}: from [cutoff, cutoff + {F.LABEL_WINDOW_DAYS[r.label]} days)",
            "label_column": r.label,
            "label_window_days": F.LABEL_WINDOW_DAYS[r.label],
            "algorithm": r.pick.description,
            "selection": f"{r.pick.key} chosen on the inner split ({', '.join(f'{k} {v}' for k, v in r.selection['inner'].items())}; "
                         f"{'log loss, lower is better' if r.name != 'ltv' else 'Spearman, higher is better'})",
            "validation": protocol,
            "data": data_card,
            "base_rates": base_rates,
            "metrics": r.metrics,
            "baselines": r.baselines,
            "gate": r.gate,
        }
        if r.name == "ltv":
            r.card["calibration_factor"] = _r(final_model.factor, 6)
        imp = getattr(getattr(final_model, "inner", final_model), "model", final_model)
        if hasattr(imp, "feature_importances_"):
            r.card["feature_importance"] = {n: _r(float(v)) for n, v in zip(names, imp.feature_importances_)}

    summary = {
        "cutoff": snaps.cutoffs[0], "seed": seed, "data": data_card, "validation": protocol,
        "models": {r.name: {"metrics": r.metrics, "baselines": r.baselines, "gate": r.gate,
                            "picked": r.pick.key} for r in reports},
        "written": {}, "refused": {},
    }
    refused = [r for r in reports if not r.gate["passed"]]
    if report_dir is not None:
        rd = Path(report_dir)
        rd.mkdir(parents=True, exist_ok=True)
        summary["seconds"] = round(time.time() - t0, 1)
        (rd / "report.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
        (rd / "report.md").write_text(markdown_report(summary))
        log(f"wrote the evaluation to {rd / 'report.json'} and {rd / 'report.md'} (no model version written)")
        return summary

    repo = Path(repository)
    for r in reports:
        if not r.gate["passed"] and not allow_worse:
            summary["refused"][r.name] = r.gate["reasons"]
            continue
        version, d = write_next_version(repo, r, schema, va, golden_idx, Xv, seed)
        summary["written"][r.name] = version
        print(f"wrote {r.name} version {version} -> {d}", flush=True)
    summary["seconds"] = round(time.time() - t0, 1)
    log(f"done in {summary['seconds']}s")
    if refused and not allow_worse:
        raise GateError("; ".join(f"{r.name} not written: " + "; ".join(r.gate["reasons"]) for r in refused)
                        + " (--allow-worse writes it anyway)")
    return summary


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(type(o))


def markdown_report(s: dict) -> str:
    lines = [f"# fit report (cutoff {s['cutoff']}, seed {s['seed']})", "", s["validation"], "",
             "| model | metric | pipeline | " + "baselines |", "|---|---|---|---|"]
    for name, m in s["models"].items():
        metrics = ["roc_auc", "log_loss"] if name != "ltv" else ["spearman", "sum_ratio"]
        for k in metrics:
            base = "; ".join(f"{b} {v[k]}" for b, v in m["baselines"].items() if k in v)
            lines.append(f"| {name} | {k} | {m['metrics'].get(k)} {m['metrics'].get(k + '_ci95')} | {base} |")
    lines += ["", "gate: " + "; ".join(f"{n}: {'passed' if m['gate']['passed'] else 'FAILED ' + '; '.join(m['gate']['reasons'])}"
                                      for n, m in s["models"].items())]
    return "\n".join(lines) + "\n"


def next_version(model_dir: Path) -> int:
    existing = [int(p.name) for p in model_dir.iterdir() if p.name.isdigit()] if model_dir.is_dir() else []
    return max(existing, default=0) + 1


def write_next_version(repo: Path, r: ModelReport, schema, va, golden_idx, Xv, seed: int) -> tuple[int, Path]:
    """Reserves the next version number with an atomic mkdir (an empty directory
    without a manifest is ignored by the server), builds the version in a staging
    directory inside the model's directory (same filesystem), manifest last, and
    renames it over the reserved directory. Existing versions are never touched."""
    model_dir = repo / r.name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir)
    while True:
        target = model_dir / str(version)
        try:
            target.mkdir()
            break
        except FileExistsError:
            version += 1
    names = [f.name for f in schema]
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        model = r.final_model
        if r.task == "regression":
            onx = T.export_regressor(model.inner, len(names), r.name, version, names, factor=model.factor)
            score, out, col = {"output": "ltv", "column": 0}, "ltv", 0
        else:
            onx = T.export_classifier(model, len(names), r.name, version, names)
            score, out, col = {"output": "probabilities", "column": 1}, "probabilities", 1
        expected = T.run_onnx(onx, Xv, out, col)
        golden = va.iloc[golden_idx][["customer_id"] + names].reset_index(drop=True)
        golden["expected"] = expected[golden_idx].astype(np.float64)
        T.write_version_files(staging, r.name, version, r.task, onx, score, golden, r.card, schema)
        os.chmod(staging, 0o755)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        raise
    return version, target
