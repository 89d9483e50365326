//! The binary's command line: `segscore score` embedded and remote give
//! identical files; `make run` listens where ADDR says; one line per error;
//! options come from flags, env vars and the `--config` file in that order;
//! one spelling for the model repository.

use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Output},
};

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_and_remote_scoring_write_identical_outputs() {
    let app = spawn_app().await;
    let out = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_segscore");
    let run = |extra: &[String], output: &str| {
        let path = out.path().join(output);
        let status = Command::new(bin)
            .arg("score")
            .arg("--input")
            .arg(sample_users())
            .arg("--output")
            .arg(&path)
            .arg("--model-repository")
            .arg(shipped_models())
            .args(["--batch-rows", "300"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        std::fs::read_to_string(path).unwrap()
    };
    let embedded = run(&[], "embedded.csv");
    let remote = run(
        &["--addr".into(), format!("http://{}", app.addr)],
        "remote.csv",
    );
    assert_eq!(embedded, remote);
    let mut lines = embedded.lines();
    assert_eq!(
        lines.next(),
        Some("customer_id,churn,clusters,clusters_cluster,ltv,propensity")
    );
    let rows: Vec<&str> = lines.collect();
    let input_rows = std::fs::read_to_string(sample_users())
        .unwrap()
        .lines()
        .count()
        - 1;
    assert_eq!(rows.len(), input_rows);
    // The file's scores are the server's scores for the same rows.
    let (features, ids) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    let resp = app
        .score(request(features, vec![model("churn", 0)]))
        .await
        .unwrap();
    let (features, _) = csv_matrix(
        &sample_users(),
        &manifest("clusters", latest_version("clusters")),
        "customer_id",
    );
    let clusters = app
        .score(request(features, vec![model("clusters", 0)]))
        .await
        .unwrap();
    for (i, line) in rows.iter().enumerate().step_by(97) {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells[0], ids[i]);
        assert_eq!(cells[1].parse::<f32>().unwrap(), resp.models[0].scores[i]);
        // A clustering model writes its distance and its cluster id.
        assert_eq!(
            cells[2].parse::<f32>().unwrap(),
            clusters.models[0].scores[i]
        );
        assert_eq!(
            cells[3].parse::<u32>().unwrap(),
            clusters.models[0].cluster_ids[i]
        );
    }
    // Pinning a version works the same way.
    let pinned = run(&["--models".into(), "churn:1".into()], "pinned.csv");
    assert!(pinned.starts_with("customer_id,churn\n"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_columns_are_the_same_embedded_and_remote_and_match_score() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("segments.toml");
    let app = spawn_app_with(&shipped_models(), |a| a.segments = Some(rules.clone())).await;
    let out = tempfile::tempdir().unwrap();
    let segments = "likely_buyers_next_30d,high_value_active,churn_risk_high_value";
    let run = |extra: &[String], output: &str| {
        let path = out.path().join(output);
        let status = Command::new(env!("CARGO_BIN_EXE_segscore"))
            .arg("score")
            .arg("--input")
            .arg(sample_users())
            .arg("--output")
            .arg(&path)
            .arg("--model-repository")
            .arg(shipped_models())
            .arg("--segments-file")
            .arg(&rules)
            .args(["--models", "propensity", "--segments", segments])
            .args(["--batch-rows", "256"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        // Lossy: the Parquet run's bytes are only checked through `stats`.
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        (text, String::from_utf8_lossy(&status.stderr).into_owned())
    };
    let (embedded, summary) = run(&[], "embedded.csv");
    let (remote, _) = run(
        &["--addr".into(), format!("http://{}", app.addr)],
        "remote.csv",
    );
    assert_eq!(embedded, remote);
    let mut lines = embedded.lines();
    // The models the rules read (churn, ltv) are scored and written too.
    assert_eq!(
        lines.next(),
        Some(
            "customer_id,propensity,churn,ltv,segment:likely_buyers_next_30d,\
             segment:high_value_active,segment:churn_risk_high_value"
        )
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    // The same rows through Score with the same segments.
    let (features, ids) = csv_matrix(
        &sample_users(),
        &manifest("churn", latest_version("churn")),
        "customer_id",
    );
    let mut req = request(features, vec![model("propensity", 0)]);
    req.segments = segments.split(',').map(str::to_owned).collect();
    let resp = app.score(req).await.unwrap();
    assert_eq!(rows.len(), ids.len());
    let mut members = [0usize; 3];
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0], ids[i]);
        for (s, membership) in resp.segments.iter().enumerate() {
            let want = if membership.errors.iter().any(|e| e.row as usize == i) {
                ""
            } else if membership.member_rows.contains(&(i as u32)) {
                members[s] += 1;
                "true"
            } else {
                "false"
            };
            assert_eq!(row[4 + s], want, "row {i}, segment {}", membership.name);
        }
    }
    // Members in the sample, so the columns are not all false (the
    // churn-risk segment is rare: it may have none in 1,000 rows).
    assert!(members[0] > 0 && members[1] > 0, "{members:?}");
    // The job's summary counts each segment's members.
    for (s, name) in segments.split(',').enumerate() {
        let line = format!("segment {name}: {} members", members[s]);
        assert!(summary.contains(&line), "{line} not in {summary}");
    }

    // `segments stats` reads the Parquet form and finds the CSV's members.
    run(
        &["--addr".into(), format!("http://{}", app.addr)],
        "remote.parquet",
    );
    let stats = Command::new(env!("CARGO_BIN_EXE_segscore"))
        .args(["segments", "stats", "--json", "--input"])
        .arg(out.path().join("remote.parquet"))
        .arg("--baseline")
        .arg(out.path().join("embedded.csv"))
        .output()
        .unwrap();
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(stats.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (s, name) in segments.split(',').enumerate() {
        let line = lines
            .iter()
            .find(|l| l["segment"] == name)
            .unwrap_or_else(|| panic!("no stats for {name}: {lines:?}"));
        assert_eq!(line["members"], members[s]);
        assert_eq!(line["rows"], rows.len());
        assert_eq!(line["baseline"]["members"], members[s]);
        assert_eq!(line["baseline"]["jaccard"], 1.0);
    }
    app.stop().await.unwrap();
}

/// Runs the binary with `args` and extra env vars, with no `SEGSCORE_*`
/// variable of the caller's leaking in.
fn segscore<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_segscore"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("SEGSCORE_") {
            command.env_remove(key);
        }
    }
    command.args(args).env_remove("RUST_LOG");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

fn shipped_segments() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("segments.toml")
}

#[test]
fn make_run_listens_where_addr_says() {
    let dry_run = |extra: &[&str]| {
        let out = Command::new("make")
            .args(["-n", "-s", "-C", env!("CARGO_MANIFEST_DIR"), "run"])
            .args(extra)
            // Not the variables of a `make test` this runs under.
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS")
            .env_remove("MAKELEVEL")
            .env_remove("ADDR")
            .env_remove("HTTP_ADDR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let serve_line = |text: &str| {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" serve ")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        lines[0].to_owned()
    };
    let default = serve_line(&dry_run(&[]));
    assert!(
        default.ends_with(" --addr 127.0.0.1:50051 --http-addr 127.0.0.1:8080"),
        "{default}"
    );
    let chosen = serve_line(&dry_run(&["ADDR=0.0.0.0:50999", "HTTP_ADDR=0.0.0.0:8999"]));
    assert!(
        chosen.ends_with(" --addr 0.0.0.0:50999 --http-addr 0.0.0.0:8999"),
        "{chosen}"
    );
}

#[test]
fn an_error_is_printed_once_on_one_line() {
    let args = ["serve", "--model-repository", "/no-such-repository"];
    let out = segscore(&args, &[]);
    let log = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(
        lines_with(&log, "not a directory"),
        ["error: --model-repository /no-such-repository: not a directory (point it at the model repository)"],
        "{log}"
    );
    // With JSON logs the one line is a JSON event, for log shippers.
    let out = segscore(&[&["--log-format", "json"][..], &args].concat(), &[]);
    let log = stderr(&out);
    let errors = lines_with(&log, "not a directory");
    assert_eq!(errors.len(), 1, "{log}");
    let event: serde_json::Value = serde_json::from_str(errors[0]).unwrap();
    assert_eq!(event["level"], "ERROR", "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_takes_a_server_address_without_a_scheme() {
    let app = spawn_app().await;
    let out = tempfile::tempdir().unwrap();
    let output = out.path().join("scores.csv");
    let result = segscore(
        &[
            "score".as_ref(),
            "--input".as_ref(),
            sample_users().as_os_str(),
            "--output".as_ref(),
            output.as_os_str(),
            "--models".as_ref(),
            "churn".as_ref(),
            "--addr".as_ref(),
            app.addr.to_string().as_ref(),
        ],
        &[],
    );
    assert!(result.status.success(), "{}", stderr(&result));
    let scores = std::fs::read_to_string(&output).unwrap();
    assert!(scores.starts_with("customer_id,churn\n"), "{scores}");
    app.stop().await.unwrap();
}

#[test]
fn serve_options_come_from_flags_then_env_vars_then_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-repository");
    let file = dir.path().join("segscore.toml");
    // Keys that are also flags, one of them from the flattened engine
    // options; the repository does not exist, so serve stops right after
    // logging the configuration it would have run with.
    std::fs::write(
        &file,
        format!(
            "model_repository = {:?}\nmetrics_addr = \"127.0.0.1:9464\"\nworkers = 5\n\
             max_batch_rows = 100\nqueue_capacity = 10\nsegments = \"rules.toml\"\n",
            missing.display().to_string()
        ),
    )
    .unwrap();
    let out = segscore(
        &[
            "--log-format".as_ref(),
            "json".as_ref(),
            "serve".as_ref(),
            "--config".as_ref(),
            file.as_os_str(),
            "--max-batch-rows".as_ref(),
            "7".as_ref(),
        ],
        &[
            ("SEGSCORE_WORKERS", "4".as_ref()),
            ("SEGSCORE_MAX_BATCH_ROWS", "8".as_ref()),
        ],
    );
    let log = stderr(&out);
    assert!(!out.status.success(), "{log}");
    let config = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["fields"]["message"] == "starting")
        .unwrap_or_else(|| panic!("no `starting` line: {log}"))["fields"]["config"]
        .as_str()
        .unwrap()
        .to_owned();
    for (want, from) in [
        (
            "max_batch_rows: 7,",
            "the flag beats the env var and the file",
        ),
        ("workers: Some(4),", "the env var beats the file"),
        ("queue_capacity: 10,", "the file beats the default"),
        ("metrics_addr: Some(127.0.0.1:9464),", "the file"),
        ("segments: Some(\"rules.toml\"),", "the file"),
        ("intra_threads: 1,", "the default"),
    ] {
        assert!(config.contains(want), "{want} ({from}) not in {config}");
    }
    assert!(log.contains("no-such-repository: not a directory"), "{log}");

    // An unknown key fails before anything starts, naming the key and file.
    std::fs::write(&file, "metrics_adress = \"127.0.0.1:9464\"\n").unwrap();
    let out = segscore(
        &["serve".as_ref(), "--config".as_ref(), file.as_os_str()],
        &[],
    );
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("unknown option `metrics_adress`"), "{log}");
    assert!(log.contains(&file.display().to_string()), "{log}");
}

#[test]
fn the_model_repository_has_one_spelling_and_the_old_ones_warn_once() {
    let segments = shipped_segments();
    let models = shipped_models();
    let check = |flag: &str, env: &[(&str, &OsStr)]| {
        let mut args = vec!["segments".as_ref(), "check".as_ref(), segments.as_os_str()];
        if !flag.is_empty() {
            args.extend([flag.as_ref(), models.as_os_str()]);
        }
        let out = segscore(&args, env);
        assert!(out.status.success(), "{flag} {env:?}: {}", stderr(&out));
        stderr(&out)
    };
    let log = check("--model-repository", &[]);
    assert!(lines_with(&log, "deprecated").is_empty(), "{log}");
    let log = check("", &[("SEGSCORE_MODEL_REPOSITORY", models.as_os_str())]);
    assert!(lines_with(&log, "deprecated").is_empty(), "{log}");
    let log = check("--models", &[]);
    assert_eq!(
        lines_with(&log, "deprecated"),
        ["warning: `segscore segments check --models` is deprecated; use --model-repository"]
    );
    let log = check("", &[("SEGSCORE_MODELS", models.as_os_str())]);
    assert_eq!(
        lines_with(&log, "deprecated"),
        ["warning: SEGSCORE_MODELS is deprecated; use SEGSCORE_MODEL_REPOSITORY"]
    );

    // serve: `--models` was the directory (serve takes no list of models).
    let out = segscore(&["serve", "--models", "/no-such-repository"], &[]);
    let log = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(lines_with(&log, "deprecated").len(), 1, "{log}");
    assert!(
        log.contains("--model-repository /no-such-repository: not a directory"),
        "{log}"
    );

    // --help documents the new spelling (and its env var) everywhere a
    // repository is read, and `--models` only where it is a list of models.
    for sub in [
        &["serve"][..],
        &["score"],
        &["segments", "check"],
        &["train"],
        &["bench"],
    ] {
        let out = segscore(&[sub, &["--help"]].concat(), &[]);
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("--model-repository <DIR>"), "{sub:?}: {help}");
        assert!(
            help.contains("SEGSCORE_MODEL_REPOSITORY"),
            "{sub:?}: {help}"
        );
        assert!(!help.contains("--models-dir"), "{sub:?}: {help}");
        assert!(!help.contains("SEGSCORE_MODELS="), "{sub:?}: {help}");
        let lists_models = help.contains("--models <");
        assert_eq!(lists_models, sub == ["score"], "{sub:?}: {help}");
    }
}
