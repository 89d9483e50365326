"""`pipeline.py fit`: train churn, ltv, propensity and clusters on a user's own
events and write each as the next version of its model, with a card derived from
that data.

Protocol (what the card's `validation` says):
* customers are split by a seeded hash of their id: 30% are validation
  customers and never train the model that is evaluated;
* training rows are *stacked snapshots*: the training customers' features and
  labels at `snapshots` cutoffs spaced `snapshot_days` apart, all *before* the
  final cutoff (each labelled from its own window), so the evaluated model
  has never seen the final cutoff's time period either (time-based and
  customer-held-out validation at once);
* the models read the served features plus columns the ONNX graph computes
  from them (derived.py: inter-purchase ratios, BG/NBD P(alive) and P(quiet));
  the candidate (histogram boosting, logistic regression, their soft vote, for
  the classifiers also BG/NBD's own probability raw or recalibrated and blends
  of it with the best trained one: btyd_model.py) is chosen on an inner split
  of the training customers, never on the validation ones; LTV is a
  Poisson-loss boosting model (a mean, so totals are a forecast);
* every baseline is scored on the same validation rows; the gate compares the
  model with the best baseline there (classifiers: ROC AUC and log loss);
* LTV's mean is multiplied by a seasonal factor: Σactual/Σpredicted of the
  model at the snapshot 52 weeks before the cutoff (same season, labels that
  end before it), when the data reaches that far ([card.calibration]);
* --backtest N repeats all of this at N cutoffs and reports each;
* the shipped model is then refitted on every customer and every snapshot,
  the final cutoff included;
* clusters (clusters.py): K-Means at the cutoff, k chosen on the training
  customers by the validation customers' silhouette (--clusters auto), written
  as the next `clusters` version in the server's ONNX clustering contract.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata, spearmanr
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor, VotingClassifier
from sklearn.metrics import log_loss, roc_auc_score
from threadpoolctl import threadpool_limits

import baselines as B
import btyd_model as BM
import clusters as CL
import derived as D
import shards as SH
import features as F
import train as T

MODELS = ("churn", "ltv", "propensity", "clusters")
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
# models: histogram boosting (fast on 2 cores, converted by skl2onnx 1.20) on the
# served features plus the derived columns the graph computes (derived.py)
# --------------------------------------------------------------------------------------
HGB = dict(max_iter=150, learning_rate=0.05, max_leaf_nodes=8, min_samples_leaf=100, l2_regularization=1.0,
           early_stopping=False)
HGB_TEXT = "150 trees, at most 8 leaves, learning_rate 0.05, min_samples_leaf 100, l2 1.0"


def hgb_classifier(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(**HGB, random_state=seed)


def hgb_poisson(seed: int) -> T.PoissonMean:
    return T.PoissonMean(HistGradientBoostingRegressor(loss="poisson", **HGB, random_state=seed))


def soft_vote(seed: int) -> VotingClassifier:
    # flatten_transform=False: the only form skl2onnx 1.20 converts (predict_proba is the same).
    return VotingClassifier([("gradient_boosting", hgb_classifier(seed)), ("logistic_regression", T.logistic(seed))],
                            voting="soft", flatten_transform=False)


CLASSIFIERS = [
    T.Candidate("gradient_boosting", hgb_classifier, f"sklearn HistGradientBoostingClassifier ({HGB_TEXT})"),
    T.Candidate("logistic_regression", T.logistic, "sklearn StandardScaler + LogisticRegression (C=1)"),
    T.Candidate("soft_vote", soft_vote,
                f"sklearn VotingClassifier (soft): the mean of the probabilities of a HistGradientBoostingClassifier "
                f"({HGB_TEXT}) and a StandardScaler + LogisticRegression (C=1)"),
]
REGRESSORS = [
    T.Candidate("hgb_poisson", hgb_poisson,
                f"sklearn HistGradientBoostingRegressor (Poisson loss, log link; {HGB_TEXT}) on ltv_365d: it "
                "predicts the mean, so totals are a revenue forecast; times a seasonal calibration factor measured "
                "at the same season a year back when the data reaches that far (see [card.calibration]); the ONNX "
                "graph applies the link's Exp, the factor and a clamp at 0"),
]
DERIVED_TEXT = ("inputs are the served features plus columns the ONNX graph computes from them (training/derived.py): "
                "recency / mean inter-purchase gap, frequency / tenure, recency / tenure, purchases_90d / frequency, "
                "and BG/NBD P(alive), P(no purchase in 30 d), P(no purchase in 90 d) with the BG/NBD parameters "
                "fitted on the training customers' purchases baked in as constants")


PICKABLE = {c.key: c for c in CLASSIFIERS + REGRESSORS}
BLEND_WEIGHTS = (0.25, 0.5, 0.75)


def btyd_candidates(m: str) -> list[T.Candidate]:
    """The textbook model as a candidate (btyd_model.py): BG/NBD's own probability
    for this label, raw and Platt-recalibrated."""
    column, quiet = BM.COLUMN[m]
    out = []
    for platt in (False, True):
        proto = BM.BgNbdClassifier(column, quiet, platt)
        out.append(T.Candidate("bgnbd_platt" if platt else "bgnbd", partial(_make_btyd, column, quiet, platt),
                               proto.describe()))
    return out


# Module-level makers (partial, not lambdas): a picked candidate travels to the
# forked refit processes and must pickle.
def _make_btyd(column: str, quiet: bool, platt: bool, seed: int) -> BM.BgNbdClassifier:
    return BM.BgNbdClassifier(column, quiet, platt)


def _make_blend(base_make, btyd_make, weight: float, seed: int) -> BM.Blend:
    return BM.Blend(base_make(seed), btyd_make(seed), weight)


def blend_candidate(m: str, base_key: str, btyd_key: str, weight: float) -> T.Candidate:
    base = PICKABLE[base_key]
    btyd = {c.key: c for c in btyd_candidates(m)}[btyd_key]
    return T.Candidate(
        f"blend:{base_key}:{btyd_key}:{weight}",
        partial(_make_blend, base.make, btyd.make, weight),
        f"{weight:g} x [{base.description}] + {1 - weight:g} x [{btyd.description}] (the weight chosen on the "
        "inner split)")


def candidate_of(m: str, key: str) -> T.Candidate:
    """The candidate named `key` for model `m` (picks travel between processes by key)."""
    if key.startswith("blend:"):
        _, base_key, btyd_key, w = key.split(":")
        return blend_candidate(m, base_key, btyd_key, float(w))
    if key.startswith("bgnbd"):
        return {c.key: c for c in btyd_candidates(m)}[key]
    return PICKABLE[key]


# --------------------------------------------------------------------------------------
# LTV's seasonal calibration. The training rows are snapshots 4-12 weeks before
# the cutoff, and the served features carry no date: a model pools every
# snapshot's season. A cutoff after a peak (1 January, after Black Friday and
# December) shows every customer's recent activity inflated, and the pooled
# model reads that as a higher spend rate: on the synthetic data it over-forecast
# 1 January by 9-17% and under-forecast April-October by 7-12% (the BTYD and RFM
# baselines do the same). The over/under-forecast of *this* model at the same
# season a year back (52 weeks, the same weekday) measures that mismatch with
# labels that all end before the cutoff; the factor Σactual/Σpredicted there
# scales the served mean (a Mul in the ONNX graph). A factor measured on the
# latest snapshot instead (tried before) does not travel: it is the wrong season.
# --------------------------------------------------------------------------------------
CALIBRATION_DAYS = 364
CALIBRATION_HISTORY_DAYS = 90     # the data must start this long before the calibration snapshot
CALIBRATION_MIN_BUYERS = 100      # customers with a purchase in its label window


def calibration_possible(cal_us: int, data_start_us: int) -> bool:
    return cal_us - CALIBRATION_HISTORY_DAYS * F.US_PER_DAY >= data_start_us


def calibrate_ltv(model, frame: pd.DataFrame | None, full_schema, schema) -> dict:
    """Sets the (WithDerived-wrapped) PoissonMean's factor to Σactual/Σpredicted
    on `frame`, the customers at the same-season snapshot a year back, and says
    what it did. Without such a snapshot (too little history) the factor stays 1."""
    inner = model.model if isinstance(model, D.WithDerived) else model
    if not isinstance(inner, T.PoissonMean):
        return {"factor": 1.0, "note": "not a Poisson mean model"}
    inner.factor = 1.0
    if frame is None or not len(frame):
        return {"factor": 1.0, "note": f"none: the data does not start {CALIBRATION_HISTORY_DAYS} days before a "
                                       f"snapshot {CALIBRATION_DAYS} days before the cutoff"}
    y = frame["ltv_365d"].to_numpy(float)
    buyers = int((y > 0).sum())
    snapshot = str(frame["snapshot"].iloc[0])
    if buyers < CALIBRATION_MIN_BUYERS:
        return {"factor": 1.0, "snapshot": snapshot,
                "note": f"none: only {buyers} customers bought in the calibration window (< {CALIBRATION_MIN_BUYERS})"}
    pred = model.predict(F.to_matrix(F.impute(frame, full_schema), schema))
    factor = float(np.float32(y.sum() / pred.sum())) if pred.sum() > 0 else 1.0
    inner.factor = factor
    return {"factor": _r(factor, 6), "snapshot": snapshot, "customers": int(len(frame)), "buyers": buyers,
            "sum_actual": _r(float(y.sum()), 8), "sum_predicted_uncalibrated": _r(float(pred.sum()), 8),
            "note": f"Σactual/Σpredicted of this model at the same season {CALIBRATION_DAYS} days before the cutoff "
                    "(labels that end before it); multiplies the served mean"}


# --------------------------------------------------------------------------------------
# parallelism: the three models train in their own processes (forked, so they
# share the data read once), one thread each. On 2 cores, OpenMP's two threads
# per boosting fit spend their time at barriers whenever anything else runs (a
# 100k-row fit: 3.8 s with one thread, 31 s with two on a loaded machine);
# processes do not wait for each other.
# --------------------------------------------------------------------------------------
_TASK = None


def _call_task(arg):
    with threadpool_limits(1):
        return _TASK(arg)


def _map(fn, items: list, jobs: int) -> list:
    """[fn(x) for x in items], in up to `jobs` forked processes; same results
    whatever `jobs` (every task is seeded on its own)."""
    global _TASK
    if jobs <= 1 or len(items) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        with threadpool_limits(1):
            return [fn(x) for x in items]
    _TASK = fn
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(items))) as pool:
            return pool.map(_call_task, items, chunksize=1)
    finally:
        _TASK = None


def _with_derived(c: T.Candidate, drv: D.Derived) -> T.Candidate:
    return T.Candidate(c.key, lambda seed: D.WithDerived(drv, c.make(seed)), c.description)


def bgnbd_card(model) -> dict:
    """[card.bgnbd_candidate] when the written model is BG/NBD's own probability
    or a blend with it: what it serves and its fitted numbers."""
    inner = model.model if isinstance(model, D.WithDerived) else model
    blend = inner if isinstance(inner, BM.Blend) else None
    btyd = blend.btyd if blend else inner
    if not isinstance(btyd, BM.BgNbdClassifier):
        return {}
    out = {"column": btyd.column,
           "served": btyd.column if btyd.positive_when_quiet else f"1 - {btyd.column}",
           "platt": btyd.platt,
           **({"platt_coef": _r(btyd.coef, 8), "platt_intercept": _r(btyd.intercept, 8)} if btyd.platt else {})}
    if blend:
        out.update({"blend_weight_of_trained_model": blend.weight,
                    "trained_model": type(blend.base).__name__})
    return out


def select_classifier(m: str, drv: D.Derived, X, y, inner_valid, seed: int):
    """The classifier candidate with the lowest log loss on the inner split: the
    trained ones (boosting, logistic regression, their soft vote), the BG/NBD
    probability raw and recalibrated (when the derived BG/NBD columns exist),
    and blends w * (best trained) + (1 - w) * (best BG/NBD) for w in
    BLEND_WEIGHTS, scored from the same inner predictions (a blend's parts are
    fitted on the same rows, so nothing is refitted). Returns (pick, {key: score})."""
    cands = list(CLASSIFIERS)
    has_btyd = drv.active and drv.bgnbd is not None
    if has_btyd:
        cands += btyd_candidates(m)
    preds = {}
    for c in cands:
        mod = D.WithDerived(drv, c.make(seed)).fit(X[~inner_valid], y[~inner_valid])
        preds[c.key] = mod.predict_proba(X[inner_valid])[:, 1]
    yv = y[inner_valid]
    scores = {k: _logloss(yv, p) for k, p in preds.items()}
    if has_btyd:
        base = min((c.key for c in CLASSIFIERS), key=scores.get)
        btyd = min(("bgnbd", "bgnbd_platt"), key=scores.get)
        for w in BLEND_WEIGHTS:
            wf = np.float32(w)
            key = blend_candidate(m, base, btyd, w).key
            # float32, as the blend serves it (btyd_model.Blend)
            mix = wf * preds[base].astype(np.float32) + (np.float32(1.0) - wf) * preds[btyd].astype(np.float32)
            scores[key] = _logloss(yv, mix)
    best = min(scores, key=scores.get)
    return _with_derived(candidate_of(m, best), drv), scores


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
    calibration: dict = field(default_factory=dict)  # ltv's seasonal factor for the written model


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
    backtest: int = 1,
    backtest_days: int | None = None,
    jobs: int | None = None,
    shards: int | None = None,
    feature_names: list[str] | None = None,
    observed_until: str | None = None,
    clusters: str | int = "auto",
    clusters_max: int = CL.DEFAULT_MAX_K,
    log=print,
) -> dict:
    """Trains, evaluates against the baselines, gates, and writes next versions
    (unless `report_dir` is given: then only the evaluation is written). Returns
    a summary; raises GateError when a model was refused."""
    t0 = time.time()
    jobs = int(jobs) if jobs else min(len(models), os.cpu_count() or 1)
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

    shards = int(shards) if shards else SH.auto_shards(events)
    scan = SH.scan(events, shards)
    try:
        return _fit_scanned(
            scan, t0=t0, jobs=jobs, events=events, attributes=attributes, full_schema=full_schema, schema=schema,
            names=names, cutoff=cutoff, repository=repository, models=models, report_dir=report_dir,
            allow_worse=allow_worse, seed=seed, snapshots=snapshots, snapshot_days=snapshot_days, backtest=backtest,
            backtest_days=backtest_days, observed_until=observed_until, clusters=clusters,
            clusters_max=clusters_max, log=log)
    finally:
        scan.cleanup()


def _fit_scanned(scan, *, t0, jobs, events, attributes, full_schema, schema, names, cutoff, repository, models,
                 report_dir, allow_worse, seed, snapshots, snapshot_days, backtest, backtest_days, observed_until,
                 clusters, clusters_max, log) -> dict:
    # The clusters are unsupervised (no label window, no baseline): fitted at the
    # cutoff on their own (fit_clusters), after the supervised models' protocol.
    want_clusters = "clusters" in models
    models = tuple(m for m in models if m != "clusters")
    if want_clusters and sum(f.name in CL.FEATURES for f in schema) < 2:
        raise ValueError(f"clusters: needs at least 2 of {', '.join(CL.FEATURES)} among --features "
                         "(or leave clusters out of --models)")
    at = F.read_attributes(attributes) if attributes else None
    sources = [describe_source(events, scan.rows)]
    if attributes:
        sources.append(describe_source(attributes, len(at)))
    counts = scan.counts
    if not scan.rows:
        raise ValueError(f"{events}: no events")
    cut_us = F._cutoff_us(cutoff)
    end_us = scan.ts_max
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
    if scan.ts_min >= cut_us:
        raise ValueError(f"{events.name}: no event before the cutoff {cutoff}")
    log(f"read {scan.rows:,} events ({', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}) "
        f"for {scan.customers:,} customers from {events}"
        + (f" ({scan.shards} customer shards)" if scan.shards > 1 else ""))

    # Every cutoff needed: the final one and its training snapshots, and for
    # each backtest k (an earlier final cutoff, k * backtest_days before) its own.
    backtest = max(1, int(backtest))
    backtest_days = int(backtest_days or snapshot_days)
    offsets = {k * backtest_days + j * snapshot_days for k in range(backtest) for j in range(snapshots + 1)}
    # LTV's seasonal calibration reads a snapshot 52 weeks before each evaluated
    # cutoff, when the data goes back far enough (calibrate_ltv).
    cal_offsets = {k: k * backtest_days + CALIBRATION_DAYS for k in range(backtest)} if "ltv" in models else {}
    cal_offsets = {k: o for k, o in cal_offsets.items()
                   if calibration_possible(cut_us - o * F.US_PER_DAY, scan.ts_min)}
    offsets = sorted(offsets | set(cal_offsets.values()))
    final_ts = pd.Timestamp(cutoff)
    final_ts = final_ts.tz_localize("UTC") if final_ts.tzinfo is None else final_ts.tz_convert("UTC")
    cut_list = [final_ts - pd.Timedelta(days=o) for o in offsets]
    eval_cuts = [(final_ts - pd.Timedelta(days=k * backtest_days)).strftime("%Y-%m-%dT%H:%M:%SZ")
                 for k in range(backtest)]
    frame_at, summary_at = SH.build(scan, at, cut_list, eval_cuts, full_schema, log=log)
    snaps = Snapshots(list(frame_at), list(frame_at.values()))
    final = snaps.frames[0]

    def cutoff_at(offset_days: int) -> str:
        c = pd.Timestamp(snaps.cutoffs[0]) - pd.Timedelta(days=offset_days)
        return c.strftime("%Y-%m-%dT%H:%M:%SZ")

    valid_ids = set(final["customer_id"][T.validation_mask(final["customer_id"], seed, VALID_SHARE)])
    all_cutoffs = [cutoff_at(j * snapshot_days) for j in range(snapshots + 1)]
    all_rows = pd.concat([frame_at[c] for c in all_cutoffs], ignore_index=True)
    train_cutoffs0 = all_cutoffs[1:] or all_cutoffs[:1]
    n_va0 = int(final["customer_id"].isin(valid_ids).sum())
    n_tr0 = sum(int((~frame_at[c]["customer_id"].isin(valid_ids)).sum()) for c in train_cutoffs0)
    if n_va0 < 50 or n_tr0 < 100:
        raise ValueError(f"too few customers to train and validate: {n_tr0} training rows, "
                         f"{n_va0} validation customers")
    log(f"{len(final):,} customers at cutoff {snaps.cutoffs[0]}; {n_tr0:,} training rows from "
        f"{len(all_cutoffs) - 1 or 1} snapshot(s), {n_va0:,} validation customers"
        + (f"; backtests at {backtest} cutoffs {backtest_days} days apart" if backtest > 1 else ""))

    vcol = {f.name: i for i, f in enumerate(full_schema)}

    def evaluate(k: int) -> dict:
        """The whole protocol with the final cutoff moved k * backtest_days back:
        train on the training customers at the snapshots before it, choose on the
        inner split, score the model and every baseline on the validation
        customers at it. Returns {model: {...}} and what the refit needs."""
        cut = cutoff_at(k * backtest_days)
        fin = frame_at[cut]
        tr_cuts = [cutoff_at(k * backtest_days + j * snapshot_days) for j in range(1, snapshots + 1)] or [cut]
        train_rows = pd.concat([frame_at[c][~frame_at[c]["customer_id"].isin(valid_ids)] for c in tr_cuts],
                               ignore_index=True)
        va = fin[fin["customer_id"].isin(valid_ids)].reset_index(drop=True)
        imp_t, imp_v = F.impute(train_rows, full_schema), F.impute(va, full_schema)
        Xt, Xv = F.to_matrix(imp_t, schema), F.to_matrix(imp_v, schema)
        # The inner split (candidate choice): training customers by another hash;
        # inner-valid rows are theirs at the latest training snapshot, inner-train
        # rows every other training customer's at every training snapshot.
        inner_cust = T.hash_share(train_rows["customer_id"], seed, "inner") < INNER_SHARE
        latest = (train_rows["snapshot"] == train_rows["snapshot"].max()).to_numpy()
        inner_train, inner_valid = ~inner_cust, inner_cust & latest
        sel = inner_train | inner_valid

        # BTYD fitted at this cutoff on the training customers' purchases only:
        # the baseline, and the constants of the derived features.
        summ_v = summary_at[cut].loc[va["customer_id"]]
        summ_t = summary_at[cut].loc[fin["customer_id"][~fin["customer_id"].isin(valid_ids)]]
        btyd = B.BgNbd().fit(summ_t)
        drv = D.Derived(names, {k2: float(btyd.bg.params_[k2]) for k2 in ("r", "alpha", "a", "b")})
        # BG/NBD starts its clock at the first purchase: it says nothing about a
        # customer who has not bought yet (a signup from the attributes file). The
        # baseline gives those the training rows' mean outcome of such customers.
        never_t = (train_rows["frequency"] == 0).to_numpy()
        never_v = (va["frequency"] == 0).to_numpy()

        def never_rate(y):
            return float(y[never_t].mean()) if never_t.any() else float(y.mean())

        rfm_t, rfm_v = B.rfm_matrix(train_rows), B.rfm_matrix(va)
        rec_t, rec_v = rfm_t[:, 0], rfm_v[:, 0]
        # The training customers at the same season a year back: the seasonal
        # calibration of LTV (their labels end before `cut`: nothing of the
        # validation period is read).
        cal_frame = None
        if k in cal_offsets:
            cf = frame_at[cutoff_at(cal_offsets[k])]
            cal_frame = cf[~cf["customer_id"].isin(valid_ids)].reset_index(drop=True)
        out = {"cutoff": cut, "va": va, "n_train_rows": len(train_rows), "train_cutoffs": tr_cuts,
               "n_bought": int(summ_t["bought"].sum()), "models": {}}
        def one_model(m: str) -> dict:
            label = LABEL_OF[m]
            calibration = None
            y_t = train_rows[label].to_numpy(float)
            y_v = va[label].to_numpy(float)
            if m in ("churn", "propensity"):
                pick, inner = select_classifier(m, drv, Xt[sel], y_t[sel].astype(int), inner_valid[sel], seed)
                model = pick.make(seed).fit(Xt, y_t.astype(int))
                p_model = model.predict_proba(Xv)[:, 1]
                churn_like = m == "churn"
                rec_score, rec_prob = B.recency_probability(rec_t, y_t.astype(int), rec_v,
                                                            positive_when_recent=not churn_like)
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
                checks = [("roc_auc", True), ("log_loss", False)]
            else:
                cands = [_with_derived(c, drv) for c in REGRESSORS]
                pick, inner = T.select(
                    cands, Xt[sel], y_t[sel], inner_valid[sel], seed,
                    lambda y, mod, X: _spearman(y, mod.predict(X)), higher_is_better=True)
                model = pick.make(seed).fit(Xt, y_t)
                calibration = calibrate_ltv(model, cal_frame, full_schema, schema)
                p_model = model.predict(Xv)
                hgb = B.rfm_boosting_regressor(seed).fit(rfm_t, y_t)
                Xv_full = F.to_matrix(imp_v, full_schema)
                carry = Xv_full[:, vcol["monetary_total"]] * 365.0 / np.maximum(Xv_full[:, vcol["tenure_days"]], 30.0)
                preds = {"model": p_model, "recency_alone": -rec_v,
                         "past_spend_carried_forward": carry.astype(float),
                         "bgnbd_gamma_gamma": np.where(never_v, never_rate(y_t),
                                                       btyd.ltv(summ_v.loc[va["customer_id"]], 365.0)),
                         "rfm_gradient_boosting": np.maximum(hgb.predict(rfm_v), 0.0)}
                stats = bootstrap(y_v, preds, REGRESSION_METRICS, seed)
                for k2 in ("sum_ratio", "sum_ratio_ci95", "_sum_ratio_samples"):
                    del stats["recency_alone"][k2]  # a ranking, not an amount
                checks = [("spearman", True)]
            gate = gate_of(m, stats, [k2 for k2 in preds if k2 != "model"], checks)
            public = {who: {k2: _r(v) for k2, v in st.items() if not k2.startswith("_")} for who, st in stats.items()}
            if m != "ltv":
                public["model"].update({k2: _r(v) for k2, v in T.classifier_metrics(y_v.astype(int), p_model).items()})
            else:
                public["model"].update({k2: _r(v) for k2, v in T.regression_metrics(y_v, p_model).items()})
            return {"pick": pick.key, "inner": {k2: _r(v) for k2, v in inner.items()}, "gate": gate,
                    "metrics": public["model"], "baselines": {k2: v for k2, v in public.items() if k2 != "model"},
                    **({"calibration": calibration} if calibration is not None else {})}

        for m, res in zip(models, _map(one_model, list(models), jobs)):
            res["pick"] = candidate_of(m, res["pick"])
            out["models"][m] = res
        return out

    ev0 = evaluate(0)
    va = ev0["va"]
    log(f"baselines: BG/NBD + Gamma-Gamma fitted on {ev0['n_bought']:,} training customers")
    for m, e in ev0["models"].items():
        log(f"{m}: " + gate_line(e["gate"]) + ("" if e["gate"]["passed"] else "  [below the gate]"))
    backtests = []
    for k in range(1, backtest):
        e = evaluate(k)
        backtests.append(e)
        log(f"backtest at {e['cutoff']}: " + "; ".join(f"{m}: {gate_line(x['gate'])}" for m, x in e["models"].items()))
    backtest_table = [
        {"cutoff": e["cutoff"], "train_snapshots": e["train_cutoffs"], "validation_customers": int(len(e["va"])),
         "models": {m: {"picked": x["pick"].key, "inner": x["inner"], "passed": x["gate"]["passed"],
                        "checks": x["gate"]["checks"],
                        **({"calibration_factor": x["calibration"]["factor"]} if "calibration" in x else {}),
                        # the model and every baseline at this cutoff, on the gate's metrics
                        "scores": {who: {k2: v[k2] for k2 in ("roc_auc", "log_loss", "spearman", "sum_ratio")
                                         if k2 in v}
                                   for who, v in {"model": x["metrics"], **x["baselines"]}.items()}}
                    for m, x in e["models"].items()}}
        for e in [ev0] + backtests
    ] if backtest > 1 else []

    missing = {f.name: round(float(final[f.name].isna().mean()), 4) for f in full_schema}
    data_card = {
        "sources": sources,
        "purchases_only": set(counts) <= {"purchase"},
        "events": int(scan.rows),
        "events_by_type": {k: int(v) for k, v in sorted(counts.items())},
        "customers": int(len(final)),
        "date_range": [_iso(scan.ts_min), _iso(end_us)],
        "observed_until": _iso(observed),
        "cutoff": snaps.cutoffs[0],
        "snapshots": all_cutoffs,
        "missing_share_at_cutoff": missing,
        "imputation": {f.name: ("reject" if f.reject_missing else f.impute) for f in schema},
    }
    protocol = (
        f"customers split by blake2b('{seed}:split:<customer_id>') < {VALID_SHARE}: {len(va):,} validation "
        f"customers scored at the cutoff {snaps.cutoffs[0]}; the evaluated model was trained on the other "
        f"customers at {len(all_cutoffs) - 1} earlier snapshot(s) ({', '.join(all_cutoffs[1:]) or 'none: the cutoff itself'}; "
        f"{ev0['n_train_rows']:,} rows, each labelled from its own window), so it saw neither these customers nor this "
        f"period. Candidates chosen on an inner {INNER_SHARE:.0%} of the training customers. Baselines scored on the "
        f"same validation customers. The written model was then refitted on all {len(all_rows):,} rows (every "
        f"customer, every snapshot, the cutoff included). Intervals: {BOOTSTRAP} bootstrap resamples of the "
        "validation customers, 95% percentile."
        + (f" Backtests: the same protocol with the cutoff moved back {backtest_days} days at a time, "
           f"{backtest} cutoffs in all ({', '.join(e['cutoff'] for e in [ev0] + backtests)})." if backtest > 1 else ""))
    common = {
        "trained_at": T.trained_at(), "seed": seed, "cutoff": snaps.cutoffs[0],
        "features_source": "training/features.py (imputation from the manifest, float32 in manifest order)",
        "libraries": library_versions(),
    }

    reports: list[ModelReport] = []
    for m in models:
        e = ev0["models"][m]
        reports.append(ModelReport(
            name=m, task="regression" if m == "ltv" else "binary_classification", metrics=e["metrics"],
            baselines=e["baselines"], gate=e["gate"], card={},
            selection={"picked": e["pick"].key, "inner": e["inner"]}, pick=e["pick"], label=LABEL_OF[m],
            y_all=all_rows[LABEL_OF[m]].to_numpy(float)))

    base_rates = {LABEL_OF[r.name]: _r(float(va[LABEL_OF[r.name]].mean())) for r in reports if r.name != "ltv"}
    if any(r.name == "ltv" for r in reports):
        base_rates["ltv_365d_mean"] = _r(float(va["ltv_365d"].mean()))
        base_rates["ltv_365d_share_zero"] = _r(float((va["ltv_365d"] == 0).mean()))

    # Refit on everything, export, golden set, card (not for --report: nothing is written).
    golden_idx = T.golden_rows(va, seed, schema=schema) if len(va) else np.array([], int)
    Xv = F.to_matrix(F.impute(va, full_schema), schema)
    drv_all = None
    if report_dir is None and reports:
        Xall = F.to_matrix(F.impute(all_rows, full_schema), schema)
        # The written model's BG/NBD constants: fitted on every customer's purchases before the cutoff.
        bg_all = B.BgNbd().fit(summary_at[snaps.cutoffs[0]].loc[final["customer_id"]])
        drv_all = D.Derived(names, {k: float(bg_all.bg.params_[k]) for k in ("r", "alpha", "a", "b")})
    def refit(r: ModelReport):
        return D.WithDerived(drv_all, candidate_of(r.name, r.pick.key).make(seed)).fit(
            Xall, r.y_all if r.name == "ltv" else r.y_all.astype(int))

    todo = [] if report_dir is not None else reports
    for r, final_model in zip(todo, _map(refit, todo, jobs)):
        r.final_model = final_model
        if r.name == "ltv":
            # The written model's own factor: every customer at the same season a year back.
            r.calibration = calibrate_ltv(final_model, frame_at[cutoff_at(cal_offsets[0])] if 0 in cal_offsets
                                          else None, full_schema, schema)
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
            r.card["calibration"] = {**r.calibration, "evaluated": ev0["models"]["ltv"].get("calibration", {})}
        textbook = bgnbd_card(r.final_model)
        if textbook:
            r.card["bgnbd_candidate"] = textbook
        r.card["derived_features"] = {
            "note": DERIVED_TEXT if drv_all.active else "none: --features leaves out a feature they need",
            "columns": drv_all.names,
            **({"bgnbd_parameters": {k: _r(v, 6) for k, v in drv_all.bgnbd.items()}} if drv_all.active else {}),
        }
        if backtest_table:
            r.card["backtests"] = [{**{k: v for k, v in b.items() if k != "models"}, **b["models"][r.name]}
                                   for b in backtest_table]

    summary = {
        "cutoff": snaps.cutoffs[0], "seed": seed, "data": data_card, "validation": protocol,
        "models": {r.name: {"metrics": r.metrics, "baselines": r.baselines, "gate": r.gate,
                            "picked": r.pick.key,
                            **({"calibration": ev0["models"][r.name]["calibration"]}
                               if "calibration" in ev0["models"][r.name] else {})} for r in reports},
        "backtests": backtest_table,
        "written": {}, "refused": {},
    }
    if want_clusters:
        cl = fit_clusters(final, valid_ids, full_schema, schema, seed, clusters, clusters_max,
                          write=report_dir is None)
        cl.report.card.update({**common, "validation": cl.protocol, "data": data_card})
        summary["clusters"] = {k: cl.report.card[k] for k in ("k_selection", "metrics", "normalization", "clusters")}
        sel = cl.report.card["k_selection"]
        log(f"clusters: k = {sel['chosen']}" + (f" by silhouette ({', '.join(f'{k}: {v:.3f}' for k, v in zip(sel['k'], sel['silhouette']))})"
                                                if "silhouette" in sel else " (fixed)"))
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
    if want_clusters:
        version, d = write_next_version(repo, cl.report, cl.schema, va, golden_idx, cl.X_valid, seed)
        summary["written"]["clusters"] = version
        print(f"wrote clusters version {version} -> {d}", flush=True)
    summary["seconds"] = round(time.time() - t0, 1)
    log(f"done in {summary['seconds']}s")
    if refused and not allow_worse:
        raise GateError("; ".join(f"{r.name} not written: " + "; ".join(r.gate["reasons"]) for r in refused)
                        + " (--allow-worse writes it anyway)")
    return summary


@dataclass
class ClusterFit:
    report: ModelReport
    schema: list
    X_valid: np.ndarray
    protocol: str


def fit_clusters(final: pd.DataFrame, valid_ids: set, full_schema, schema, seed: int, clusters, clusters_max: int,
                 write: bool) -> ClusterFit:
    """K-Means at the cutoff (clusters.py): k chosen on the training customers by
    the validation customers' silhouette; the written model (when `write`) is
    refitted with that k on every customer."""
    cschema = [f for f in schema if f.name in CL.FEATURES]
    imp = F.impute(final, full_schema)
    X = F.to_matrix(imp, cschema)
    is_valid = final["customer_id"].isin(valid_ids).to_numpy()
    # One thread, as the other models: OpenMP's threads wait at barriers on a busy 2-core machine.
    with threadpool_limits(1):
        c = CL.fit(X[~is_valid], X[is_valid], seed, clusters, clusters_max, X_final=X if write else None)
    names = [f.name for f in cschema]
    onx = CL.export(c, "clusters", 0, names)
    card = CL.card(c, names, X if write else X[~is_valid], X[is_valid], onx, clusters, clusters_max)
    protocol = (f"k chosen on the {int((~is_valid).sum()):,} training customers at the cutoff (the same customer "
                f"split as the other models) by the mean silhouette of {c.silhouette_rows:,} of the "
                f"{int(is_valid.sum()):,} validation customers; "
                + ("the written model was refitted with that k on every customer at the cutoff."
                   if write else "nothing written (--report)."))
    report = ModelReport(name="clusters", task="clustering", metrics=card["metrics"], baselines={},
                         gate={"passed": True, "checks": [], "reasons": []}, card=card, final_model=c)
    return ClusterFit(report, cschema, X[is_valid], protocol)


def gate_of(m: str, stats: dict, base_names: list[str], checks: list[tuple[str, bool]]) -> dict:
    """The model against the best baseline on each metric (ROC AUC and log loss
    for a classifier, Spearman for LTV), plus Σpredicted/Σactual in 0.9-1.1 for
    LTV. `margin` is how much better the model is (for log loss: the best
    baseline's minus the model's), with its paired bootstrap interval. ROC AUC
    must be strictly higher; log loss and Spearman at least as good."""
    reasons, rows = [], []
    for metric, higher in checks:
        sign = 1.0 if higher else -1.0
        cands = [k for k in base_names if metric in stats[k] and np.isfinite(stats[k][metric])]
        best = max(cands, key=lambda k: sign * stats[k][metric])
        margin = sign * (stats["model"][metric] - stats[best][metric])
        diff = sign * (stats["model"][f"_{metric}_samples"] - stats[best][f"_{metric}_samples"])
        ok = margin > 0 or (margin == 0 and metric != "roc_auc")
        rows.append({"metric": metric, "best_baseline": best, "best_baseline_value": _r(stats[best][metric]),
                     "model_value": _r(stats["model"][metric]), "margin": _r(margin),
                     "margin_ci95": _r([float(np.nanpercentile(diff, 2.5)), float(np.nanpercentile(diff, 97.5))]),
                     "passed": bool(ok)})
        if not ok:
            word = "below" if higher else "worse than"
            reasons.append(f"{metric} {stats['model'][metric]:.4f} is {abs(margin):.4f} {word} the best baseline "
                           f"({best} {stats[best][metric]:.4f})" if margin < 0 else
                           f"{metric} {stats['model'][metric]:.4f} only ties the best baseline ({best})")
    if m == "ltv":
        ratio = stats["model"]["sum_ratio"]
        ok = bool(0.9 <= ratio <= 1.1)
        rows.append({"metric": "sum_ratio", "model_value": _r(ratio), "required": [0.9, 1.1], "passed": ok,
                     "model_ci95": _r(stats["model"]["sum_ratio_ci95"])})
        if not ok:
            reasons.append(f"sum(predicted)/sum(actual) {ratio:.3f} is outside 0.9-1.1")
    first = rows[0]
    return {**{k: first[k] for k in ("metric", "best_baseline", "best_baseline_value", "model_value", "margin",
                                      "margin_ci95")},
            "checks": rows, "passed": not reasons, "reasons": reasons}


def gate_line(g: dict) -> str:
    parts = []
    for c in g["checks"]:
        if c["metric"] == "sum_ratio":
            parts.append(f"sum ratio {c['model_value']:.3f}")
        else:
            parts.append(f"{c['metric']} {c['model_value']:.4f} vs best baseline {c['best_baseline']} "
                         f"{c['best_baseline_value']:.4f} ({'+' if c['margin'] >= 0 else ''}{c['margin']:.4f})")
    return ", ".join(parts)


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
    if s.get("backtests"):
        lines += ["", "backtests (the whole protocol at each cutoff; margin = how much better than the best baseline):", "",
                  "| cutoff | model | metric | pipeline | best baseline | margin | passed |", "|---|---|---|---|---|---|---|"]
        for b in s["backtests"]:
            for name, x in b["models"].items():
                for c in x["checks"]:
                    lines.append(f"| {b['cutoff'][:10]} | {name} | {c['metric']} | {c['model_value']} | "
                                 f"{c.get('best_baseline', '0.9-1.1')} {c.get('best_baseline_value', '')} | "
                                 f"{c.get('margin', '')} | {'yes' if c['passed'] else 'NO'} |")
        lines += ["", "every scorer at every cutoff:", "", "| cutoff | model | metric | pipeline | baselines |",
                  "|---|---|---|---|---|"]
        for b in s["backtests"]:
            for name, x in b["models"].items():
                sc = x["scores"]
                for metric in sc["model"]:
                    base = "; ".join(f"{who} {v[metric]}" for who, v in sc.items() if who != "model" and metric in v)
                    lines.append(f"| {b['cutoff'][:10]} | {name} | {metric} | {sc['model'][metric]} | {base} |")
    if s.get("clusters"):
        sel = s["clusters"]["k_selection"]
        lines += ["", f"clusters: k = {sel['chosen']}; {sel['method']}"]
        if "silhouette" in sel:
            lines += ["", "| k | " + " | ".join(map(str, sel["k"])) + " |", "|---|" + "---|" * len(sel["k"]),
                      "| silhouette | " + " | ".join(f"{v:.4f}" for v in sel["silhouette"]) + " |"]
        lines += ["", "| cluster | label | validation share |", "|---|---|---|"]
        lines += [f"| {c['id']} | {c['label']} | {c['valid_share']:.3f} |" for c in s["clusters"]["clusters"]]
    cal = s["models"].get("ltv", {}).get("calibration")
    if cal:
        lines += ["", f"ltv seasonal calibration: factor {cal['factor']}"
                  + (f" (snapshot {cal['snapshot'][:10]}, {cal.get('buyers', 0):,} buyers)" if "snapshot" in cal else "")
                  + f"; {cal['note']}"]
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
        cluster = None
        if r.task == "clustering":
            onx = CL.export(model, r.name, version, names)
            score = {"output": "scores", "column": 0}
            cluster, expected = CL.score(onx, Xv)
        elif r.task == "regression":
            onx = T.export_regressor(model, len(names), r.name, version, names)
            score, out, col = {"output": "ltv", "column": 0}, "ltv", 0
        else:
            onx = T.export_classifier(model, len(names), r.name, version, names)
            score, out, col = {"output": "probabilities", "column": 1}, "probabilities", 1
        if r.task != "clustering":
            expected = T.run_onnx(onx, Xv, out, col)
        golden = va.iloc[golden_idx][["customer_id"] + names].reset_index(drop=True)
        if cluster is not None:
            golden["expected_cluster"] = cluster[golden_idx]
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
