"""The BG/NBD candidates (btyd_model.py): the served graph computes what numpy
computes, and the inner split picks the textbook model when it is the truth and
a trained model when the label depends on what BG/NBD cannot see."""
import numpy as np
import onnxruntime as ort
import pytest
from threadpoolctl import threadpool_limits

import derived as D
import features as F
import fit as FIT
import train as T

NAMES = [f.name for f in F.load_schema()]
COL = {n: i for i, n in enumerate(NAMES)}
PARAMS = {"r": 0.24, "alpha": 29.4, "a": 0.47, "b": 1.04}


@pytest.fixture(autouse=True)
def one_thread():
    # As fit does: OpenMP's second thread only waits at barriers on a busy 2-core machine.
    with threadpool_limits(1):
        yield


def histories(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = np.zeros((n, len(NAMES)), np.float32)
    X[:, COL["frequency"]] = rng.poisson(2, n) + 1
    X[:, COL["tenure_days"]] = rng.uniform(30, 900, n)
    X[:, COL["recency_days"]] = X[:, COL["tenure_days"]] * rng.uniform(0, 1, n).astype(np.float32)
    X[:, COL["purchases_90d"]] = np.minimum(rng.poisson(1, n), X[:, COL["frequency"]])
    X[:, COL["monetary_mean"]] = rng.uniform(5, 200, n)
    X[:10, COL["frequency"]] = 5000  # P(alive) underflows to 0: p 0 or 1 exactly
    return X


@pytest.mark.parametrize("model", ["propensity", "churn"])
def test_the_graph_serves_what_numpy_computes(model):
    drv = D.Derived(NAMES, PARAMS)
    X = histories(3000)
    y = (np.random.default_rng(1).random(3000) < 0.3).astype(int)
    blend = "blend:soft_vote:bgnbd_platt:0.25" if model == "propensity" else "blend:logistic_regression:bgnbd:0.5"
    for key in ("bgnbd", "bgnbd_platt", blend):
        m = D.WithDerived(drv, FIT.candidate_of(model, key).make(1)).fit(X, y)
        sess = ort.InferenceSession(T.export_classifier(m, len(NAMES), model, 1, NAMES))
        label, prob = sess.run(["label", "probabilities"], {"features": X})
        want = m.predict_proba(X)
        assert label.shape == (3000,) and label.dtype == np.int64 and prob.shape == (3000, 2)
        assert np.array_equal(label, m.predict(X))
        if key.startswith("bgnbd"):
            # Float32 Sub, float64 Log/Exp as numpy does: the same bits.
            assert np.array_equal(prob, want), key
        else:
            # The base model's trees in onnxruntime differ from sklearn in the last bits.
            assert np.abs(prob - want).max() <= 1e-6, key
    # The raw candidate is the textbook probability itself.
    q = drv.transform(X)[:, -2 if model == "propensity" else -1]
    raw = D.WithDerived(drv, FIT.candidate_of(model, "bgnbd").make(1)).fit(X, y).predict_proba(X)[:, 1]
    assert np.array_equal(raw, 1 - q if model == "propensity" else q)


def test_selection_picks_the_textbook_model_when_it_is_the_truth():
    drv = D.Derived(NAMES, PARAMS)
    X = histories(2500)
    inner = T.hash_share(np.arange(2500).astype(str), 3, "inner") < 0.3
    rng = np.random.default_rng(2)
    p_true = 1 - drv.transform(X)[:, -2]
    pick, scores = FIT.select_classifier("propensity", drv, X, (rng.random(2500) < p_true).astype(int), inner, 3)
    assert pick.key in ("bgnbd", "bgnbd_platt"), scores
    assert scores[pick.key] == min(scores.values())
    assert {"gradient_boosting", "logistic_regression", "soft_vote", "bgnbd", "bgnbd_platt"} <= set(scores)
    assert sum(k.startswith("blend:") for k in scores) == len(FIT.BLEND_WEIGHTS)
    # A label that follows the spend, which BG/NBD does not see: a trained model wins.
    y = (rng.random(2500) < X[:, COL["monetary_mean"]] / 220).astype(int)
    pick, scores = FIT.select_classifier("propensity", drv, X, y, inner, 3)
    assert not pick.key.startswith("bgnbd"), scores


def test_without_bgnbd_columns_there_is_no_bgnbd_candidate():
    drv = D.Derived(["region", "monetary_mean"], None)
    X = np.random.default_rng(0).random((600, 2)).astype(np.float32)
    y = (X[:, 1] > 0.5).astype(int)
    inner = np.arange(600) % 5 == 0
    pick, scores = FIT.select_classifier("churn", drv, X, y, inner, 0)
    assert set(scores) == {"gradient_boosting", "logistic_regression", "soft_vote"}


def test_the_card_says_what_the_textbook_candidate_serves():
    drv = D.Derived(NAMES, PARAMS)
    X = histories(800)
    y = (np.random.default_rng(4).random(800) < 0.2).astype(int)
    platt = D.WithDerived(drv, FIT.candidate_of("churn", "bgnbd_platt").make(0)).fit(X, y)
    card = FIT.bgnbd_card(platt)
    assert card["served"] == "p_quiet_90d" and card["platt"] is True
    assert card["platt_coef"] == pytest.approx(platt.model.coef, rel=1e-7)
    blend = D.WithDerived(drv, FIT.candidate_of("propensity", "blend:logistic_regression:bgnbd:0.75").make(0)).fit(X, y)
    card = FIT.bgnbd_card(blend)
    assert card["served"] == "1 - p_quiet_30d" and card["blend_weight_of_trained_model"] == 0.75
    assert FIT.bgnbd_card(D.WithDerived(drv, FIT.candidate_of("churn", "soft_vote").make(0))) == {}
