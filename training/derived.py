"""Derived features computed *inside* the exported ONNX graph from the served inputs.

The served contract is `features.toml` (recency_days, frequency, tenure_days, ...):
callers, sample files and the server's range checks all speak it. A model that
wants inter-purchase-time ratios or BTYD quantities therefore cannot ask the
caller for them; instead the graph computes them from the 12 inputs, with any
fitted constants (the BG/NBD parameters) baked in as initializers, and feeds
`[inputs, derived]` to the trees. Training computes the same columns with the
same operations in numpy, so the trees see at training what the server feeds
them:

* float32 ratios (Sub, Div, Max only: IEEE-exact, so numpy and onnxruntime
  agree bit for bit):
  - `recency_over_gap` = recency / max(mean inter-purchase gap, 1), the gap being
    (tenure - recency) / max(frequency - 1, 1): how overdue the next purchase is;
  - `purchase_rate` = frequency / max(tenure, 1);
  - `recency_share` = recency / max(tenure, 1);
  - `recent_share` = purchases_90d / max(frequency, 1): the trend;
* BG/NBD quantities in float64 (Log, Exp), cast to float32, with the BG/NBD
  parameters fitted on the training customers' purchases as constants, and the
  history read off the served features (x = frequency - 1 repeat purchases,
  t_x = tenure - recency, T = tenure; exact for a purchases-only customer whose
  tenure starts at the first purchase, an approximation when a signup date
  comes earlier):
  - `p_alive` = 1 / (1 + [x > 0] a / (b + x - 1) ((alpha + T) / (alpha + t_x))^(r + x));
  - `p_quiet_30d`, `p_quiet_90d` = P(no purchase in the next 30 / 90 days)
    = 1 - p_alive + p_alive ((alpha + T) / (alpha + T + d))^(r + x).

When a feature these need is not among the model's inputs (`fit --features`),
no derived column is added.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto, helper, numpy_helper

NEEDS = ("recency_days", "frequency", "tenure_days", "purchases_90d")
RATIOS = ("recency_over_gap", "purchase_rate", "recency_share", "recent_share")
BTYD = ("p_alive", "p_quiet_30d", "p_quiet_90d")
QUIET_DAYS = (30.0, 90.0)


@dataclass
class Derived:
    feature_names: list[str]
    bgnbd: dict | None = None  # {"r", "alpha", "a", "b"}

    @property
    def active(self) -> bool:
        return all(n in self.feature_names for n in NEEDS)

    @property
    def names(self) -> list[str]:
        if not self.active:
            return []
        return list(RATIOS) + (list(BTYD) if self.bgnbd else [])

    def _col(self, X, name):
        return X[:, self.feature_names.index(name)]

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float32)
        if not self.active:
            return X
        f32 = np.float32
        r, f, t, p90 = (self._col(X, n) for n in NEEDS)
        one = f32(1.0)
        gap = (t - r) / np.maximum(f - one, one)
        cols = [r / np.maximum(gap, one), f / np.maximum(t, one), r / np.maximum(t, one), p90 / np.maximum(f, one)]
        if self.bgnbd:
            rr, al, a, b = (float(self.bgnbd[k]) for k in ("r", "alpha", "a", "b"))
            r64, f64, t64 = r.astype(np.float64), f.astype(np.float64), t.astype(np.float64)
            x = np.maximum(f64 - 1.0, 0.0)
            tx = np.maximum(t64 - r64, 0.0)
            T = np.maximum(t64, 0.0)
            log_odds = (np.log(a) - np.log(b + np.maximum(x, 1.0) - 1.0)
                        + (rr + x) * (np.log(al + T) - np.log(al + tx)))
            with np.errstate(over="ignore"):  # exp overflows to inf: p_alive 0, as in the graph
                alive = np.where(x > 0.0, 1.0 / (1.0 + np.exp(log_odds)), 1.0)
            cols.append(alive.astype(np.float32))
            for d in QUIET_DAYS:
                stay = np.exp((rr + x) * (np.log(al + T) - np.log(al + T + d)))
                cols.append((1.0 - alive + alive * stay).astype(np.float32))
        return np.column_stack([X] + [c.astype(np.float32) for c in cols])

    def prepend(self, graph, inner_input: str, input_name: str) -> None:
        """Rewires `graph` (whose trees read `inner_input`, [N, n + k]) to read
        `input_name` ([N, n], the served features) through nodes computing the
        derived columns, exactly as `transform` does."""
        n = len(self.feature_names)
        nodes, inits = [], []

        def const(name, value, dtype=np.float32):
            inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
            return name

        def node(op, inputs, out, **kw):
            nodes.append(helper.make_node(op, inputs, [out], name=out, **kw))
            return out

        if self.active:
            c = {}
            for nm in NEEDS:
                idx = const(f"drv_idx_{nm}", [self.feature_names.index(nm)], np.int64)
                c[nm] = node("Gather", [input_name, idx], f"drv_{nm}", axis=1)  # [N, 1]
            one = const("drv_one", [1.0])
            r, f, t, p90 = (c[k] for k in NEEDS)
            fm1 = node("Sub", [f, one], "drv_f_minus_1")
            gap = node("Div", [node("Sub", [t, r], "drv_t_minus_r"), node("Max", [fm1, one], "drv_max_fm1")], "drv_gap")
            tmax = node("Max", [t, one], "drv_max_t")
            outs = [
                node("Div", [r, node("Max", [gap, one], "drv_max_gap")], "drv_recency_over_gap"),
                node("Div", [f, tmax], "drv_purchase_rate"),
                node("Div", [r, tmax], "drv_recency_share"),
                node("Div", [p90, node("Max", [f, one], "drv_max_f")], "drv_recent_share"),
            ]
            if self.bgnbd:
                rr, al, a, b = (float(self.bgnbd[k]) for k in ("r", "alpha", "a", "b"))
                D = TensorProto.DOUBLE
                r64 = node("Cast", [r], "drv_r64", to=D)
                f64 = node("Cast", [f], "drv_f64", to=D)
                t64 = node("Cast", [t], "drv_t64", to=D)
                z, o = const("drv_d_zero", [0.0], np.float64), const("drv_d_one", [1.0], np.float64)
                x = node("Max", [node("Sub", [f64, o], "drv_x_raw"), z], "drv_x")
                tx = node("Max", [node("Sub", [t64, r64], "drv_tx_raw"), z], "drv_tx")
                T = node("Max", [t64, z], "drv_T")
                alpha = const("drv_alpha", [al], np.float64)
                rx = node("Add", [x, const("drv_r", [rr], np.float64)], "drv_r_plus_x")
                log_aT = node("Log", [node("Add", [T, alpha], "drv_alpha_T")], "drv_log_alpha_T")
                log_atx = node("Log", [node("Add", [tx, alpha], "drv_alpha_tx")], "drv_log_alpha_tx")
                bx = node("Sub", [node("Add", [node("Max", [x, o], "drv_max_x1"), const("drv_b", [b], np.float64)],
                                       "drv_b_plus_x"), o], "drv_b_x_1")
                log_odds = node("Add", [node("Sub", [const("drv_log_a", [np.log(a)], np.float64),
                                                     node("Log", [bx], "drv_log_bx")], "drv_lo1"),
                                        node("Mul", [rx, node("Sub", [log_aT, log_atx], "drv_log_ratio")], "drv_lo2")],
                                "drv_log_odds")
                alive_x = node("Div", [o, node("Add", [o, node("Exp", [log_odds], "drv_odds")], "drv_1_odds")],
                               "drv_alive_x")
                alive = node("Where", [node("Greater", [x, z], "drv_repeat"), alive_x, o], "drv_alive")
                outs.append(node("Cast", [alive], "drv_p_alive", to=TensorProto.FLOAT))
                for d in QUIET_DAYS:
                    dd = const(f"drv_days_{int(d)}", [d], np.float64)
                    log_aTd = node("Log", [node("Add", [node("Add", [T, alpha], f"drv_aT_{int(d)}"), dd],
                                                f"drv_aTd_{int(d)}")], f"drv_log_aTd_{int(d)}")
                    stay = node("Exp", [node("Mul", [rx, node("Sub", [log_aT, log_aTd], f"drv_lr_{int(d)}")],
                                             f"drv_le_{int(d)}")], f"drv_stay_{int(d)}")
                    q = node("Add", [node("Sub", [o, alive], f"drv_dead_{int(d)}"),
                                     node("Mul", [alive, stay], f"drv_alive_stay_{int(d)}")], f"drv_q64_{int(d)}")
                    outs.append(node("Cast", [q], f"drv_p_quiet_{int(d)}d", to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Concat", [input_name] + outs, [inner_input], name="drv_concat", axis=1))
        else:
            nodes.append(helper.make_node("Identity", [input_name], [inner_input], name="drv_identity"))

        old = list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes + old)
        graph.initializer.extend(inits)
        rest = [i for i in graph.input if i.name != inner_input]
        del graph.input[:]
        graph.input.extend([helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, n])] + rest)


@dataclass
class WithDerived:
    """A model fitted on `Derived.transform(X)`; exported by train.py with the
    derived nodes in front of it."""

    derived: Derived
    model: object

    def fit(self, X, y, **kw):
        self.model.fit(self.derived.transform(X), y, **kw)
        return self

    def predict_proba(self, X):
        return self.model.predict_proba(self.derived.transform(X))

    def predict(self, X):
        return self.model.predict(self.derived.transform(X))

    @property
    def feature_importances_(self):
        return getattr(self.model, "feature_importances_", None)
