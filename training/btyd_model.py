"""The textbook model as a candidate `fit` can ship: BG/NBD's own probability, and
a blend of it with a trained classifier.

On a purchases-only table the BG/NBD probability fitted at the cutoff is hard to
beat (CDNOW at 1997-06-03: every model trained on earlier label windows lost to
it). Rather than only comparing against it, `fit` lets the inner split choose it:

* `BgNbdClassifier` serves P(purchase in 30 days) = 1 - p_quiet_30d (propensity)
  or P(no purchase in 90 days) = p_quiet_90d (churn), read from the derived
  columns (derived.py: the BG/NBD parameters fitted on the training customers'
  purchases, baked into the graph as constants). It has nothing to learn; with
  `platt=True` it learns a logistic recalibration a * logit(p) + b on the
  training rows (float64, as the graph computes it).
* `Blend` is w * P(trained classifier) + (1 - w) * P(BG/NBD), the weight chosen
  on the inner split like every other choice (fit.py).

Both read the `[features, derived]` matrix that `derived.WithDerived` builds, so
the ONNX graph is the derived prefix plus a few nodes here; numpy and
onnxruntime compute the same operations in the same precision (a test checks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

import derived as D

# The column each label reads, as an index from the end of the derived matrix
# (derived.BTYD = p_alive, p_quiet_30d, p_quiet_90d are its last three columns).
COLUMN = {"propensity": ("p_quiet_30d", False), "churn": ("p_quiet_90d", True)}
CLIP = 1e-7


def _col_index(name: str) -> int:
    return D.BTYD.index(name) - len(D.BTYD)


@dataclass
class BgNbdClassifier:
    """P(positive) from one BG/NBD column of the derived matrix (see module doc)."""

    column: str                    # p_quiet_30d or p_quiet_90d
    positive_when_quiet: bool      # churn: quiet is the positive class
    platt: bool = False
    coef: float = 1.0              # a * logit(p) + b (identity when not platt)
    intercept: float = 0.0

    def _raw(self, X) -> np.ndarray:
        q = np.asarray(X, np.float32)[:, _col_index(self.column)]
        return q if self.positive_when_quiet else np.float32(1.0) - q

    @staticmethod
    def _logit(p32):
        p = np.clip(p32.astype(np.float64), CLIP, 1.0 - CLIP)
        return np.log(p) - np.log(1.0 - p)

    def fit(self, X, y, **_):
        if self.platt:
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(self._logit(self._raw(X))[:, None], np.asarray(y))
            self.coef, self.intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        self.classes_ = np.array([0, 1])
        return self

    def positive(self, X) -> np.ndarray:
        p = self._raw(X)
        if not self.platt:
            return p
        s = self.coef * self._logit(p) + self.intercept
        return (1.0 / (1.0 + np.exp(-s))).astype(np.float32)

    def predict_proba(self, X):
        p = self.positive(X)
        return np.column_stack([np.float32(1.0) - p, p])

    def predict(self, X):
        return (self.positive(X) > np.float32(0.5)).astype(np.int64)

    feature_importances_ = None

    def describe(self) -> str:
        what = ("P(no purchase in 90 days)" if self.positive_when_quiet else "1 - P(no purchase in 30 days)")
        return (f"BG/NBD {what} from the derived columns (the BG/NBD parameters fitted on the training customers' "
                "purchases at the cutoff, constants in the graph)"
                + ("; Platt-recalibrated: sigmoid(a * logit(p) + b) fitted on the training rows" if self.platt else
                   "; nothing trained on the labels"))

    def nodes(self, inner_input: str, prefix: str):
        """ONNX nodes and initializers computing P(positive) [N, 1] (float32) from
        `inner_input`; returns (nodes, initializers, output name)."""
        nodes, inits = [], []

        def const(name, value, dtype):
            inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), f"{prefix}{name}"))
            return f"{prefix}{name}"

        def node(op, inputs, out, **kw):
            nodes.append(helper.make_node(op, inputs, [f"{prefix}{out}"], name=f"{prefix}{out}", **kw))
            return f"{prefix}{out}"

        idx = const("col", [_col_index(self.column)], np.int64)
        q = node("Gather", [inner_input, idx], "q", axis=1)
        p = q if self.positive_when_quiet else node("Sub", [const("one", [1.0], np.float32), q], "p_raw")
        if self.platt:
            p64 = node("Cast", [p], "p64", to=TensorProto.DOUBLE)
            pc = node("Clip", [p64, const("lo", CLIP, np.float64), const("hi", 1.0 - CLIP, np.float64)], "pc")
            one = const("one64", [1.0], np.float64)
            z = node("Sub", [node("Log", [pc], "log_p"),
                             node("Log", [node("Sub", [one, pc], "one_minus_p")], "log_1mp")], "logit")
            s = node("Add", [node("Mul", [z, const("a", [self.coef], np.float64)], "az"),
                             const("b", [self.intercept], np.float64)], "s")
            sig = node("Div", [one, node("Add", [one, node("Exp", [node("Neg", [s], "neg_s")], "exp")], "den")],
                       "sigmoid")
            p = node("Cast", [sig], "p", to=TensorProto.FLOAT)
        return nodes, inits, p


@dataclass
class Blend:
    """w * P(base) + (1 - w) * P(BG/NBD): a soft vote of a trained classifier and
    the textbook model, the weight chosen on the inner split."""

    base: object
    btyd: BgNbdClassifier
    weight: float

    def fit(self, X, y, **kw):
        self.base.fit(X, y, **kw)
        self.btyd.fit(X, y)
        self.classes_ = np.array([0, 1])
        return self

    def positive(self, X) -> np.ndarray:
        w = np.float32(self.weight)
        pb = self.base.predict_proba(X)[:, 1].astype(np.float32)
        return (w * pb + (np.float32(1.0) - w) * self.btyd.positive(X)).astype(np.float32)

    def predict_proba(self, X):
        p = self.positive(X)
        return np.column_stack([np.float32(1.0) - p, p])

    def predict(self, X):
        return (self.positive(X) > np.float32(0.5)).astype(np.int64)

    @property
    def feature_importances_(self):
        return getattr(self.base, "feature_importances_", None)


def classifier_graph(graph, model, inner_input: str) -> None:
    """Rewrites `graph` so that its outputs `label` [N] int64 and `probabilities`
    [N, 2] float are `model`'s: for a BgNbdClassifier the graph is built from
    scratch (its input is `inner_input`), for a Blend the base model's converted
    graph gets the BG/NBD nodes and the weighted mean appended."""
    nodes, inits = [], []
    if isinstance(model, Blend):
        # The base graph (skl2onnx) computes its own `probabilities` and `label`
        # (one node may output both): rename them, mix, and serve the blend's own.
        renamed = {"probabilities": "base_probabilities", "label": "base_label"}
        for n in graph.node:
            for i, o in enumerate(n.output):
                n.output[i] = renamed.get(o, o)
            for i, o in enumerate(n.input):
                n.input[i] = renamed.get(o, o)
        bn, bi, pb = model.btyd.nodes(inner_input, "btyd_")
        nodes += bn
        inits += bi
        inits += [numpy_helper.from_array(np.array([1], np.int64), "blend_idx1"),
                  numpy_helper.from_array(np.array([model.weight], np.float32), "blend_w"),
                  numpy_helper.from_array(np.array([1.0 - np.float32(model.weight)], np.float32), "blend_1mw")]
        nodes.append(helper.make_node("Gather", ["base_probabilities", "blend_idx1"], ["blend_pb"], axis=1,
                                      name="blend_pb"))
        nodes.append(helper.make_node("Mul", ["blend_pb", "blend_w"], ["blend_wpb"], name="blend_wpb"))
        nodes.append(helper.make_node("Mul", [pb, "blend_1mw"], ["blend_wq"], name="blend_wq"))
        nodes.append(helper.make_node("Add", ["blend_wpb", "blend_wq"], ["blend_p"], name="blend_p"))
        p = "blend_p"
    else:
        bn, bi, p = model.nodes(inner_input, "btyd_")
        nodes += bn
        inits += bi
    inits += [numpy_helper.from_array(np.array([1.0], np.float32), "out_one"),
              numpy_helper.from_array(np.array([0.5], np.float32), "out_half"),
              numpy_helper.from_array(np.array([-1], np.int64), "out_flat")]
    nodes += [
        helper.make_node("Sub", ["out_one", p], ["out_p0"], name="out_p0"),
        helper.make_node("Concat", ["out_p0", p], ["probabilities"], axis=1, name="out_probabilities"),
        helper.make_node("Greater", [p, "out_half"], ["out_gt"], name="out_gt"),
        helper.make_node("Cast", ["out_gt"], ["out_label64"], to=TensorProto.INT64, name="out_label64"),
        helper.make_node("Reshape", ["out_label64", "out_flat"], ["label"], name="out_label"),
    ]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)


def standalone_graph(model: BgNbdClassifier, inner_input: str, width: int, name: str):
    """A model whose only input is `inner_input` [N, width] and whose outputs are
    the classifier contract's (label, probabilities)."""
    graph = helper.make_graph(
        [], name, [helper.make_tensor_value_info(inner_input, TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])])
    classifier_graph(graph, model, inner_input)
    # IR 8 is what opset 17 needs (and what skl2onnx writes for the other models).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
