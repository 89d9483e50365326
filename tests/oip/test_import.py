"""Bring your own model: exporters people use -> `segscore models import` ->
serve -> tritonclient with the graph's own input names, compared with Python
onnxruntime on the same rows.

Each model is tiny and trained inside the test (seconds on 2 cores). All are
imported into one temporary repository, served by one release binary on an
ephemeral port, found ready through its "serving" log line.
"""

import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import tritonclient.grpc as triton

from served import BIN, serve, stop  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(20261203)


def segscore(*args, check=True):
    if not BIN.exists():
        pytest.fail(f"{BIN} is missing: run `cargo build --release` first")
    proc = subprocess.run(
        [str(BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"segscore {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


def numeric_frame(rows, columns):
    return pd.DataFrame(
        RNG.normal(size=(rows, len(columns))).astype(np.float32) * 10 + 50, columns=columns
    )


def skl_binary(tmp):
    """sklearn GradientBoostingClassifier, one float matrix input `input`."""
    from sklearn.ensemble import GradientBoostingClassifier
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    cols = [f"f{i}" for i in range(6)]
    x = numeric_frame(300, cols)
    y = (x["f0"] + 0.5 * x["f3"] > 75).astype(int)
    model = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0).fit(x.values, y)
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, len(cols)]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx, x, {"input": x.values.astype(np.float32)}


def skl_pipeline(tmp):
    """StandardScaler + OneHotEncoder in a ColumnTransformer over a string
    column, then LogisticRegression: one graph input per column."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    n = 300
    x = pd.DataFrame(
        {
            "age": RNG.uniform(18, 80, n).astype(np.float32).round(1),
            "income": RNG.uniform(1e4, 1e5, n).astype(np.float32).round(0) + 0.5,
            "city": RNG.choice(["berlin", "lisbon", "oslo"], n),
        }
    )
    y = ((x["age"] > 40) ^ (x["city"] == "oslo")).astype(int)
    pipe = Pipeline(
        [
            (
                "prep",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), ["age", "income"]),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                    ]
                ),
            ),
            ("clf", LogisticRegression(max_iter=200)),
        ]
    ).fit(x, y)
    onx = to_onnx(
        pipe,
        initial_types=[
            ("age", FloatTensorType([None, 1])),
            ("income", FloatTensorType([None, 1])),
            ("city", StringTensorType([None, 1])),
        ],
        options={id(pipe): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    feeds = {
        "age": x[["age"]].values.astype(np.float32),
        "income": x[["income"]].values.astype(np.float32),
        "city": x[["city"]].values.astype(object),
    }
    return onx, x, feeds


def lgbm_binary(tmp):
    """LightGBM via onnxmltools, labels 0/1: the positive class is column 1."""
    import lightgbm
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    cols = ["recency", "frequency", "spend", "visits"]
    x = numeric_frame(400, cols)
    y = (x["spend"] - x["recency"] > 0).astype(int)
    model = lightgbm.LGBMClassifier(n_estimators=8, num_leaves=7, min_child_samples=5, verbose=-1)
    model.fit(x.values, y)
    onx = convert_lightgbm(
        model,
        initial_types=[("input", FloatTensorType([None, len(cols)]))],
        zipmap=False,
        target_opset=15,
    )
    return onx, x, {"input": x.values.astype(np.float32)}


def xgb_regressor(tmp):
    """XGBoost regressor via onnxmltools: output `variable` [N, 1]."""
    import xgboost
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    cols = ["tenure", "basket", "returns"]
    x = numeric_frame(300, cols)
    y = x["tenure"] * 2 + x["basket"] - x["returns"]
    model = xgboost.XGBRegressor(n_estimators=8, max_depth=3, tree_method="hist").fit(x.values, y)
    onx = convert_xgboost(
        model,
        initial_types=[("input", FloatTensorType([None, len(cols)]))],
        target_opset=15,
    )
    return onx, x, {"input": x.values.astype(np.float32)}


def skl_multiclass(tmp):
    """Next best offer: three string classes, multinomial LogisticRegression."""
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    cols = ["engagement", "spend"]
    x = numeric_frame(300, cols)
    y = np.where(x["spend"] > 58, "premium", np.where(x["engagement"] > 50, "plus", "basic"))
    model = LogisticRegression(max_iter=500).fit(x.values, y)
    onx = to_onnx(
        model,
        initial_types=[("float_input", FloatTensorType([None, len(cols)]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx, x, {"float_input": x.values.astype(np.float32)}


def skl_kmeans(tmp):
    """Behavioural clusters: sklearn KMeans, `label` and `scores` (distances)."""
    from sklearn.cluster import KMeans
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    cols = ["sessions", "spend", "tenure"]
    centres = np.array([[5, 20, 100], [40, 80, 400], [15, 200, 900]], dtype=np.float32)
    x = pd.DataFrame(
        np.concatenate([c + RNG.normal(size=(100, 3)).astype(np.float32) * 3 for c in centres]),
        columns=cols,
    )
    model = KMeans(n_clusters=3, n_init=3, random_state=0).fit(x.values)
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, len(cols)]))],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return onx, x, {"input": x.values.astype(np.float32)}


MODELS = {
    "skl_binary": skl_binary,
    "skl_pipeline": skl_pipeline,
    "lgbm_binary": lgbm_binary,
    "xgb_regressor": xgb_regressor,
    "next_offer": skl_multiclass,
    "clusters_km": skl_kmeans,
}


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every model exported, imported with one command each, then served."""
    tmp = tmp_path_factory.mktemp("byom")
    repo = tmp / "repo"
    repo.mkdir()
    cases = {}
    for name, build in MODELS.items():
        onx, frame, feeds = build(tmp)
        onnx_path = tmp / f"{name}.onnx"
        onnx_path.write_bytes(onx.SerializeToString())
        sample = tmp / f"{name}.csv"
        frame.to_csv(sample, index=False)
        out = segscore(
            "models", "import", "--onnx", onnx_path, "--sample", sample,
            "--name", name, "--model-repository", repo,
        )
        assert f"imported {name} v1" in out.stdout
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        cases[name] = {"feeds": feeds, "reference": session.run(None, feeds), "session": session}
    segscore("models", "validate", repo)
    rules = tmp / "segments.toml"
    rules.write_text(
        '[[segments]]\nname = "premium_offer"\n'
        'rule = \'scores.next_offer.label == "premium"\'\n'
    )
    try:
        proc, addr = serve(["--model-repository", repo, "--segments", rules, "--workers", "1"])
    except TimeoutError as e:
        pytest.fail(str(e))
    try:
        yield {"addr": addr, "cases": cases, "repo": repo, "tmp": tmp}
    finally:
        assert stop(proc) == 0


def infer_input(name, array):
    datatype = "BYTES" if array.dtype == object else "FP32"
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def infer(addr, name, feeds, outputs):
    client = triton.InferenceServerClient(url=addr)
    return client.infer(
        name,
        [infer_input(k, v) for k, v in feeds.items()],
        outputs=[triton.InferRequestedOutput(o) for o in outputs],
    )


@pytest.mark.parametrize("name", ["skl_binary", "skl_pipeline", "lgbm_binary"])
def test_binary_classifiers_speak_the_graph_s_language(imported, name):
    case = imported["cases"][name]
    label, probabilities = case["reference"][0], case["reference"][1]
    result = infer(imported["addr"], name, case["feeds"], ["score", "probabilities", "label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    # The positive class (label 1) is column 1, found without being told.
    np.testing.assert_allclose(result.as_numpy("score"), probabilities[:, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("label"), label)
    manifest = (imported["repo"] / name / "1" / "model.toml").read_text()
    assert 'column = 1' in manifest and 'classes = ["0", "1"]' in manifest


def test_xgboost_regressor_matches_onnxruntime(imported):
    case = imported["cases"]["xgb_regressor"]
    result = infer(imported["addr"], "xgb_regressor", case["feeds"], ["score"])
    np.testing.assert_allclose(result.as_numpy("score"), case["reference"][0][:, 0], rtol=1e-5, atol=1e-4)
    with pytest.raises(triton.InferenceServerException) as err:
        infer(imported["addr"], "xgb_regressor", case["feeds"], ["probabilities"])
    assert "has no output `probabilities`" in str(err.value)


def test_multiclass_serves_every_class_and_the_argmax_label(imported):
    case = imported["cases"]["next_offer"]
    label, probabilities = case["reference"][0], case["reference"][1]
    result = infer(imported["addr"], "next_offer", case["feeds"], ["score", "probabilities", "label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("score"), probabilities.max(axis=1), rtol=1e-5, atol=1e-6)
    got = [v.decode() for v in result.as_numpy("label").reshape(-1)]
    assert got == list(label)
    assert {"basic", "plus", "premium"} <= set(got)


def test_kmeans_serves_the_nearest_cluster_and_its_distance(imported):
    case = imported["cases"]["clusters_km"]
    label, distances = case["reference"][0], case["reference"][1]
    result = infer(imported["addr"], "clusters_km", case["feeds"], ["score", "cluster_id"])
    np.testing.assert_array_equal(result.as_numpy("cluster_id"), label)
    np.testing.assert_allclose(result.as_numpy("score"), distances.min(axis=1), rtol=1e-5, atol=1e-4)
    assert len(set(label)) == 3
    manifest = (imported["repo"] / "clusters_km" / "1" / "model.toml").read_text()
    assert 'task = "clustering"' in manifest and 'output = "scores"' in manifest


def test_metadata_alone_is_enough_to_build_a_request(imported):
    client = triton.InferenceServerClient(url=imported["addr"])
    meta = client.get_model_metadata("skl_pipeline", as_json=True)
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs == {
        "age": ("FP32", ["-1", "1"]),
        "income": ("FP32", ["-1", "1"]),
        "city": ("BYTES", ["-1", "1"]),
    }
    outputs = {o["name"]: o["datatype"] for o in meta["outputs"]}
    assert outputs == {"score": "FP32", "probabilities": "FP32", "label": "INT64"}
    # A request built from the metadata (names, datatypes, shapes) alone.
    feeds = {
        "age": np.array([[30.0], [60.0]], dtype=np.float32),
        "income": np.array([[20000.5], [50000.5]], dtype=np.float32),
        "city": np.array([["oslo"], ["berlin"]], dtype=object),
    }
    result = infer(imported["addr"], "skl_pipeline", feeds, ["score"])
    reference = imported["cases"]["skl_pipeline"]["session"].run(None, feeds)[1][:, 1]
    np.testing.assert_allclose(result.as_numpy("score"), reference, rtol=1e-5, atol=1e-6)


def test_the_legacy_features_matrix_still_works_for_imported_models(imported):
    case = imported["cases"]["lgbm_binary"]
    feeds = {"features": case["feeds"]["input"]}
    result = infer(imported["addr"], "lgbm_binary", feeds, ["score"])
    np.testing.assert_allclose(result.as_numpy("score"), case["reference"][1][:, 1], rtol=1e-5, atol=1e-6)


def write_onnx(tmp, name, builder):
    onx, frame, _ = builder(tmp)
    path = tmp / f"{name}.onnx"
    path.write_bytes(onx.SerializeToString())
    return path, frame


def test_import_errors_are_precise(tmp_path):
    onnx_path, frame = write_onnx(tmp_path, "m", skl_binary)
    repo = tmp_path / "repo"

    def refused(sample_text, *extra):
        sample = tmp_path / "sample.csv"
        sample.write_text(sample_text)
        proc = segscore("models", "import", "--onnx", onnx_path, "--sample", sample,
                        "--name", "m", "--model-repository", repo, *extra, check=False)
        assert proc.returncode == 1, proc.stdout
        return proc.stderr

    rows = frame.head(5)
    headerless = rows.to_csv(index=False, header=False)
    assert "wrong header" in refused(headerless)
    narrow = rows.drop(columns=["f5"]).to_csv(index=False)
    err = refused(narrow)
    assert "input `input` takes 6 columns but the sample has 5" in err, err
    err = refused(narrow, "--features", "f0,f1,f2,f3,f4,f5")
    assert "has no column `f5`" in err, err
    assert not (repo / "m").exists() or not any((repo / "m").iterdir())


def test_bad_onnx_and_zipmap_classifiers_are_refused_with_the_fix(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    sample = tmp_path / "sample.csv"
    frame = numeric_frame(50, ["a", "b"])
    frame.to_csv(sample, index=False)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07not an onnx model" * 10)
    proc = segscore("models", "import", "--onnx", garbage, "--sample", sample, "--name", "g",
                    "--model-repository", tmp_path / "repo", check=False)
    assert proc.returncode == 1 and "not a usable ONNX model" in proc.stderr, proc.stderr
    model = LogisticRegression().fit(frame.values, frame["a"] > 50)
    zipmap = tmp_path / "zipmap.onnx"
    zipmap.write_bytes(to_onnx(model, initial_types=[("input", FloatTensorType([None, 2]))],
                               target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
    proc = segscore("models", "import", "--onnx", zipmap, "--sample", sample, "--name", "z",
                    "--model-repository", tmp_path / "repo", check=False)
    assert proc.returncode == 1 and "zipmap" in proc.stderr, proc.stderr


def test_dry_run_prints_the_manifest_and_writes_nothing(tmp_path):
    onnx_path, frame = write_onnx(tmp_path, "m", lgbm_binary)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    repo = tmp_path / "repo"
    out = segscore("models", "import", "--onnx", onnx_path, "--sample", sample, "--name", "m",
                   "--model-repository", repo, "--dry-run").stdout
    assert 'name = "m"' in out and "[[features]]" in out and 'task = "binary_classification"' in out
    assert not (repo / "m" / "1").exists()


def test_a_second_import_is_the_next_version(imported, tmp_path):
    repo = tmp_path / "repo"
    onnx_path, frame = write_onnx(tmp_path, "m", xgb_regressor)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    for version in (1, 2):
        out = segscore("models", "import", "--onnx", onnx_path, "--sample", sample, "--name", "m",
                       "--model-repository", repo).stdout
        assert f"imported m v{version}" in out
    v1 = (repo / "m" / "1" / "model.toml").read_text()
    assert "version = 1" in v1
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2"]


@pytest.mark.parametrize("remote", [False, True])
def test_a_multiclass_label_feeds_a_segment_rule(imported, tmp_path, remote):
    """`scores.next_offer.label == "premium"`, evaluated in-process and by the
    server (Score), against the labels Python onnxruntime predicts."""
    case = imported["cases"]["next_offer"]
    x = case["feeds"]["float_input"]
    frame = pd.DataFrame(x, columns=["engagement", "spend"])
    frame.insert(0, "customer_id", [f"C{i:04d}" for i in range(len(frame))])
    source = tmp_path / "customers.csv"
    frame.to_csv(source, index=False)
    output = tmp_path / "scored.csv"
    where = ["--addr", imported["addr"]] if remote else [
        "--model-repository", imported["repo"],
        "--segments-file", imported["tmp"] / "segments.toml",
    ]
    segscore("score", "--input", source, "--output", output, "--models", "next_offer",
             "--segments", "premium_offer", *where)
    scored = pd.read_csv(output)
    expected = np.asarray(case["reference"][0]) == "premium"
    assert expected.any() and not expected.all()
    np.testing.assert_array_equal(scored["segment:premium_offer"].astype(bool).values, expected)


def test_one_command_takes_a_model_to_serving_on_a_running_server(imported, tmp_path):
    """The issue's "done when": model.onnx + sample CSV -> SERVING, with the
    server already running (its repository watcher picks the version up)."""
    import time

    onnx_path, frame = write_onnx(tmp_path, "late", lgbm_binary)
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)
    segscore("models", "import", "--onnx", onnx_path, "--sample", sample,
             "--name", "late_arrival", "--model-repository", imported["repo"])
    client = triton.InferenceServerClient(url=imported["addr"])
    # A readiness poll, bounded generously; it returns as soon as it is ready.
    deadline = time.monotonic() + 120
    while True:
        # False (as in Triton, not NOT_FOUND) until the watcher has loaded it.
        if client.is_model_ready("late_arrival"):
            break
        assert time.monotonic() < deadline, "late_arrival never became ready"
        time.sleep(0.05)
    x = frame.values.astype(np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    result = infer(imported["addr"], "late_arrival", {"input": x}, ["score"])
    np.testing.assert_allclose(result.as_numpy("score"), session.run(None, {"input": x})[1][:, 1],
                               rtol=1e-5, atol=1e-6)


def test_positive_class_picks_the_score_column_by_label(tmp_path):
    """String labels sort alphabetically: with classes ["churned", "stayed"]
    the default score would be P(stayed); --positive-class churned says which."""
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    frame = numeric_frame(200, ["a", "b"])
    y = np.where(frame["a"] > 50, "churned", "stayed")
    model = LogisticRegression().fit(frame.values, y)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(to_onnx(model, initial_types=[("input", FloatTensorType([None, 2]))],
                                  options={id(model): {"zipmap": False}},
                                  target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString())
    sample = tmp_path / "sample.csv"
    frame.to_csv(sample, index=False)

    def manifest(*extra, check=True):
        return segscore("models", "import", "--onnx", onnx_path, "--sample", sample, "--name", "m",
                        "--model-repository", tmp_path / "repo", "--dry-run", *extra, check=check)

    default = manifest().stdout
    assert 'classes = ["churned", "stayed"]' in default and "column = 1" in default
    picked = manifest("--positive-class", "churned").stdout
    assert "column = 0" in picked and "probability of class `churned`" in picked
    wrong = manifest("--positive-class", "maybe", check=False)
    assert wrong.returncode == 1 and "is not one of the model's classes" in wrong.stderr
