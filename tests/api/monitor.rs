//! Live drift and segment windows on /metrics after real Score traffic:
//! traffic drawn from a version's reference sample keeps every PSI low, the
//! same traffic with one feature shifted raises that feature's alone, and
//! the segment gauges are what `segments stats` says of the same rows.

use std::collections::HashMap;

use segscore::{
    features::{Column, ColumnValues, FeatureBatch, FeatureSchema},
    repository::load::read_csv_batch,
};

use segscore::proto::pb;

use crate::{helpers::*, metrics::http_get};

/// The reference of the shipped versions was written from this sample
/// (`segscore models reference --sample training/sample_users.csv`).
fn sample_batch(name: &str) -> FeatureBatch {
    let schema = FeatureSchema::new(manifest(name, latest_version(name)).features).unwrap();
    read_csv_batch(&sample_users(), &schema, "").unwrap().0
}

/// `n` rows drawn with replacement from `batch` (a fixed LCG: the same
/// rows on every run).
fn bootstrap(batch: &FeatureBatch, n: usize, seed: u64) -> FeatureBatch {
    let mut state = seed;
    let rows: Vec<usize> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % batch.rows()
        })
        .collect();
    batch.select_rows(&rows).unwrap()
}

/// `batch` with `feature` (an f32 column) multiplied by 3 and moved up by
/// 100: a shift no quantile bin absorbs.
fn shifted(batch: FeatureBatch, feature: &str) -> FeatureBatch {
    let rows = batch.rows();
    let columns = batch
        .into_columns()
        .map(|(name, column)| {
            if name != feature {
                return (name, column);
            }
            let missing = column.missing_rows();
            let ColumnValues::F32(v) = column.values else {
                panic!("{feature} is not an f32 column");
            };
            let v = v.iter().map(|x| x * 3.0 + 100.0).collect();
            let column = Column::new(ColumnValues::F32(v))
                .with_missing_rows(&missing)
                .unwrap();
            (name, column)
        })
        .collect();
    FeatureBatch::new(rows, columns).unwrap()
}

/// Gauge samples of the text format: `name{labels}` -> value.
fn gauges(text: &str, name: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// Feature -> PSI of churn's latest version.
fn feature_psi(text: &str) -> HashMap<String, f64> {
    let v = latest_version("churn");
    gauges(text, "segscore_feature_drift_psi")
        .into_iter()
        .filter_map(|(k, psi)| {
            let prefix = "segscore_feature_drift_psi{feature=\"";
            let rest = k.strip_prefix(prefix)?;
            let (feature, labels) = rest.split_once('"')?;
            labels
                .contains(&format!("model=\"churn\",version=\"{v}\""))
                .then(|| (feature.to_string(), psi))
        })
        .collect()
}

async fn score_rows(app: &TestApp, batch: FeatureBatch) {
    app.score(request(batch.into(), vec![model("churn", 0)]))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_traffic_keeps_psi_low_and_one_shifted_feature_stands_out() {
    let sample = sample_batch("churn");
    let features = manifest("churn", latest_version("churn")).features.len();

    // Traffic drawn from the reference sample.
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    for seed in 0..5 {
        score_rows(&app, bootstrap(&sample, 1000, seed)).await;
    }
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let psi = feature_psi(&text);
    assert_eq!(psi.len(), features, "one gauge per feature:\n{text}");
    for (feature, value) in &psi {
        assert!(*value < 0.1, "{feature}: PSI {value} on reference traffic");
    }
    let v = latest_version("churn");
    let score = gauges(&text, "segscore_score_drift_psi")
        [&format!("segscore_score_drift_psi{{model=\"churn\",version=\"{v}\"}}")];
    assert!(score < 0.1, "score PSI {score}");
    let missing = gauges(&text, "segscore_feature_missing_ratio");
    let sessions = missing[&format!(
        "segscore_feature_missing_ratio{{feature=\"sessions_7d\",model=\"churn\",version=\"{v}\"}}"
    )];
    assert!(
        sessions > 0.0 && sessions < 1.0,
        "sessions_7d missing ratio {sessions}"
    );
    app.stop().await.unwrap();

    // The same traffic with one feature shifted: a fresh server, a fresh window.
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    for seed in 0..5 {
        score_rows(
            &app,
            shifted(bootstrap(&sample, 1000, seed), "monetary_mean"),
        )
        .await;
    }
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let psi = feature_psi(&text);
    assert!(
        psi["monetary_mean"] > 0.25,
        "shifted feature PSI {}",
        psi["monetary_mean"]
    );
    for (feature, value) in psi.iter().filter(|(f, _)| *f != "monetary_mean") {
        assert!(*value < 0.1, "{feature}: PSI {value}, not shifted");
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_off_counts_nothing() {
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        a.engine.drift = false;
    })
    .await;
    score_rows(&app, bootstrap(&sample_batch("churn"), 1000, 1)).await;
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert!(gauges(&text, "segscore_feature_drift_psi").is_empty());
    assert!(gauges(&text, "segscore_drift_window_rows").is_empty());
    app.stop().await.unwrap();
}

/// Writes what `segscore score --segments` writes for one request: the id
/// column and a `segment:<name>` column per segment.
fn scored_file(path: &std::path::Path, ids: &[String], response: &pb::ScoreResponse) {
    let mut out = csv::Writer::from_path(path).unwrap();
    let mut header = vec!["customer_id".to_string()];
    header.extend(
        response
            .segments
            .iter()
            .map(|s| format!("segment:{}", s.name)),
    );
    out.write_record(&header).unwrap();
    for (row, id) in ids.iter().enumerate() {
        let mut record = vec![id.clone()];
        for s in &response.segments {
            let row = row as u32;
            let cell = if s.errors.iter().any(|e| e.row == row) {
                ""
            } else if s.member_rows.contains(&row) {
                "true"
            } else {
                "false"
            };
            record.push(cell.to_string());
        }
        out.write_record(&record).unwrap();
    }
    out.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_gauges_equal_segments_stats_on_the_same_rows() {
    let rules = tempfile::tempdir().unwrap();
    let rules_file = rules.path().join("segments.toml");
    write_rules(
        &rules_file,
        &[
            ("engaged", "features.sessions_7d >= 2"),
            ("at_risk", "scores.churn >= 0.9"),
        ],
    );
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        a.segments = Some(rules_file.clone());
        a.engine.drift_window_rows = 800;
    })
    .await;
    let sample = sample_batch("churn");
    let mut files = Vec::new();
    // Two windows of 800 rows; ids overlap so some members stay, some move.
    for (window, seed) in [(0, 7u64), (1, 8)] {
        let batch = bootstrap(&sample, 800, seed);
        let ids: Vec<String> = (0..800).map(|i| format!("c{}", i + window * 300)).collect();
        let mut req = request(batch.into(), vec![]);
        req.models.clear();
        req.segments = vec!["engaged".into(), "at_risk".into()];
        req.entity_ids = ids.clone();
        let response = app.score(req).await.unwrap();
        let path = rules.path().join(format!("scored-{window}.csv"));
        scored_file(&path, &ids, &response);
        files.push(path);
    }
    let now = segscore::segments::stats::read(&files[1], "customer_id").unwrap();
    let before = segscore::segments::stats::read(&files[0], "customer_id").unwrap();
    let expected = segscore::segments::stats::compare(&now, Some(&before));
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let gauge = |name: &str, segment: &str| {
        gauges(&text, name)
            .get(&format!("{name}{{segment=\"{segment}\"}}"))
            .copied()
            .unwrap_or_else(|| panic!("no {name} for {segment}:\n{text}"))
    };
    assert_eq!(expected.len(), 2);
    for s in &expected {
        let b = s.baseline.as_ref().unwrap();
        assert!(s.members > 0 && b.entered > 0 && b.left > 0, "{s:?}");
        assert_eq!(
            gauge("segscore_segment_members", &s.segment),
            s.members as f64
        );
        assert_eq!(
            gauge("segscore_segment_window_rows", &s.segment),
            s.rows as f64
        );
        assert!((gauge("segscore_segment_share", &s.segment) - s.share).abs() < 1e-12);
        assert_eq!(
            gauge("segscore_segment_entered", &s.segment),
            b.entered as f64
        );
        assert_eq!(gauge("segscore_segment_left", &s.segment), b.left as f64);
        assert!((gauge("segscore_segment_jaccard", &s.segment) - b.jaccard).abs() < 1e-12);
        assert!(
            (gauge("segscore_segment_change_ratio", &s.segment) - b.change_ratio.unwrap()).abs()
                < 1e-12
        );
    }
    app.stop().await.unwrap();
}

/// The metric names a file's PromQL uses (every `segscore_…` token).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("segscore_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alert_rules_use_only_metrics_a_server_exports() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("grafana/segscore-dashboard.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let alerts = std::fs::read_to_string(root.join("prometheus/alerts.yml")).unwrap();
    let mut wanted = metric_names(&exprs.join("\n"));
    wanted.extend(metric_names(&alerts));

    // Traffic that makes every series appear: scored models of each task,
    // segments over two windows with ids, a failed request.
    let rules = tempfile::tempdir().unwrap();
    let rules_file = rules.path().join("segments.toml");
    write_rules(
        &rules_file,
        &[("valuable", "scores.ltv >= 50.0 && scores.churn < 0.99")],
    );
    let app = spawn_app_with(&shipped_models(), |a| {
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
        a.segments = Some(rules_file.clone());
        a.engine.drift_window_rows = 500;
    })
    .await;
    let sample = sample_batch("churn");
    for seed in 0..2 {
        let mut req = request(bootstrap(&sample, 500, seed).into(), vec![]);
        req.segments = vec!["valuable".into()];
        req.entity_ids = (0..500).map(|i| format!("c{i}")).collect();
        app.score(req).await.unwrap();
    }
    let bad = request(matrix(full_rows(1)), vec![model("nope", 0)]);
    app.score(bad).await.unwrap_err();
    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let exported: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/ but not on /metrics: {missing:?}\n{text}"
    );
    app.stop().await.unwrap();
}

/// sample_users.csv with a label column, split into train and valid files.
fn labelled_sample(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let text = std::fs::read_to_string(sample_users()).unwrap();
    let mut lines = text.lines();
    let header = format!("{},churned", lines.next().unwrap());
    let (mut train, mut valid) = (vec![header.clone()], vec![header]);
    for (i, line) in lines.enumerate() {
        // A label the features explain: no purchase in the last 90 days.
        let purchases_90d = line.split(',').nth(6).unwrap();
        let label = u8::from(purchases_90d == "0");
        let out = if i % 4 == 0 { &mut valid } else { &mut train };
        out.push(format!("{line},{label}"));
    }
    let (t, v) = (dir.join("train.csv"), dir.join("valid.csv"));
    std::fs::write(&t, train.join("\n") + "\n").unwrap();
    std::fs::write(&v, valid.join("\n") + "\n").unwrap();
    (t, v)
}

#[test]
fn train_writes_a_reference_that_the_gate_accepts_and_a_bad_one_refuses_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = labelled_sample(dir.path());
    let repo = dir.path().join("models");
    let bin = env!("CARGO_BIN_EXE_segscore");
    let out = std::process::Command::new(bin)
        .args([
            "train",
            "--label",
            "churned",
            "--name",
            "churn",
            "--version",
            "1",
        ])
        .args(["--schema", "training/features.toml"])
        .arg("--train")
        .arg(&train)
        .arg("--valid")
        .arg(&valid)
        .arg("--model-repository")
        .arg(&repo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = repo.join("churn/1");
    let manifest = std::fs::read_to_string(version.join("model.toml")).unwrap();
    assert!(manifest.contains("[reference]"), "{manifest}");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(version.join("reference.json")).unwrap()).unwrap();
    assert_eq!(reference["rows"], 750);
    let validate = |path: &std::path::Path| {
        std::process::Command::new(bin)
            .args(["models", "validate"])
            .arg(path)
            .output()
            .unwrap()
    };
    assert!(validate(&version).status.success());

    // A reference whose shares no longer sum to 1, with its sha256 updated
    // (`models reference` rewrites both; here by hand): refused, and why.
    let mut bad = reference.clone();
    bad["features"][0]["shares"][0] = serde_json::json!(0.9);
    std::fs::write(
        version.join("reference.json"),
        serde_json::to_vec(&bad).unwrap(),
    )
    .unwrap();
    let out = validate(&version);
    assert!(!out.status.success());
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("sha256 mismatch for reference.json"),
        "{said}"
    );
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(
            std::fs::read(version.join("reference.json")).unwrap(),
        ))
    };
    let fixed = manifest
        .lines()
        .map(|l| {
            if l.starts_with("sha256 = ") && manifest.find(l) > manifest.find("[reference]") {
                format!("sha256 = \"{sha}\"")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(version.join("model.toml"), fixed).unwrap();
    let out = validate(&version);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(
            "reference distributions: `reference.json` feature `recency_days`: the shares sum to"
        ),
        "{said}"
    );

    // `models reference` writes it again from a sample; the version passes.
    let out = std::process::Command::new(bin)
        .args(["models", "reference", "--sample"])
        .arg(&train)
        .arg(&version)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(validate(&version).status.success());
}
