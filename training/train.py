"""Training, evaluation and export of the shipped ONNX models.

Used by pipeline.py (the entry point). Everything here is deterministic for a
given seed: customer-level split by a seeded hash of the customer id, fixed
random_state everywhere, single-threaded onnxruntime for the reference scores.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, log_loss, mean_absolute_error, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import btyd_model as BM
import features as F

TARGET_OPSET = 17
INPUT_NAME = "features"
TOLERANCE = {"binary_classification": 1e-5, "regression": 1e-4, "clustering": 1e-5}
GOLDEN_ROWS = 250


# --------------------------------------------------------------------------------------
# split
# --------------------------------------------------------------------------------------
def hash_share(ids, seed: int, salt: str = "split") -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per customer id (seeded)."""
    out = np.empty(len(ids), np.float64)
    for i, cid in enumerate(ids):
        h = hashlib.blake2b(f"{seed}:{salt}:{cid}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(h, "big") / 2.0**64
    return out


def validation_mask(ids, seed: int, share: float = 0.3) -> np.ndarray:
    """Customer-level split: True = validation. Each customer has one row, and
    the assignment depends only on (seed, customer_id)."""
    return hash_share(ids, seed, "split") < share


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------
def ece(y, p, bins: int = 10) -> float:
    """Expected calibration error, 10 equal-width probability bins, count-weighted."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    b = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        m = b == k
        if m.any():
            total += m.sum() * abs(y[m].mean() - p[m].mean())
    return total / len(y)


def classifier_metrics(y, p) -> dict:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return {
        "roc_auc": roc_auc_score(y, p),
        "log_loss": log_loss(y, p, labels=[0, 1]),
        "brier": brier_score_loss(y, p),
        "ece_10bin": ece(y, p),
        "positive_rate": float(np.mean(y)),
        "mean_predicted": float(np.mean(p)),
    }


def top_decile_capture(y, pred) -> float:
    """Share of the actual total captured by the top 10% of customers by prediction
    (stable sort; ties broken by row order)."""
    y = np.asarray(y, np.float64)
    k = max(1, len(y) // 10)
    top = np.argsort(-np.asarray(pred, np.float64), kind="stable")[:k]
    return float(y[top].sum() / y.sum()) if y.sum() > 0 else 0.0


def regression_metrics(y, pred) -> dict:
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    return {
        "mae": mean_absolute_error(y, pred),
        "rmse": float(np.sqrt(np.mean((y - pred) ** 2))),
        "spearman": float(spearmanr(pred, y)[0]),
        "top_decile_capture": top_decile_capture(y, pred),
        "mean_actual": float(y.mean()),
        "mean_predicted": float(pred.mean()),
    }


def _round(d: dict, digits: int = 6) -> dict:
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, (float, np.floating)) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
def gbc(seed: int) -> GradientBoostingClassifier:
    return GradientBoostingClassifier(
        n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
    )


def logistic(seed: int) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("lr", LogisticRegression(C=1.0, max_iter=2000, random_state=seed))]
    )


@dataclass
class LogTarget:
    """A regressor fitted on log1p(y); predicts expm1(.) clamped at 0. The ONNX export
    bakes the expm1 and the clamp into the graph."""

    model: GradientBoostingRegressor

    def fit(self, X, y):
        self.model.fit(X, np.log1p(y))
        return self

    def predict(self, X):
        return np.maximum(np.expm1(self.model.predict(X)), 0.0)


@dataclass
class Plain:
    model: Any

    def fit(self, X, y):
        self.model.fit(X, y)
        return self

    def predict(self, X):
        return np.maximum(self.model.predict(X), 0.0)


@dataclass
class PoissonMean:
    """A regressor with a log link and Poisson deviance (HistGradientBoosting
    `loss="poisson"`): it predicts the mean of a non-negative target, so sums
    over customers are a revenue forecast. `factor` is a seasonal calibration
    (fit.py sets it from a same-season snapshot a year back; 1 = none); the
    ONNX graph multiplies by the same float32 constant after the link's Exp."""

    model: Any
    factor: float = 1.0

    def fit(self, X, y):
        self.model.fit(X, y)
        return self

    def predict(self, X):
        raw = self.model.predict(X)
        return raw if self.factor == 1.0 else raw * float(np.float32(self.factor))


def gbr_log(seed: int) -> LogTarget:
    return LogTarget(
        GradientBoostingRegressor(
            n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
        )
    )


def gbr_huber(seed: int) -> Plain:
    return Plain(
        GradientBoostingRegressor(
            loss="huber", n_estimators=200, max_depth=3, learning_rate=0.1, subsample=0.8, random_state=seed
        )
    )


# --------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------
def _session(model_bytes: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def run_onnx(model_bytes: bytes, X: np.ndarray, output: str, column: int) -> np.ndarray:
    sess = _session(model_bytes)
    out = sess.run([output], {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)})[0]
    return np.asarray(out)[:, column].astype(np.float32)


def _finish(onx: onnx.ModelProto, name: str, version: int, feature_names: list[str]) -> bytes:
    # skl2onnx collects the opset domains in a set, so their order follows Python's
    # string hash seed, and it can list a domain twice: keep one entry per domain
    # (the highest version), sorted, for valid and byte-identical files.
    opsets: dict[str, int] = {}
    for o in onx.opset_import:
        opsets[o.domain] = max(o.version, opsets.get(o.domain, 0))
    del onx.opset_import[:]
    for domain in sorted(opsets):
        onx.opset_import.append(helper.make_opsetid(domain, opsets[domain]))
    onx.graph.name = f"segscore_{name}_v{version}"
    onx.doc_string = f"segscore {name} v{version}"
    del onx.metadata_props[:]
    for k, v in (
        ("segscore.model", name),
        ("segscore.version", str(version)),
        ("segscore.features", ",".join(feature_names)),
    ):
        onx.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    onnx.checker.check_model(onx, full_check=True)
    return onx.SerializeToString()


def _unwrap(model):
    """(the sklearn estimator, its Derived prefix or None, the name its graph reads)."""
    derived = getattr(model, "derived", None)
    if derived is not None:
        return model.model, derived, "derived_features"
    return model, None, INPUT_NAME


def _prune(graph) -> None:
    """Removes nodes none of whose outputs reach a graph output (a no-op for a
    graph without dead nodes: skl2onnx's graphs have none)."""
    needed = {o.name for o in graph.output}
    keep = []
    for n in reversed(list(graph.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    if len(keep) != len(graph.node):
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)


def export_classifier(model, n_features: int, name: str, version: int, feature_names) -> bytes:
    """A classifier, or a `derived.WithDerived` one: then the graph computes the
    derived columns from the served `features` first."""
    model, derived, inner_input = _unwrap(model)
    width = n_features + (len(derived.names) if derived else 0)
    # The BG/NBD candidates (btyd_model.py): the textbook model alone is a few
    # nodes on the derived columns; a blend is the base model's graph plus those.
    outer = model
    if isinstance(model, BM.BgNbdClassifier):
        onx = BM.standalone_graph(model, inner_input, width, f"segscore_{name}")
    else:
        if isinstance(model, BM.Blend):
            model = model.base
        with warnings.catch_warnings():
            # skl2onnx 1.20's VotingClassifier converter passes booleans as ints to
            # onnx.helper (a DeprecationWarning per call; the pinned protobuf accepts them).
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="onnx.helper")
            onx = convert_sklearn(
                model,
                name=f"segscore_{name}",
                initial_types=[(inner_input, FloatTensorType([None, width]))],
                target_opset=TARGET_OPSET,
                options={id(model): {"zipmap": False}},
            )
        if isinstance(outer, BM.Blend):
            BM.classifier_graph(onx.graph, outer, inner_input)
    if derived is not None:
        derived.prepend(onx.graph, inner_input, INPUT_NAME)
    # skl2onnx's VotingClassifier leaves an unused initializer (`classes_ind`), which
    # ONNX Runtime warns about at every load; drop any such (a no-op for the others).
    # A blend drops the base model's `label` node: drop what only fed it too.
    _prune(onx.graph)
    used = {i for n in onx.graph.node for i in n.input}
    unused = [t for t in onx.graph.initializer if t.name not in used]
    for t in unused:
        onx.graph.initializer.remove(t)
    outs = [o.name for o in onx.graph.output]
    if outs != ["label", "probabilities"]:
        raise RuntimeError(f"unexpected classifier outputs {outs}")
    return _finish(onx, name, version, feature_names)


def export_regressor(reg, n_features: int, name: str, version: int, feature_names, factor: float = 1.0) -> bytes:
    """Exports a Plain or LogTarget regressor; the output is named `ltv` [N, 1] and is
    the value itself (expm1, the calibration `factor` when not 1, and the clamp at 0
    are part of the graph). A `PoissonMean` gets the Exp of its log link; a
    `derived.WithDerived` wrapper puts the derived-feature nodes in front."""
    est, derived, inner_input = _unwrap(reg)
    if derived is not None:
        reg = est
    # A calibrated PoissonMean carries its own factor (the graph's ltv_calibration Mul).
    factor = float(np.float32(factor * getattr(reg, "factor", 1.0)))
    width = n_features + (len(derived.names) if derived else 0)
    onx = convert_sklearn(
        reg.model,
        name=f"segscore_{name}",
        initial_types=[(inner_input, FloatTensorType([None, width]))],
        target_opset=TARGET_OPSET,
    )
    g = onx.graph
    if derived is not None:
        derived.prepend(g, inner_input, INPUT_NAME)
    (raw,) = [o.name for o in g.output]
    nodes = []
    src = raw
    if isinstance(reg, PoissonMean):
        # skl2onnx 1.20 emits HistGradientBoostingRegressor's raw (log-link) score.
        nodes.append(helper.make_node("Exp", [src], ["ltv_mean"], name="ltv_exp_link"))
        src = "ltv_mean"
    if isinstance(reg, LogTarget):
        g.initializer.append(numpy_helper.from_array(np.array([1.0], np.float32), "ltv_one"))
        nodes += [
            helper.make_node("Exp", [src], ["ltv_exp"], name="ltv_exp"),
            helper.make_node("Sub", ["ltv_exp", "ltv_one"], ["ltv_expm1"], name="ltv_expm1"),
        ]
        src = "ltv_expm1"
    if factor != 1.0:
        g.initializer.append(numpy_helper.from_array(np.array([factor], np.float32), "ltv_factor"))
        nodes.append(helper.make_node("Mul", [src, "ltv_factor"], ["ltv_scaled"], name="ltv_calibration"))
        src = "ltv_scaled"
    nodes.append(helper.make_node("Relu", [src], ["ltv"], name="ltv_clamp_nonnegative"))
    g.node.extend(nodes)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("ltv", TensorProto.FLOAT, [None, 1]))
    return _finish(onx, name, version, feature_names)


# --------------------------------------------------------------------------------------
# repository output
# --------------------------------------------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        v = float(v)
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v)} to TOML")


def render_manifest(
    name: str,
    version: int,
    task: str,
    file: str,
    sha256: str,
    score: dict,
    features_raw: list[dict],
    golden_file: str,
    tolerance: float,
    card: dict,
) -> str:
    lines = [
        f"# segscore model manifest, written by training/pipeline.py (written last: its",
        f"# presence means the version directory is complete).",
        f"name = {toml_value(name)}",
        f"version = {version}",
        f"task = {toml_value(task)}",
        'format = "onnx"',
        f"file = {toml_value(file)}",
        f"sha256 = {toml_value(sha256)}",
        f"score = {toml_value(score)}",
        "",
        "# Input columns in model order, copied from training/features.toml.",
    ]
    for spec in features_raw:
        lines.append("[[features]]")
        for k, v in spec.items():
            lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    lines += [
        "[golden]",
        f"file = {toml_value(golden_file)}",
        "# a score passes when |got - expected| <= tolerance * max(1, |expected|)",
        f"tolerance = {toml_value(tolerance)}",
        "",
        "[card]",
    ]
    tables = {k: v for k, v in card.items() if isinstance(v, dict)}
    for k, v in card.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {toml_value(v)}")
    for tname, table in tables.items():
        lines += ["", f"[card.{tname}]"]
        for k, v in table.items():
            lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def golden_rows(df: pd.DataFrame, seed: int, n: int = GOLDEN_ROWS, schema=None) -> np.ndarray:
    """Row positions (into df) for a golden set: every region category and missing
    region, rows with each kind of missing value, edge rows (largest spenders,
    abandoned carts), then random rows up to n. Sorted by customer_id."""
    schema = schema or F.load_schema()
    rng = np.random.default_rng(seed)
    chosen = np.zeros(len(df), bool)

    def take(mask, k):
        idx = np.flatnonzero(np.asarray(mask, bool) & ~chosen)
        if len(idx):
            chosen[rng.choice(idx, size=min(k, len(idx)), replace=False)] = True

    for f in schema:
        if f.dtype == "category":
            for cat in f.categories:
                take(df[f.name] == cat, 8)
        if not f.reject_missing:
            take(df[f.name].isna().to_numpy(), 12)
    take((df["cart_abandoned_24h"] == True).fillna(False).to_numpy(), 6)  # noqa: E712
    biggest = np.argsort(-df["monetary_total"].to_numpy(dtype=np.float64), kind="stable")[:4]
    chosen[biggest] = True
    take(np.ones(len(df), bool), max(0, n - int(chosen.sum())))
    idx = np.flatnonzero(chosen)
    return idx[np.argsort(df["customer_id"].to_numpy()[idx], kind="stable")]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def trained_at() -> str:
    """UTC now, or SOURCE_DATE_EPOCH when set (for byte-identical manifests)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    ts = datetime.fromtimestamp(int(epoch), timezone.utc) if epoch else datetime.now(timezone.utc)
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def write_version(
    models_dir: Path,
    name: str,
    version: int,
    task: str,
    model_bytes: bytes,
    score: dict,
    golden_df: pd.DataFrame,
    card: dict,
    schema_path: Path | None = None,
) -> Path:
    """models/<name>/<version>/ in place (`make models` rewrites the shipped
    versions): an existing manifest is removed first so a watcher never pairs an
    old manifest with a new model file, then the files, manifest last."""
    d = Path(models_dir) / name / str(version)
    d.mkdir(parents=True, exist_ok=True)
    manifest = d / "model.toml"
    if manifest.exists():
        manifest.unlink()
    for stale in d.glob("*.tmp"):
        stale.unlink()
    write_version_files(d, name, version, task, model_bytes, score, golden_df, card, F.load_schema(schema_path))
    return d


def write_version_files(
    d: Path,
    name: str,
    version: int,
    task: str,
    model_bytes: bytes,
    score: dict,
    golden_df: pd.DataFrame,
    card: dict,
    schema: list,
) -> None:
    """model.onnx, golden.csv, then model.toml (atomically, last) into the directory
    `d`. `schema` is the model's input features (features.toml's, or a subset of
    them in the same order); their features.toml entries go into the manifest."""
    d = Path(d)
    model_path = d / "model.onnx"
    model_path.write_bytes(model_bytes)
    # A clustering golden set has the cluster next to the distance (as the server checks it).
    F.write_feature_csv(d / "golden.csv", golden_df, schema,
                        extra=[c for c in ("expected_cluster", "expected") if c in golden_df.columns])
    features_raw = [f.raw for f in schema]
    text = render_manifest(
        name, version, task, "model.onnx", sha256_file(model_path), score, features_raw,
        "golden.csv", TOLERANCE[task], card,
    )
    tmp = d / "model.toml.tmp"
    tmp.write_text(text)
    os.replace(tmp, d / "model.toml")


# --------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------
@dataclass
class Candidate:
    key: str
    make: Callable[[int], Any]
    description: str


def select(candidates: list[Candidate], X, y, inner_valid: np.ndarray, seed: int, score_fn, higher_is_better):
    """Fits each candidate on the inner-train part of the training set, scores it on
    the inner-validation part (never on the real validation set), returns
    (best candidate, {key: inner score})."""
    scores = {}
    for c in candidates:
        m = c.make(seed).fit(X[~inner_valid], y[~inner_valid])
        scores[c.key] = float(score_fn(y[inner_valid], m, X[inner_valid]))
    pick = (max if higher_is_better else min)(candidates, key=lambda c: scores[c.key])
    return pick, scores


if __name__ == "__main__":
    # This module is the pipeline's library; its command line is pipeline.py's
    # (`train.py fit ...` = `pipeline.py fit ...`), so `train.py --help` says how
    # to train instead of printing nothing.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pipeline

    pipeline.main()
