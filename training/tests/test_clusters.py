"""fit's clusters (clusters.py): k chosen by silhouette, the graph's normalisation,
and the served contract (nearest centroid and its distance, as the server reads
`scores`)."""
import numpy as np
import onnx

import clusters as CL

NAMES = list(CL.FEATURES)


def blobs(k: int, n_per: int, seed: int) -> np.ndarray:
    """k well-separated blobs in the 8 cluster features, each feature on its own
    scale (as recency in days and frequency in counts are), plus a constant
    column (a purchases-only file has no sessions)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, 1, (k, len(NAMES))) * 40.0
    centres[:, 0] = np.arange(k) * 300.0  # far apart on recency's scale
    scale = np.array([30.0, 1.0, 5.0, 0.5, 0.3, 0.3, 0.1, 2.0])
    X = np.concatenate([c + rng.normal(0, 1, (n_per, len(NAMES))) * scale for c in centres])
    X[:, NAMES.index("sessions_7d")] = 0.0
    return X.astype(np.float32)


def test_auto_chooses_the_known_number_of_clusters():
    X = blobs(4, 400, seed=1)
    rng = np.random.default_rng(2)
    valid = rng.random(len(X)) < 0.3
    c = CL.fit(X[~valid], X[valid], seed=3, clusters="auto", clusters_max=7)
    assert c.k == 4
    ks, scores = zip(*c.curve)
    assert ks == (2, 3, 4, 5, 6, 7) and max(scores) == scores[2] and scores[2] > 0.5
    # A fixed k is taken as given, with no curve.
    assert CL.fit(X[~valid], X[valid], seed=3, clusters=3).k == 3


def test_the_graph_standardises_and_serves_nearest_centroid_and_distance():
    X = blobs(3, 300, seed=4)
    c = CL.fit(X, X, seed=5, clusters="auto", clusters_max=5)
    onx = CL.export(c, "clusters", 2, NAMES)
    graph = onnx.load_from_string(onx).graph
    assert [i.name for i in graph.input] == ["features"] and [o.name for o in graph.output] == ["label", "scores"]
    cluster, distance = CL.score(onx, X)
    # The same as sklearn on the graph's standardisation (float32 Sub, Mul).
    Z = (X - c.standardize.mean) * c.standardize.inv_scale
    want = np.linalg.norm(Z[:, None, :] - c.kmeans.cluster_centers_[None], axis=2)
    assert np.array_equal(cluster, np.argmin(want, axis=1))
    np.testing.assert_allclose(distance, want.min(axis=1), rtol=1e-4, atol=1e-4)
    # A feature constant in training has weight 0: a caller sending it moves nothing.
    j = NAMES.index("sessions_7d")
    assert c.standardize.inv_scale[j] == 0
    moved = X.copy()
    moved[:, j] = 50.0
    assert np.array_equal(CL.score(onx, moved)[0], cluster)
    # A row on its centroid (every never-buyer is one point) has distance 0, not NaN.
    centre = c.kmeans.cluster_centers_[0] / np.where(c.standardize.inv_scale > 0, c.standardize.inv_scale, 1)
    on = (centre + c.standardize.mean).astype(np.float32)[None]
    on[0, j] = c.standardize.mean[j]
    assert np.isfinite(CL.score(onx, np.repeat(on, 4, axis=0))[1]).all()


def test_the_card_shows_the_curve_and_the_normalisation():
    X = np.random.default_rng(8).permutation(blobs(3, 200, seed=6))
    c = CL.fit(X[:400], X[400:], seed=7, clusters="auto", clusters_max=5)
    onx = CL.export(c, "clusters", 1, NAMES)
    card = CL.card(c, NAMES, X[:400], X[400:], onx, "auto", 5)
    sel = card["k_selection"]
    assert sel["chosen"] == 3 and sel["k"] == [2, 3, 4, 5] and len(sel["silhouette"]) == 4
    assert set(card["normalization"]["mean"]) == set(NAMES) and card["normalization"]["sd"]["sessions_7d"] == 0.0
    assert len(card["clusters"]) == 3 and abs(sum(card["metrics"]["cluster_shares_valid"]) - 1) < 1e-6
    assert sum(cl["train_rows"] for cl in card["clusters"]) == 400
