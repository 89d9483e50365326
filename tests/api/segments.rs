//! Segments (issue 9): membership over real scores matches the shipped rules
//! recomputed in plain Rust; bad rules are refused one by one; rules reload
//! with their file and with the models; ScoreStream carries segments too.

use std::{path::Path, time::Duration};

use tonic::Code;

use crate::{helpers::*, metrics::http_get};
use segscore::proto::pb;

const SHIPPED: [&str; 4] = [
    "high_value_abandoners",
    "high_value_active",
    "churn_risk_high_value",
    "likely_buyers_next_30d",
];

fn shipped_segments() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("segments.toml")
}

/// The shipped file's constants, so the reference below follows the file.
fn constants() -> toml::Table {
    let text = std::fs::read_to_string(shipped_segments()).unwrap();
    let file: toml::Table = text.parse().unwrap();
    file["constants"].as_table().unwrap().clone()
}

fn num(c: &toml::Table, name: &str) -> f64 {
    match &c[name] {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => panic!("{name} = {other}"),
    }
}

/// A deterministic generator (xorshift): no dependency, same rows every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.next().is_multiple_of(one_in)
    }
}

/// One generated customer, with None for a missing (imputed) value.
#[derive(Clone)]
struct Row {
    recency: Option<f32>,
    monetary_mean: f32,
    checkout: Option<i64>,
    abandoned: Option<bool>,
    email: Option<f32>,
    region: Option<&'static str>,
}

/// Rows around every threshold of the shipped rules (exactly at it, just
/// below, just above), with missing values in each imputable feature.
fn generate(rows: usize, c: &toml::Table) -> (pb::FeatureMatrix, Vec<Row>) {
    let mut rng = Rng(0x5e9_0001);
    let amount = num(c, "PURCHASE_AMOUNT_HIGH") as f32;
    let recent = num(c, "RECENT_DAYS") as f32;
    let email = num(c, "EMAIL_ENGAGEMENT_HIGH") as f32;
    let region = c["EMAIL_REGION"].as_str().unwrap();
    let region: &'static str = ["north_america", "europe", "asia_pacific", "unknown"]
        .into_iter()
        .find(|r| *r == region)
        .unwrap_or("europe");
    let mut out = Vec::with_capacity(rows);
    for _ in 0..rows {
        out.push(Row {
            recency: (!rng.chance(9))
                .then(|| rng.pick(&[0.0, 1.5, recent - 0.5, recent, recent + 0.5, 400.0, 3000.0])),
            monetary_mean: rng.pick(&[0.0, 20.0, amount - 0.01, amount, amount + 0.01, 900.0]),
            checkout: (!rng.chance(7)).then(|| rng.pick(&[0, 1, 2, 5])),
            abandoned: (!rng.chance(6)).then(|| rng.chance(2)),
            email: (!rng.chance(8))
                .then(|| rng.pick(&[0.0, 10.0, email - 0.1, email, email + 0.1, 99.0])),
            region: (!rng.chance(10))
                .then(|| rng.pick(&["north_america", region, "asia_pacific", "unknown"])),
        });
    }
    let missing = |f: &dyn Fn(&Row) -> bool| -> Vec<u32> {
        out.iter()
            .enumerate()
            .filter(|(_, r)| f(r))
            .map(|(i, _)| i as u32)
            .collect()
    };
    let n = out.len();
    let mut columns = vec![
        f32_col(
            "recency_days",
            out.iter().map(|r| r.recency.unwrap_or(0.0)).collect(),
        ),
        i64_col("frequency", (0..n).map(|i| (i % 40) as i64).collect()),
        f32_col("tenure_days", (0..n).map(|i| (i % 2000) as f32).collect()),
        f32_col(
            "monetary_mean",
            out.iter().map(|r| r.monetary_mean).collect(),
        ),
        f32_col(
            "monetary_total",
            out.iter().map(|r| r.monetary_mean * 3.0).collect(),
        ),
        i64_col("purchases_90d", (0..n).map(|i| (i % 5) as i64).collect()),
        i64_col("sessions_7d", (0..n).map(|i| (i % 9) as i64).collect()),
        i64_col("cart_adds_7d", (0..n).map(|i| (i % 4) as i64).collect()),
        i64_col(
            "checkout_visits_7d",
            out.iter().map(|r| r.checkout.unwrap_or(0)).collect(),
        ),
        bool_col(
            "cart_abandoned_24h",
            out.iter().map(|r| r.abandoned.unwrap_or(false)).collect(),
        ),
        f32_col(
            "email_engagement",
            out.iter().map(|r| r.email.unwrap_or(f32::NAN)).collect(),
        ),
        cat_col(
            "region",
            out.iter().map(|r| r.region.unwrap_or("")).collect(),
        ),
    ];
    columns[0].missing_rows = missing(&|r| r.recency.is_none());
    columns[8].missing_rows = missing(&|r| r.checkout.is_none());
    columns[9].missing_rows = missing(&|r| r.abandoned.is_none());
    // email_engagement's missing rows are NaN, which is missing too.
    columns[11].missing_rows = missing(&|r| r.region.is_none());
    (matrix(columns), out)
}

fn scores_of<'a>(resp: &'a pb::ScoreResponse, name: &str) -> &'a pb::ModelScores {
    resp.models
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("model {name} in the response"))
}

pub(crate) fn membership<'a>(resp: &'a pb::ScoreResponse, name: &str) -> &'a pb::SegmentMembership {
    resp.segments
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("segment {name} in the response"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_matches_the_rules_recomputed_in_plain_rust() {
    let app = spawn_app_with(&shipped_models(), |a| {
        a.segments = Some(shipped_segments());
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let c = constants();
    let (features, rows) = generate(4000, &c);
    // Only segments: the models the rules read are scored anyway.
    let resp = app
        .score(pb::ScoreRequest {
            features: Some(features),
            segments: SHIPPED.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut names: Vec<&str> = resp.models.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["churn", "ltv", "propensity"]);
    for m in &resp.models {
        assert_eq!(
            m.version,
            latest_version(&m.name),
            "{}: default version",
            m.name
        );
    }
    let ltv = &scores_of(&resp, "ltv").scores;
    let churn = &scores_of(&resp, "churn").scores;
    let propensity = &scores_of(&resp, "propensity").scores;
    let (ltv_high, checkout_min) = (
        num(&c, "LTV_TOP_DECILE"),
        num(&c, "MIN_CHECKOUT_VISITS") as i64,
    );
    let (churn_high, propensity_high) = (num(&c, "CHURN_HIGH"), num(&c, "PROPENSITY_HIGH"));
    let (amount, recent) = (num(&c, "PURCHASE_AMOUNT_HIGH"), num(&c, "RECENT_DAYS"));
    let (email_high, email_region) = (
        num(&c, "EMAIL_ENGAGEMENT_HIGH"),
        c["EMAIL_REGION"].as_str().unwrap(),
    );
    // The manifests' imputation, applied by hand.
    let expected = |segment: &str, i: usize| -> bool {
        let r = &rows[i];
        let ltv = f64::from(ltv[i]);
        match segment {
            "high_value_abandoners" => {
                ltv >= ltv_high
                    && r.abandoned.unwrap_or(false)
                    && r.checkout.unwrap_or(0) >= checkout_min
            }
            "high_value_active" => {
                (f64::from(r.monetary_mean) >= amount
                    && f64::from(r.recency.unwrap_or(730.0)) <= recent)
                    || (f64::from(r.email.unwrap_or(10.0)) >= email_high
                        && r.region.unwrap_or("unknown") == email_region)
            }
            "churn_risk_high_value" => ltv >= ltv_high && f64::from(churn[i]) >= churn_high,
            "likely_buyers_next_30d" => f64::from(propensity[i]) >= propensity_high,
            _ => unreachable!(),
        }
    };
    for segment in SHIPPED {
        let m = membership(&resp, segment);
        assert!(
            m.errors.is_empty(),
            "{segment}: {:?}",
            &m.errors[..m.errors.len().min(3)]
        );
        let want: Vec<u32> = (0..rows.len())
            .filter(|&i| expected(segment, i))
            .map(|i| i as u32)
            .collect();
        assert_eq!(m.member_rows, want, "{segment}");
    }
    // The comparison is not vacuous: every score threshold is crossed by
    // some rows and not by others (a conjunction may still be empty: high
    // value customers rarely have the highest churn risk).
    for (model, scores, threshold) in [
        ("ltv", ltv, ltv_high),
        ("churn", churn, churn_high),
        ("propensity", propensity, propensity_high),
    ] {
        let above = scores
            .iter()
            .filter(|s| f64::from(**s) >= threshold)
            .count();
        assert!(
            above > 0 && above < rows.len(),
            "{model}: {above} rows at or above {threshold}"
        );
    }
    for segment in [
        "high_value_abandoners",
        "high_value_active",
        "likely_buyers_next_30d",
    ] {
        assert!(
            !membership(&resp, segment).member_rows.is_empty(),
            "{segment} selects someone"
        );
    }
    // Exactly-at-threshold rows are members (>=, <=).
    let active = &membership(&resp, "high_value_active").member_rows;
    let at_edge = (0..rows.len()).find(|&i| {
        f64::from(rows[i].monetary_mean) == amount && rows[i].recency.map(f64::from) == Some(recent)
    });
    assert!(active.contains(&(at_edge.unwrap() as u32)));

    let (_, text) = http_get(app.metrics_addr.unwrap(), "/metrics").await;
    let line = format!(
        "segscore_segment_rows_total{{segment=\"likely_buyers_next_30d\"}} {}",
        membership(&resp, "likely_buyers_next_30d")
            .member_rows
            .len()
    );
    assert!(text.contains(&line), "{line} in /metrics");
    app.stop().await.unwrap();
}

pub(crate) async fn list(app: &TestApp) -> Vec<pb::SegmentInfo> {
    app.client
        .clone()
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .segments
}

pub(crate) fn frequency_rows() -> pb::FeatureMatrix {
    let mut column = i64_col("frequency", vec![5, 1, 3, 9]);
    column.missing_rows = vec![3];
    matrix(vec![column])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_are_refused_precisely_and_the_others_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("segments.toml");
    write_rules(
        &rules,
        &[
            ("frequent", "features.frequency >= MIN_FREQUENCY"),
            ("typo_feature", "features.frequncy > 2"),
            ("typo_model", "scores.ltvv > 10.0 && features.frequency > 1"),
            ("not_bool", "features.frequency + 1"),
            ("syntax", "features.frequency >= && 2"),
        ],
    );
    let app = spawn_app_with(&shipped_models(), |a| a.segments = Some(rules.clone())).await;
    let infos = list(&app).await;
    let state = |name: &str| infos.iter().find(|s| s.name == name).unwrap();
    assert_eq!(state("frequent").state(), pb::SegmentState::Ready);
    for (name, fragment) in [
        ("typo_feature", "unknown feature `frequncy`"),
        ("typo_model", "unknown model `ltvv`"),
        ("not_bool", "evaluates to int"),
        ("syntax", "syntax error"),
    ] {
        let info = state(name);
        assert_eq!(info.state(), pb::SegmentState::Failed, "{name}");
        assert!(info.reason.contains(fragment), "{name}: {}", info.reason);
    }
    assert!(
        state("typo_model").reason.contains("`scores.ltvv`"),
        "points at the expression"
    );

    // The good one works; `frequency` rejects missing values: row 3 is an
    // error for the segment, not a silent false.
    let resp = app
        .score(pb::ScoreRequest {
            features: Some(frequency_rows()),
            segments: vec!["frequent".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(resp.models.is_empty(), "the rule reads no scores");
    let m = membership(&resp, "frequent");
    assert_eq!(m.member_rows, [0, 2]);
    assert_eq!(m.errors.len(), 1);
    assert_eq!(m.errors[0].row, 3);
    assert!(
        m.errors[0].reason.contains("`frequency`"),
        "{}",
        m.errors[0].reason
    );

    let err = app
        .score(pb::ScoreRequest {
            features: Some(frequency_rows()),
            segments: vec!["frequent".into(), "typo_model".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("`typo_model`") && err.message().contains("unknown model `ltvv`"),
        "{}",
        err.message()
    );

    let err = app
        .score(pb::ScoreRequest {
            features: Some(frequency_rows()),
            segments: vec!["nope".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("`nope`") && err.message().contains("frequent"),
        "{}",
        err.message()
    );
    app.stop().await.unwrap();
}

/// Polls ListSegments until `ok` holds (the reload is asynchronous).
pub(crate) async fn eventually(app: &TestApp, what: &str, ok: impl Fn(&[pb::SegmentInfo]) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let infos = list(app).await;
        if ok(&infos) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {infos:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_with_their_file_and_with_the_models() {
    let models = copy_models();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("segments.toml");
    write_rules(&rules, &[("buyers", "scores.propensity >= 0.5")]);
    let app = spawn_app_with(models.path(), |a| {
        a.segments = Some(rules.clone());
        a.watch_interval_ms = 200;
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    eventually(&app, "initial", |s| {
        s.len() == 1 && s[0].models == ["propensity"]
    })
    .await;

    write_rules(
        &rules,
        &[
            ("buyers", "scores.propensity >= 0.5"),
            ("frequent", "features.frequency >= 3"),
        ],
    );
    eventually(&app, "new segment", |s| {
        s.iter().any(|s| s.name == "frequent")
    })
    .await;

    // A file that does not parse keeps the previous segments serving.
    std::fs::write(&rules, "[[segments]\nname = ").unwrap();
    // Wait until the reload task has read the bad file and refused it (it
    // counts that), then check nothing changed.
    crate::metrics::wait_for_metric(
        app.metrics_addr.unwrap(),
        "segscore_segment_reloads_total{result=\"invalid\"}",
        1.0,
    )
    .await;
    assert_eq!(list(&app).await.len(), 2);
    let resp = app
        .score(pb::ScoreRequest {
            features: Some(frequency_rows()),
            segments: vec!["frequent".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(membership(&resp, "frequent").member_rows, [0, 2]);
    write_rules(
        &rules,
        &[
            ("buyers", "scores.propensity >= 0.5"),
            ("frequent", "features.frequency >= 3"),
        ],
    );

    // The model a rule reads leaves the repository: that segment fails, the
    // other keeps working.
    std::fs::remove_dir_all(models.path().join("propensity")).unwrap();
    eventually(&app, "model removed", |s| {
        s.iter().any(|s| {
            s.name == "buyers"
                && s.state() == pb::SegmentState::Failed
                && s.reason.contains("unknown model `propensity`")
        })
    })
    .await;
    let infos = list(&app).await;
    assert!(infos
        .iter()
        .any(|s| s.name == "frequent" && s.state() == pb::SegmentState::Ready));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_stream_returns_segments_and_requested_models_keep_their_version() {
    let app = spawn_app_with(&shipped_models(), |a| a.segments = Some(shipped_segments())).await;
    let c = constants();
    let chunks: Vec<pb::ScoreRequest> = (0..3u64)
        .map(|sequence| {
            let (features, _) = generate(300, &c);
            pb::ScoreRequest {
                sequence,
                features: Some(features),
                // propensity pinned to v1: the rule reads the caller's version.
                models: vec![model("propensity", 1)],
                segments: vec![
                    "likely_buyers_next_30d".into(),
                    "churn_risk_high_value".into(),
                ],
                ..Default::default()
            }
        })
        .collect();
    let mut stream = app
        .client
        .clone()
        .score_stream(futures::stream::iter(chunks))
        .await
        .unwrap()
        .into_inner();
    let threshold = num(&c, "PROPENSITY_HIGH");
    let mut seen = 0;
    while let Some(resp) = stream.message().await.unwrap() {
        assert!(resp.error.is_none(), "{:?}", resp.error);
        assert_eq!(resp.sequence, seen);
        seen += 1;
        let propensity: Vec<&pb::ModelScores> = resp
            .models
            .iter()
            .filter(|m| m.name == "propensity")
            .collect();
        assert_eq!(propensity.len(), 1);
        assert_eq!(propensity[0].version, 1);
        let want: Vec<u32> = propensity[0]
            .scores
            .iter()
            .enumerate()
            .filter(|(_, s)| f64::from(**s) >= threshold)
            .map(|(i, _)| i as u32)
            .collect();
        assert_eq!(
            membership(&resp, "likely_buyers_next_30d").member_rows,
            want
        );
        assert!(
            resp.models.iter().any(|m| m.name == "ltv")
                && resp.models.iter().any(|m| m.name == "churn")
        );
    }
    assert_eq!(seen, 3);
    app.stop().await.unwrap();
}

#[test]
fn segments_cli_checks_files_and_compares_scored_files() {
    let bin = env!("CARGO_BIN_EXE_segscore");
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(bin).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = run(&[
        "segments".as_ref(),
        "check".as_ref(),
        shipped_segments().as_os_str(),
        "--model-repository".as_ref(),
        shipped_models().as_os_str(),
    ]);
    assert!(ok, "{stdout}");
    for name in SHIPPED {
        assert!(stdout.contains(&format!("ok      {name}")), "{stdout}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    write_rules(
        &bad,
        &[
            ("good", "features.frequency > 1"),
            ("typo", "scores.ltvv > 1.0"),
        ],
    );
    let (ok, stdout) = run(&[
        "segments".as_ref(),
        "check".as_ref(),
        bad.as_os_str(),
        "--model-repository".as_ref(),
        shipped_models().as_os_str(),
    ]);
    assert!(!ok);
    assert!(
        stdout.contains("ok      good") && stdout.contains("FAILED  typo: unknown model `ltvv`"),
        "{stdout}"
    );

    // The bulk job's output shape: an id column plus `segment:<name>` booleans.
    let now = dir.path().join("now.csv");
    let before = dir.path().join("before.csv");
    std::fs::write(
        &now,
        "customer_id,ltv,segment:a\nc1,1.0,true\nc2,2.0,true\nc3,3.0,false\n",
    )
    .unwrap();
    std::fs::write(
        &before,
        "customer_id,ltv,segment:a\nc1,1.0,true\nc2,2.0,false\nc3,3.0,true\n",
    )
    .unwrap();
    let (ok, stdout) = run(&[
        "segments".as_ref(),
        "stats".as_ref(),
        "--input".as_ref(),
        now.as_os_str(),
        "--baseline".as_ref(),
        before.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(ok, "{stdout}");
    let line: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    assert_eq!(line["segment"], "a");
    assert_eq!(line["members"], 2);
    assert_eq!(line["baseline"]["entered"], 1);
    assert_eq!(line["baseline"]["left"], 1);
    assert!((line["baseline"]["jaccard"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9);
}
