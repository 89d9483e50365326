"""The feature builder on tiny hand-made event logs."""
import math

import numpy as np
import pandas as pd
import pytest

import features as F

CUTOFF = "2025-01-01"


def ev(rows):
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "event", "amount"])


def attrs(rows):
    return pd.DataFrame(rows, columns=["customer_id", "region", "signup_date"])


def row(df, cid):
    r = df[df["customer_id"] == cid]
    assert len(r) == 1, f"{cid} should have exactly one row"
    return r.iloc[0]


def missing(v):
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def test_columns_follow_features_toml():
    df = F.build_features(
        ev([["a", "2024-12-01T00:00:00Z", "purchase", 10.0]]), None, CUTOFF, labels=True
    )
    assert list(df.columns) == ["customer_id"] + F.feature_names() + list(F.LABELS)
    assert str(df["frequency"].dtype) == "Int64"
    assert str(df["recency_days"].dtype) == "Float32"
    assert str(df["cart_abandoned_24h"].dtype) == "boolean"
    assert list(df["region"].cat.categories) == list(F.load_schema()[-1].categories)


def test_one_purchase_customer():
    df = F.build_features(
        ev([["a", "2024-12-22T12:00:00Z", "purchase", 42.5]]),
        attrs([["a", "europe", "2024-06-01"]]),
        CUTOFF,
        labels=True,
    )
    r = row(df, "a")
    assert r.recency_days == pytest.approx(9.5)
    assert r.frequency == 1
    assert r.tenure_days == pytest.approx(214.0)  # 2024-06-01 -> 2025-01-01
    assert r.monetary_mean == pytest.approx(42.5)
    assert r.monetary_total == pytest.approx(42.5)
    assert r.purchases_90d == 1
    assert r.region == "europe"
    # no behavioural or email events at all: those features are missing, not zero
    for name in ("sessions_7d", "cart_adds_7d", "checkout_visits_7d", "cart_abandoned_24h", "email_engagement"):
        assert missing(r[name]), name
    assert r.churned == 1 and r.purchase_30d == 0 and r.ltv_365d == 0


def test_purchase_on_the_cutoff_day_belongs_to_the_label_window():
    e = ev(
        [
            ["a", "2024-12-31T23:59:59Z", "purchase", 5.0],   # feature window
            ["a", "2025-01-01T00:00:00Z", "purchase", 7.0],   # exactly at the cutoff: label window
            ["a", "2025-01-01T18:00:00Z", "purchase", 11.0],  # the cutoff day: label window
            ["a", "2025-12-31T23:59:59Z", "purchase", 13.0],  # inside 365 days
            ["a", "2026-01-01T00:00:00Z", "purchase", 17.0],  # cutoff + 365 days: outside
        ]
    )
    r = row(F.build_features(e, None, CUTOFF, labels=True), "a")
    assert r.frequency == 1
    assert r.monetary_total == pytest.approx(5.0)
    assert r.recency_days == pytest.approx(1.0 / 86400.0, rel=1e-3)
    assert r.churned == 0 and r.purchase_30d == 1
    assert r.ltv_365d == pytest.approx(7.0 + 11.0 + 13.0)


def test_label_window_edges():
    e = ev(
        [
            ["a", "2024-10-01T00:00:00Z", "purchase", 1.0],
            ["a", "2025-01-31T00:00:00Z", "purchase", 2.0],  # day 30: outside 30d, inside 90d
            ["b", "2024-10-01T00:00:00Z", "purchase", 1.0],
            ["b", "2025-04-01T00:00:00Z", "purchase", 3.0],  # day 90: outside 90d
        ]
    )
    df = F.build_features(e, None, CUTOFF, labels=True)
    a, b = row(df, "a"), row(df, "b")
    assert (a.purchase_30d, a.churned) == (0, 0)
    assert (b.purchase_30d, b.churned) == (0, 1)
    assert b.ltv_365d == pytest.approx(3.0)


def test_customer_without_purchases():
    e = ev(
        [
            ["a", "2024-12-28T10:00:00Z", "session", None],
            ["a", "2024-12-28T10:05:00Z", "cart_add", None],
            ["a", "2024-12-31T10:00:00Z", "cart_abandon", None],
            ["a", "2024-12-20T10:00:00Z", "email_open", None],
        ]
    )
    r = row(F.build_features(e, attrs([["a", "asia_pacific", "2024-12-01"]]), CUTOFF, labels=True), "a")
    assert r.frequency == 0 and r.purchases_90d == 0
    assert r.monetary_total == 0
    assert missing(r.recency_days) and missing(r.monetary_mean)
    assert (r.sessions_7d, r.cart_adds_7d, r.checkout_visits_7d) == (1, 1, 0)
    assert bool(r.cart_abandoned_24h) is True
    assert r.email_engagement == pytest.approx(100.0 / 13.0, rel=1e-6)
    assert r.churned == 1


def test_window_boundaries_of_behavioural_features():
    e = ev(
        [
            ["a", "2024-12-25T00:00:00Z", "session", None],  # exactly 7 days before: inside
            ["a", "2024-12-24T23:59:59Z", "session", None],  # just outside
            ["a", "2025-01-01T00:00:00Z", "session", None],  # at the cutoff: not a feature
            ["a", "2024-12-30T23:59:59Z", "cart_abandon", None],  # 24h + 1s before: outside
            ["a", "2024-10-03T00:00:00Z", "purchase", 10.0],  # exactly 90 days before: inside
            ["a", "2024-10-02T23:00:00Z", "purchase", 10.0],  # outside 90 days
        ]
    )
    r = row(F.build_features(e, None, CUTOFF), "a")
    assert r.sessions_7d == 1
    assert bool(r.cart_abandoned_24h) is False
    assert r.purchases_90d == 1 and r.frequency == 2


def test_missing_attributes_and_regions():
    e = ev(
        [
            ["a", "2024-11-01T06:00:00Z", "purchase", 10.0],
            ["b", "2024-11-01T00:00:00Z", "purchase", 10.0],
            ["c", "2024-11-01T00:00:00Z", "purchase", 10.0],
            ["d", "2024-11-01T00:00:00Z", "purchase", 10.0],
        ]
    )
    at = attrs(
        [
            ["b", None, "2024-01-01"],          # region missing
            ["c", "atlantis", None],            # unknown region value, signup missing
            ["d", "unknown", "2024-01-01"],     # explicit unknown
        ]
    )  # "a" has no attributes row at all
    with pytest.warns(UserWarning, match="outside the categories"):
        df = F.build_features(e, at, CUTOFF)
    assert missing(row(df, "a").region) and missing(row(df, "b").region)
    assert row(df, "c").region == "unknown" and row(df, "d").region == "unknown"
    # tenure from the first event when the signup date is unknown
    assert row(df, "a").tenure_days == pytest.approx(60.75)
    assert row(df, "c").tenure_days == pytest.approx(61.0)
    assert row(df, "b").tenure_days == pytest.approx(366.0)
    m = F.to_matrix(F.impute(df))
    assert m[:, -1].tolist() == [5.0, 5.0, 5.0, 5.0]  # all "unknown" after imputation


def test_who_is_included():
    e = ev(
        [
            ["early", "2024-06-01T00:00:00Z", "session", None],
            ["late", "2025-02-01T00:00:00Z", "purchase", 9.0],  # first event after the cutoff
        ]
    )
    at = attrs(
        [
            ["signed_up", "europe", "2024-12-31"],   # signup before the cutoff, no events
            ["on_cutoff", "europe", "2025-01-01"],   # signup at the cutoff: not yet a customer
            ["late", "europe", "2025-01-15"],
        ]
    )
    df = F.build_features(e, at, CUTOFF)
    assert sorted(df["customer_id"]) == ["early", "signed_up"]
    r = row(df, "signed_up")
    assert r.frequency == 0 and r.tenure_days == pytest.approx(1.0)


def test_purchases_only_file():
    e = ev(
        [
            ["a", "2024-12-01T00:00:00Z", "purchase", 20.0],
            ["a", "2024-12-15T00:00:00Z", "purchase", 40.0],
            ["b", "2023-05-01T00:00:00Z", "purchase", 15.0],
        ]
    )
    df = F.build_features(e, attrs([["a", "europe", "2024-01-01"], ["b", "latin_america", "2023-01-01"]]), CUTOFF)
    for name in ("sessions_7d", "cart_adds_7d", "checkout_visits_7d", "cart_abandoned_24h", "email_engagement"):
        assert df[name].isna().all(), name
    a = row(df, "a")
    assert a.monetary_mean == pytest.approx(30.0) and a.frequency == 2
    imputed = F.impute(df)
    schema = {f.name: f for f in F.load_schema()}
    assert row(imputed, "a").sessions_7d == schema["sessions_7d"].impute
    assert row(imputed, "a").email_engagement == pytest.approx(schema["email_engagement"].impute)
    assert not imputed[F.feature_names()].isna().any().any()


def test_purchases_only_csv_on_disk(tmp_path):
    p = tmp_path / "orders.csv"
    p.write_text(
        "customer_id,timestamp,event,amount\n"
        "17,2024-12-01T08:00:00Z,purchase,19.99\n"
        "17,2024-12-20 08:00:00,purchase,5\n"  # no zone: UTC
        "18,2024-11-30T23:00:00-02:00,purchase,12.5\n"  # = 2024-12-01T01:00Z
    )
    df = F.build_features(p, None, CUTOFF)
    assert list(df["customer_id"]) == ["17", "18"]
    assert row(df, "17").recency_days == pytest.approx(11 + 16 / 24, rel=1e-6)
    assert row(df, "18").tenure_days == pytest.approx(31 - 1 / 24, rel=1e-6)
    assert df["sessions_7d"].isna().all()


def test_parquet_and_csv_agree(tmp_path):
    import generate as G

    G.generate(tmp_path / "e.csv", tmp_path / "c.csv", customers=300, seed=7)
    G.generate(tmp_path / "e.parquet", tmp_path / "c.parquet", customers=300, seed=7)
    a = F.build_features(tmp_path / "e.csv", tmp_path / "c.csv", CUTOFF)
    b = F.build_features(tmp_path / "e.parquet", tmp_path / "c.parquet", CUTOFF)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) > 200


def test_purchase_without_amount_is_an_error():
    with pytest.raises(ValueError, match="amount"):
        F.build_features(ev([["a", "2024-12-01T00:00:00Z", "purchase", None]]), None, CUTOFF)


def test_impute_rejects_what_the_schema_rejects():
    df = F.build_features(ev([["a", "2024-12-01T00:00:00Z", "purchase", 1.0]]), None, CUTOFF)
    df["frequency"] = pd.array([None], dtype="Int64")
    with pytest.raises(ValueError, match="frequency"):
        F.impute(df)


def test_encoding_and_csv_round_trip(tmp_path):
    e = ev(
        [
            ["a", "2024-12-30T10:00:00Z", "session", None],
            ["a", "2024-12-31T12:00:00Z", "cart_abandon", None],
            ["a", "2024-12-01T00:00:00Z", "purchase", 0.1],
            ["b", "2024-12-01T00:00:00Z", "purchase", 3.0],
        ]
    )
    df = F.build_features(e, attrs([["a", "middle_east_africa", "2024-01-01"]]), CUTOFF, labels=True)
    path = tmp_path / "f.csv"
    F.write_feature_csv(path, df, extra=list(F.LABELS))
    text = path.read_text().splitlines()
    assert text[0].split(",") == ["customer_id"] + F.feature_names() + list(F.LABELS)
    cells = dict(zip(text[0].split(","), text[1].split(",")))
    assert cells["monetary_mean"] == "0.100000001"  # float32 value, '.9g'
    assert cells["frequency"] == "1" and cells["cart_abandoned_24h"] == "true"
    assert cells["region"] == "middle_east_africa" and cells["email_engagement"] == ""
    cells_b = dict(zip(text[0].split(","), text[2].split(",")))
    assert cells_b["sessions_7d"] == "" and cells_b["region"] == ""
    back = F.read_feature_csv(path)
    m1, m2 = F.to_matrix(F.impute(df)), F.to_matrix(F.impute(back))
    assert np.array_equal(m1, m2)
    assert m1.dtype == np.float32 and m1.shape == (2, len(F.feature_names()))
    names = F.feature_names()
    assert m1[0, names.index("cart_abandoned_24h")] == 1.0
    assert m1[0, names.index("region")] == 4.0  # index in categories
