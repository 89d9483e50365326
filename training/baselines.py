"""Textbook baselines the pipeline must beat, computed on the same customers.

* recency alone: the days since the last purchase (a logistic fit on
  log1p(recency) turns it into a probability, so log loss is defined; the ROC
  AUC is the raw ranking's);
* BG/NBD (purchases) with Gamma-Gamma (spend), fitted with ``lifetimes`` on the
  purchases before the cutoff only, so no label leaks into them;
* logistic regression and gradient boosting on plain RFM (recency, frequency,
  monetary, tenure), trained on the same rows as the pipeline's models.

``lifetimes`` 0.11.3 (2020) is the BTYD library kept here: it fits BG/NBD on
23,570 CDNOW customers in ~2 s and works with numpy 2.4 / pandas 3 / scipy 1.17
(checked; it only warns about a pandas option). ``btyd`` is a 2022 beta and
pymc-marketing pulls in pymc/pytensor (hundreds of MB and a C compiler at run
time) for what is a two-parameter-pair maximum likelihood fit.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import features as F

US_PER_DAY = F.US_PER_DAY
RFM = ["recency_days", "frequency", "monetary_mean", "tenure_days"]


def _lifetimes():
    # lifetimes sets a pandas option that pandas 3 deprecates; the warning says
    # nothing about the fit.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, GammaGammaFitter
    return BetaGeoFitter, GammaGammaFitter


def btyd_summary(events: pd.DataFrame, customer_ids, cutoff) -> pd.DataFrame:
    """Per customer, from purchases strictly before `cutoff`, on a daily clock (the
    BG/NBD convention, as lifetimes' summary_data_from_transaction_data with
    freq="D"): frequency = repeat purchase days, recency = days from the first
    to the last purchase day, T = days from the first purchase day to the
    cutoff, monetary = mean spend per repeat purchase day (0 without repeats)."""
    cut = F._cutoff_us(cutoff)
    p = events[(events["event"] == "purchase") & (events["ts"] < cut)]
    day = p["ts"].to_numpy() // US_PER_DAY
    daily = (
        pd.DataFrame({"c": p["customer_id"].to_numpy(), "d": day, "a": p["amount"].to_numpy()})
        .groupby(["c", "d"], sort=True)["a"].sum().reset_index()
    )
    g = daily.groupby("c", sort=True)
    first, last, n = g["d"].min(), g["d"].max(), g["d"].size()
    total, first_amount = g["a"].sum(), g["a"].first()
    cut_day = cut / US_PER_DAY
    out = pd.DataFrame(index=pd.Index(np.asarray(customer_ids, dtype=object), name="customer_id"))
    out["frequency"] = (n - 1).reindex(out.index)
    out["recency"] = (last - first).reindex(out.index).astype(float)
    out["T"] = (cut_day - first.astype(float)).reindex(out.index)
    repeat_total = (total - first_amount).reindex(out.index)
    out["monetary"] = np.where(out["frequency"] > 0, repeat_total / out["frequency"].clip(lower=1), 0.0)
    out["bought"] = out["frequency"].notna()
    return out.fillna({"frequency": 0, "recency": 0.0, "T": 0.0, "monetary": 0.0})


class BgNbd:
    """BG/NBD + Gamma-Gamma fitted on the training customers' purchase history
    at one cutoff; predicts for any customers' history at that cutoff."""

    def __init__(self, penalizer: float = 0.001):
        self.penalizer = penalizer

    def fit(self, s: pd.DataFrame) -> "BgNbd":
        BetaGeoFitter, GammaGammaFitter = _lifetimes()
        s = s[s["bought"] & (s["T"] > 0)]
        self.bg = BetaGeoFitter(penalizer_coef=self.penalizer).fit(
            s["frequency"].to_numpy(), s["recency"].to_numpy(), s["T"].to_numpy())
        rep = s[(s["frequency"] > 0) & (s["monetary"] > 0)]
        self.gg = GammaGammaFitter(penalizer_coef=self.penalizer).fit(
            rep["frequency"].to_numpy(), rep["monetary"].to_numpy())
        # Mean spend of a one-purchase customer: Gamma-Gamma's population mean.
        p, q, v = (self.gg.params_[k] for k in ("p", "q", "v"))
        self.population_mean_spend = p * v / (q - 1) if q > 1 else float(rep["monetary"].mean())
        return self

    def params(self) -> dict:
        return {**{f"bgnbd_{k}": float(v) for k, v in self.bg.params_.items()},
                **{f"gamma_gamma_{k}": float(v) for k, v in self.gg.params_.items()}}

    def _xs(self, s):
        # A customer with no purchase before the cutoff has no BG/NBD clock: it is
        # scored as a one-purchase customer whose purchase is at the cutoff
        # (T = 0), i.e. the population prior.
        return (s["frequency"].to_numpy(float), s["recency"].to_numpy(float),
                np.maximum(s["T"].to_numpy(float), 0.0))

    def p_no_purchase(self, s, days: float) -> np.ndarray:
        """P(no purchase in the next `days` | history) = P(dead) + P(alive) *
        E[exp(-lambda * days) | alive], with lambda | alive ~ Gamma(r + x, alpha + T)."""
        x, tx, T = self._xs(s)
        r, alpha = self.bg.params_["r"], self.bg.params_["alpha"]
        alive = np.asarray(self.bg.conditional_probability_alive(x, tx, T), float)
        stay_quiet = ((alpha + T) / (alpha + T + days)) ** (r + x)
        return np.clip((1 - alive) + alive * stay_quiet, 1e-7, 1 - 1e-7)

    def expected_purchases(self, s, days: float) -> np.ndarray:
        x, tx, T = self._xs(s)
        return np.asarray(self.bg.conditional_expected_number_of_purchases_up_to_time(days, x, tx, T), float)

    def expected_spend(self, s) -> np.ndarray:
        x, m = s["frequency"].to_numpy(float), s["monetary"].to_numpy(float)
        out = np.full(len(s), self.population_mean_spend)
        has = (x > 0) & (m > 0)
        if has.any():
            out[has] = np.asarray(self.gg.conditional_expected_average_profit(x[has], m[has]), float)
        return out

    def ltv(self, s, days: float = 365.0) -> np.ndarray:
        return self.expected_purchases(s, days) * self.expected_spend(s)


def rfm_matrix(df: pd.DataFrame) -> np.ndarray:
    """Plain RFM + tenure, imputed as the schema says (recency of a customer who
    never bought = the schema's impute value)."""
    schema = {f.name: f for f in F.load_schema()}
    cols = []
    for n in RFM:
        v = df[n].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        imp = schema[n].impute if n in schema and not schema[n].reject_missing else 0.0
        cols.append(np.where(np.isnan(v), float(imp), v))
    return np.stack(cols, axis=1)


def recency_probability(train_rec, y_train, rec, positive_when_recent: bool):
    """(score for ROC AUC, calibrated probability) from recency alone."""
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(np.log1p(train_rec)[:, None], y_train)
    prob = lr.predict_proba(np.log1p(rec)[:, None])[:, 1]
    return (-rec if positive_when_recent else rec), prob


def rfm_logistic(seed: int) -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("lr", LogisticRegression(C=1.0, max_iter=1000, random_state=seed))])


def rfm_boosting_classifier(seed: int) -> HistGradientBoostingClassifier:
    return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                          random_state=seed, early_stopping=False)


def rfm_boosting_regressor(seed: int) -> HistGradientBoostingRegressor:
    # Squared error on the raw value: a mean, so its total is a revenue forecast.
    return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, max_leaf_nodes=15,
                                         random_state=seed, early_stopping=False)
