"""`pipeline.py fit`'s behavioural clusters: K-Means on standardised features, k
chosen by silhouette, exported as ONNX for the server's clustering contract.

What the server reads (docs/models.md, "Behavioural clusters"; the same
contract as the smartcore `clusters` v1 that `segscore train --task
clustering` writes): a `task = "clustering"` manifest whose score output is a
float `[N, k]` of distances to every centroid; the server takes each row's
nearest centroid as `cluster_ids` (the first on a tie) and that distance as
the score. The golden set has `expected_cluster` next to `expected`.

* **Features**: the 8 of the shipped `clusters` model (recency, frequency, mean
  spend, purchases in 90 days, sessions, cart adds, checkout visits, email
  engagement), imputed as the manifest says.
* **Normalisation** (as documented for v1): each feature standardised with the
  training rows' mean and standard deviation, so a distance is in standard
  deviations. The graph does it (`Sub mean`, `Mul 1/sd`) in front of
  skl2onnx's KMeans nodes, so the served input stays the raw features. A
  feature constant in training (a purchases-only file has no sessions) gets
  weight 0 instead of v1's scale 1: a caller who does send it cannot move a
  customer to another cluster with a value the model never saw vary.
* **k**: `auto` tries 2..`clusters_max` on the training customers and keeps the
  k with the highest mean silhouette (sklearn's, Euclidean in standardised
  units) on up to 2,000 validation customers, as `segscore train --clusters
  auto` does; the card has the whole curve. A number fixes k.
* **Fit**: sklearn KMeans (k-means++, 4 initialisations, seeded) on up to
  200,000 training rows (a seeded sample beyond that: centroids of a 200k
  sample are as good as the full set's, and time stays bounded at 1 M
  customers); the written model is refitted with the chosen k on every
  customer at the cutoff.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

import train as T

FEATURES = ("recency_days", "frequency", "monetary_mean", "purchases_90d", "sessions_7d", "cart_adds_7d",
            "checkout_visits_7d", "email_engagement")
SILHOUETTE_ROWS = 2000
FIT_ROWS = 200_000
N_INIT = 4
DEFAULT_MAX_K = 10
TOLERANCE = 1e-5
INNER = "standardized_features"


def schema_of(full_schema) -> list:
    return [f for f in full_schema if f.name in FEATURES]


@dataclass
class Standardize:
    mean: np.ndarray       # float32 [n]
    inv_scale: np.ndarray  # float32 [n]; 0 for a constant feature

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardize":
        X = np.asarray(X, np.float64)
        mean, sd = X.mean(axis=0), X.std(axis=0)
        inv = np.where(sd > 0, 1.0 / np.where(sd > 0, sd, 1.0), 0.0)
        return cls(mean.astype(np.float32), inv.astype(np.float32))

    def apply(self, X: np.ndarray) -> np.ndarray:
        # float32 Sub then Mul, as the graph does: the centroids are fitted on the numbers the graph computes.
        return (np.asarray(X, np.float32) - self.mean) * self.inv_scale


@dataclass
class Clusters:
    standardize: Standardize
    kmeans: KMeans
    curve: list[tuple[int, float]]  # (k, silhouette) for every k tried; empty for a fixed k
    silhouette_rows: int

    @property
    def k(self) -> int:
        return int(self.kmeans.n_clusters)


def _sample(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))


def _kmeans(k: int, X: np.ndarray, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=N_INIT, max_iter=300, random_state=seed).fit(X)


def fit(X_train: np.ndarray, X_valid: np.ndarray, seed: int, clusters="auto", clusters_max: int = DEFAULT_MAX_K,
        X_final: np.ndarray | None = None) -> Clusters:
    """Chooses k (or takes it), then fits the model that is written: on
    `X_final` (every customer) when given, else on `X_train`. Matrices are the
    imputed float32 features in `schema_of` order."""
    if clusters == "auto":
        if clusters_max < 3:
            raise ValueError("--clusters-max must be at least 3 for --clusters auto")
        ks = list(range(2, clusters_max + 1))
    else:
        k = int(clusters)
        if k < 2:
            raise ValueError("--clusters must be at least 2 or auto")
        ks = [k]
    std = Standardize.fit(X_train)
    Zt = std.apply(X_train)[_sample(len(X_train), FIT_ROWS, seed)]
    Zv = std.apply(X_valid)[_sample(len(X_valid), SILHOUETTE_ROWS, seed)]
    ks = [k for k in ks if k < len(Zt)]
    if not ks:
        raise ValueError(f"too few customers ({len(Zt)}) for {clusters} clusters")
    curve, best = [], None
    for k in ks:
        km = _kmeans(k, Zt, seed)
        if len(ks) == 1:
            best = (float("nan"), km)
            break
        labels = km.predict(Zv)
        score = float(silhouette_score(Zv, labels)) if len(set(labels)) > 1 else -1.0
        curve.append((k, score))
        if best is None or score > best[0]:
            best = (score, km)
    km = best[1]
    if X_final is not None:
        std = Standardize.fit(X_final)
        km = _kmeans(km.n_clusters, std.apply(X_final)[_sample(len(X_final), FIT_ROWS, seed)], seed)
    return Clusters(std, km, curve, len(Zv))


def export(c: Clusters, name: str, version: int, feature_names: list[str]) -> bytes:
    """features [N, n] -> Sub mean -> Mul 1/sd -> skl2onnx KMeans; outputs `label`
    (int64 [N]) and `scores` (float [N, k]: the distance to every centroid)."""
    n = len(feature_names)
    onx = convert_sklearn(c.kmeans, name=f"segscore_{name}", initial_types=[(INNER, FloatTensorType([None, n]))],
                          target_opset=T.TARGET_OPSET)
    g = onx.graph
    # skl2onnx computes sqrt(|x|^2 - 2 x.c + |c|^2): rounding can make a row
    # that sits on its centroid (every never-buyer is the same point) slightly
    # negative, and Sqrt gives NaN. Clamp at 0 first.
    (sqrt,) = [nd for nd in g.node if nd.op_type == "Sqrt"]
    g.initializer.append(numpy_helper.from_array(np.array(0.0, np.float32), "clusters_zero"))
    clamp = helper.make_node("Max", [sqrt.input[0], "clusters_zero"], ["clusters_sq_dist_clamped"],
                             name="clusters_clamp_sq_dist")
    sqrt.input[0] = "clusters_sq_dist_clamped"
    nodes = [
        helper.make_node("Sub", [T.INPUT_NAME, "clusters_mean"], ["clusters_centered"], name="clusters_center"),
        helper.make_node("Mul", ["clusters_centered", "clusters_inv_scale"], [INNER], name="clusters_standardize"),
    ]
    g.initializer.extend([numpy_helper.from_array(c.standardize.mean, "clusters_mean"),
                          numpy_helper.from_array(c.standardize.inv_scale, "clusters_inv_scale")])
    old = list(g.node)
    at = old.index(sqrt)
    del g.node[:]
    g.node.extend(nodes + old[:at] + [clamp] + old[at:])
    del g.input[:]
    g.input.append(helper.make_tensor_value_info(T.INPUT_NAME, TensorProto.FLOAT, [None, n]))
    outs = [o.name for o in g.output]
    if outs != ["label", "scores"]:
        raise RuntimeError(f"unexpected KMeans outputs {outs}")
    return T._finish(onx, name, version, feature_names)


def score(model_bytes: bytes, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cluster, distance) per row as the server computes them from `scores`:
    the nearest centroid, the first on a tie, and its distance."""
    d = T._session(model_bytes).run(["scores"], {T.INPUT_NAME: np.ascontiguousarray(X, np.float32)})[0]
    cluster = np.argmin(d, axis=1)
    return cluster.astype(np.int64), d[np.arange(len(d)), cluster].astype(np.float32)


def label(names: list[str], z: np.ndarray) -> str:
    """A short name from the two largest standardised centroid coordinates (as
    `segscore train` names them): "high cart_adds_7d, low recency_days"."""
    order = sorted(range(len(z)), key=lambda j: -abs(z[j]))[:2]
    words = [f"{'high' if z[j] > 0 else 'low'} {names[j]}" for j in order if abs(z[j]) >= 0.5]
    return ", ".join(words) or "typical"


def card(c: Clusters, names: list[str], X_fit: np.ndarray, X_valid: np.ndarray, model_bytes: bytes,
         clusters_arg, clusters_max: int) -> dict:
    """The clustering card: description, normalisation, the k curve, every cluster
    (label, size, validation share, centroid in the features' own units)."""
    fit_ids, _ = score(model_bytes, X_fit)
    valid_ids, valid_dist = score(model_bytes, X_valid)
    k = c.k
    valid_share = np.bincount(valid_ids, minlength=k) / max(1, len(valid_ids))
    train_rows = np.bincount(fit_ids, minlength=k)
    sd = np.where(c.standardize.inv_scale > 0, 1.0 / np.where(c.standardize.inv_scale > 0,
                                                              c.standardize.inv_scale, 1.0), 0.0)
    out = {
        "description": f"Behavioural clusters of customers (K-Means, k = {k}); the score is the distance to the "
                       "assigned centroid in standard deviations, `cluster_ids` the cluster.",
        "intended_use": "segment rules (`scores.clusters == N`) and audience exploration; cluster ids are only "
                        "stable within one version: pin the version in rules that name a cluster",
        "algorithm": f"sklearn KMeans (k-means++, {N_INIT} initialisations, seeded, at most 300 iterations) on "
                     f"standardised features after the manifest's imputation, fitted on up to {FIT_ROWS:,} rows; "
                     "exported with skl2onnx behind the graph's own standardisation",
        "normalization": {
            "method": "z-score with the fitting rows' mean and standard deviation (in the graph: Sub mean, Mul "
                      "1/sd), after imputation; a feature constant in training gets weight 0",
            "mean": {n: T._round({"v": float(m)})["v"] for n, m in zip(names, c.standardize.mean)},
            "sd": {n: T._round({"v": float(s)})["v"] for n, s in zip(names, sd)},
        },
        "metrics": {"mean_distance_valid": T._round({"v": float(valid_dist.mean())})["v"] if len(valid_dist) else 0.0,
                    "cluster_shares_valid": [round(float(s), 6) for s in valid_share]},
    }
    if c.curve:
        best = max(c.curve, key=lambda p: p[1])
        out["k_selection"] = {
            "method": f"--clusters auto: the k in 2..={clusters_max} with the highest mean silhouette (Euclidean, "
                      f"standardised units; sklearn.metrics.silhouette_score) on {c.silhouette_rows:,} validation "
                      "customers, the model fitted on the training customers",
            "chosen": int(best[0]),
            "k": [int(kk) for kk, _ in c.curve],
            "silhouette": [round(s, 6) for _, s in c.curve],
        }
    else:
        out["k_selection"] = {"method": f"--clusters {clusters_arg}: fixed", "chosen": k}
    centroids = []
    for i, z in enumerate(c.kmeans.cluster_centers_):
        raw = z * sd + c.standardize.mean
        centroids.append({"id": i, "label": label(names, z), "train_rows": int(train_rows[i]),
                          "valid_share": round(float(valid_share[i]), 6),
                          "centroid": {n: round(float(v), 2) for n, v in zip(names, raw)}})
    out["clusters"] = centroids
    return out
