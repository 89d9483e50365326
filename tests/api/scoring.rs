//! Scores through the server match the reference runtime, for every shipped
//! model version, at every batch size.

use segscore::{
    features::{ImputeValue, MissingPolicy},
    proto::pb,
    repository::scan,
};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_sets_reproduce_through_the_server() {
    let app = spawn_app().await;
    let mut checked = Vec::new();
    for (name, versions) in scan(&shipped_models()).unwrap() {
        for (version, dir) in versions {
            let manifest = manifest(&name, version);
            let (features, expected) =
                csv_matrix(&dir.join(&manifest.golden.file), &manifest, "expected");
            let resp = app
                .score(request(features, vec![model(&name, version)]))
                .await
                .unwrap();
            let scores = &resp.models[0];
            assert_eq!(
                (scores.name.as_str(), scores.version),
                (name.as_str(), version)
            );
            assert_eq!(scores.sha256, manifest.sha256);
            assert_eq!(scores.scores.len(), expected.len());
            assert!(
                expected.len() >= 100,
                "{name} v{version}: golden set has {} rows",
                expected.len()
            );
            for (row, (got, want)) in scores.scores.iter().zip(&expected).enumerate() {
                let want: f64 = want.parse().unwrap();
                assert!(
                    close(*got, want, manifest.golden.tolerance),
                    "{name} v{version} row {row}: server {got}, reference {want}"
                );
            }
            checked.push((name.clone(), version, manifest.format.as_str()));
        }
    }
    for name in ["churn", "ltv", "propensity"] {
        assert!(
            checked.iter().any(|(n, _, _)| n == name),
            "no shipped {name} model: {checked:?}"
        );
    }
    assert!(checked.iter().any(|(_, _, f)| *f == "onnx"), "{checked:?}");
    assert!(
        checked.iter().any(|(_, _, f)| *f == "smartcore"),
        "{checked:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_scores_every_model_and_echoes_ids() {
    let app = spawn_app().await;
    let (features, ids) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    let mut req = request(
        features,
        vec![model("churn", 0), model("ltv", 0), model("propensity", 0)],
    );
    req.entity_ids = ids.clone();
    req.sequence = 42;
    let resp = app.score(req).await.unwrap();
    assert_eq!(resp.sequence, 42);
    assert_eq!(resp.entity_ids, ids);
    assert_eq!(resp.rows as usize, ids.len());
    assert_eq!(resp.models.len(), 3);
    for (m, name) in resp.models.iter().zip(["churn", "ltv", "propensity"]) {
        assert_eq!(m.name, name);
        assert_eq!(
            m.version,
            latest_version(name),
            "default = highest valid version"
        );
        assert_eq!(m.sha256, manifest(name, m.version).sha256);
        assert_eq!(m.scores.len(), ids.len());
        assert!(m.scores.iter().all(|s| s.is_finite()));
    }
    let churn = &resp.models[0];
    assert_eq!(churn.task, pb::Task::BinaryClassification as i32);
    assert!(churn.scores.iter().all(|p| (0.0..=1.0).contains(p)));
    let ltv = &resp.models[1];
    assert_eq!(ltv.task, pb::Task::Regression as i32);
    assert!(ltv.scores.iter().all(|v| *v >= 0.0));
    // Scores must depend on the customer, not be constant.
    let distinct: std::collections::BTreeSet<u32> =
        churn.scores.iter().map(|p| p.to_bits()).collect();
    assert!(
        distinct.len() > 100,
        "only {} distinct churn scores",
        distinct.len()
    );
    app.stop().await.unwrap();
}

/// Repeats every column of `m` `times` times.
fn repeat(m: &pb::FeatureMatrix, times: usize) -> pb::FeatureMatrix {
    use pb::feature_column::Values;
    let columns = m
        .columns
        .iter()
        .map(|c| {
            let n = c.len();
            let values = c.values.clone().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: v.values.repeat(times),
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: v.values.repeat(times),
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: v.values.repeat(times),
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: v.values.repeat(times),
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: (0..times).flat_map(|_| v.values.iter().cloned()).collect(),
                }),
            });
            let missing_rows = (0..times)
                .flat_map(|k| c.missing_rows.iter().map(move |r| r + (k * n) as u32))
                .collect();
            pb::FeatureColumn {
                name: c.name.clone(),
                values,
                missing_rows,
            }
        })
        .collect();
    pb::FeatureMatrix {
        rows: m.rows * times as u32,
        columns,
    }
}

/// Row `row` of `m` alone.
fn single(m: &pb::FeatureMatrix, row: usize) -> pb::FeatureMatrix {
    use pb::feature_column::Values;
    let columns = m
        .columns
        .iter()
        .map(|c| {
            let values = c.values.clone().map(|v| match v {
                Values::F32(v) => Values::F32(pb::FloatValues {
                    values: vec![v.values[row]],
                }),
                Values::F64(v) => Values::F64(pb::DoubleValues {
                    values: vec![v.values[row]],
                }),
                Values::I64(v) => Values::I64(pb::Int64Values {
                    values: vec![v.values[row]],
                }),
                Values::Bool(v) => Values::Bool(pb::BoolValues {
                    values: vec![v.values[row]],
                }),
                Values::Category(v) => Values::Category(pb::StringValues {
                    values: vec![v.values[row].clone()],
                }),
            });
            let missing_rows = if c.missing_rows.contains(&(row as u32)) {
                vec![0]
            } else {
                vec![]
            };
            pb::FeatureColumn {
                name: c.name.clone(),
                values,
                missing_rows,
            }
        })
        .collect();
    pb::FeatureMatrix { rows: 1, columns }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_one_and_ten_thousand_rows_agree() {
    // A small max batch forces the 10,000 rows to be split across workers and
    // reassembled, which is what this checks.
    let app = spawn_app_with(&shipped_models(), |a| a.engine.max_batch_rows = 1000).await;
    let (base, _) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    let n = base.rows as usize;
    let models = vec![
        model("churn", 0),
        model("ltv", 0),
        model("propensity", 0),
        model("churn", 1),
    ];
    let big = app
        .score(request(repeat(&base, 10_000 / n), models.clone()))
        .await
        .unwrap();
    assert_eq!(big.rows as usize, 10_000);
    for m in &big.models {
        assert_eq!(m.scores.len(), 10_000);
        for i in 0..10_000 {
            assert_eq!(
                m.scores[i],
                m.scores[i % n],
                "{} row {i} differs from row {}",
                m.name,
                i % n
            );
        }
    }
    for row in [0, 1, n / 2, n - 1] {
        let one = app
            .score(request(single(&base, row), models.clone()))
            .await
            .unwrap();
        assert_eq!(one.rows, 1);
        for (a, b) in one.models.iter().zip(&big.models) {
            let (x, y) = (a.scores[0], b.scores[row]);
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "{} row {row}: alone {x}, in batch {y}",
                a.name
            );
        }
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_values_are_imputed_as_the_manifest_says() {
    let app = spawn_app().await;
    for name in ["churn", "ltv", "propensity"] {
        let version = latest_version(name);
        let m = manifest(name, version);
        // Explicit: every imputable feature set to its impute value.
        let mut explicit = full_rows(1);
        // Implicit: the same features missing three ways: column omitted,
        // flagged in missing_rows, or NaN.
        let mut implicit = Vec::new();
        let mut imputable = 0;
        for (i, col) in full_rows(1).into_iter().enumerate() {
            let spec = m.features.iter().find(|f| f.name == col.name).unwrap();
            let MissingPolicy::Impute(value) = &spec.missing else {
                implicit.push(col);
                continue;
            };
            imputable += 1;
            explicit[i] = match (value, &col.values) {
                (ImputeValue::Number(v), Some(pb::feature_column::Values::I64(_))) => {
                    i64_col(&col.name, vec![*v as i64])
                }
                (ImputeValue::Number(v), _) => f32_col(&col.name, vec![*v as f32]),
                (ImputeValue::Bool(b), _) => bool_col(&col.name, vec![*b]),
                (ImputeValue::Text(t), _) => cat_col(&col.name, vec![t]),
            };
            match imputable % 3 {
                0 => {} // omitted entirely
                1 => implicit.push(pb::FeatureColumn {
                    missing_rows: vec![0],
                    ..col
                }),
                _ => {
                    if matches!(col.values, Some(pb::feature_column::Values::F32(_))) {
                        implicit.push(f32_col(&col.name, vec![f32::NAN]));
                    } else {
                        implicit.push(pb::FeatureColumn {
                            missing_rows: vec![0],
                            ..col
                        });
                    }
                }
            }
        }
        assert!(
            imputable >= 3,
            "{name}: expected several imputable features"
        );
        let a = app
            .score(request(matrix(explicit), vec![model(name, version)]))
            .await
            .unwrap();
        let b = app
            .score(request(matrix(implicit), vec![model(name, version)]))
            .await
            .unwrap();
        assert_eq!(
            a.models[0].scores, b.models[0].scores,
            "{name}: imputation differs from explicit values"
        );
        // And imputation matters: a different value changes the score.
        let changed = {
            let mut cols = full_rows(1);
            cols[0] = f32_col("recency_days", vec![700.0]);
            app.score(request(matrix(cols), vec![model(name, version)]))
                .await
                .unwrap()
        };
        let base = app
            .score(request(matrix(full_rows(1)), vec![model(name, version)]))
            .await
            .unwrap();
        assert_ne!(
            changed.models[0].scores, base.models[0].scores,
            "{name} ignores recency_days"
        );
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_models_describe_versions() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let list = client
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    for name in ["churn", "ltv", "propensity"] {
        let info = list.models.iter().find(|m| m.name == name).expect(name);
        assert_eq!(info.default_version, latest_version(name));
        for v in &info.versions {
            assert_eq!(
                v.state,
                pb::VersionState::Serving as i32,
                "{name} v{}: {}",
                v.version,
                v.reason
            );
            assert_eq!(v.features.len(), 12);
            assert_eq!(v.features[0].name, "recency_days");
            assert!(
                v.card_json.contains("metrics"),
                "{name} v{} card: {}",
                v.version,
                v.card_json
            );
            assert_eq!(v.sha256, manifest(name, v.version).sha256);
        }
    }
    let churn = client
        .get_model(pb::GetModelRequest {
            name: "churn".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    let formats: Vec<&str> = churn.versions.iter().map(|v| v.format.as_str()).collect();
    assert!(
        formats.contains(&"onnx") && formats.contains(&"smartcore"),
        "{formats:?}"
    );
    let region = churn.versions[0]
        .features
        .iter()
        .find(|f| f.name == "region")
        .unwrap();
    assert_eq!(region.dtype, "category");
    assert!(region.categories.contains(&"europe".to_string()));
    let missing = client
        .get_model(pb::GetModelRequest {
            name: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_stream_answers_every_chunk_in_order_and_survives_a_bad_one() {
    let app = spawn_app().await;
    let good = |seq| pb::ScoreRequest {
        sequence: seq,
        ..request(matrix(full_rows(3)), vec![model("churn", 0)])
    };
    let bad = pb::ScoreRequest {
        sequence: 1,
        ..request(matrix(full_rows(3)), vec![model("nope", 0)])
    };
    let chunks = vec![good(0), bad, good(2), good(3)];
    let mut stream = app
        .client
        .clone()
        .score_stream(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(resp) = stream.message().await.unwrap() {
        seen.push(resp);
    }
    assert_eq!(
        seen.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    let err = seen[1].error.as_ref().expect("chunk 1 failed");
    assert_eq!(err.code, tonic::Code::NotFound as i32);
    assert!(err.message.contains("nope"));
    for r in [&seen[0], &seen[2], &seen[3]] {
        assert!(r.error.is_none());
        assert_eq!(r.models[0].scores.len(), 3);
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_row_callers_get_exactly_their_own_scores() {
    let app = spawn_app().await;
    let (base, _) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    let models = vec![model("churn", 0), model("ltv", 0)];
    let whole = app
        .score(request(base.clone(), models.clone()))
        .await
        .unwrap();
    // 400 single-row calls in flight at once: the batcher merges them into
    // shared model calls, and each must get back its own row's scores.
    let calls = (0..400usize).map(|i| {
        let row = (i * 7) % base.rows as usize;
        let req = request(single(&base, row), models.clone());
        let mut client = app.client.clone();
        tokio::spawn(async move { (row, client.score(req).await.map(|r| r.into_inner())) })
    });
    for call in futures::future::join_all(calls).await {
        let (row, resp) = call.unwrap();
        let resp = resp.unwrap();
        for (m, w) in resp.models.iter().zip(&whole.models) {
            let (x, y) = (m.scores[0], w.scores[row]);
            assert!(
                (x - y).abs() <= 1e-6 * y.abs().max(1.0),
                "{} row {row}: got {x}, want {y}",
                m.name
            );
        }
    }
    app.stop().await.unwrap();
}
