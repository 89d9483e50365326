//! Repository and rules-file attacks (issue 16): a version directory or a
//! rules file written by someone who should not control the host. Each
//! attack is refused with a precise reason, and everything else keeps
//! serving.

use std::{fs, path::Path};

use segscore::proto::pb;

use crate::{
    helpers::*,
    segments::{eventually, frequency_rows, list, membership},
};

/// A version directory is untrusted input (issue 16): whatever its manifest
/// or its symlinks say, the server reads only regular files inside that
/// directory, refuses the rest promptly with a reason that names no content
/// hash of the wrong file, and keeps serving every other version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_version_directory_or_not_regular_are_refused() {
    use std::os::unix::fs::symlink;
    let dir = copy_models();
    let root = dir.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let churn = latest_version("churn");
    let ltv = latest_version("ltv");
    let propensity = latest_version("propensity");
    let set_file = |m: &mut String, file: &str| {
        *m = m.replacen("file = \"model.onnx\"", &format!("file = \"{file}\""), 1);
    };
    let fifo = |path: &Path| {
        let _ = fs::remove_file(path);
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path; mkfifo only creates a node.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    let link = |target: &str, at: &Path| {
        fs::remove_file(at).unwrap();
        symlink(target, at).unwrap();
    };
    // The manifest points at another version's model, relatively and
    // absolutely (same bytes, so the sha256 matches: they used to serve).
    add_version(root, "churn", churn, 10, |_, m| {
        set_file(m, &format!("../{churn}/model.onnx"))
    });
    let absolute = root.join(format!("churn/{churn}/model.onnx"));
    add_version(root, "churn", churn, 11, |_, m| {
        set_file(m, absolute.to_str().unwrap())
    });
    add_version(root, "churn", churn, 12, |d, _| {
        link(&format!("../{churn}/model.onnx"), &d.join("model.onnx"))
    });
    add_version(root, "churn", churn, 13, |d, _| {
        link("/etc/passwd", &d.join("model.onnx"))
    });
    add_version(root, "churn", churn, 14, |_, m| set_file(m, "/etc/passwd"));
    // Not regular files: a FIFO (reading it used to block the load forever)
    // and a device (reading /dev/zero used to grow until the OOM killer).
    add_version(root, "ltv", ltv, 15, |d, _| fifo(&d.join("model.onnx")));
    add_version(root, "ltv", ltv, 16, |d, _| {
        link("/dev/zero", &d.join("model.onnx"))
    });
    // The golden set and the manifest (the card is in it) follow the rules.
    add_version(root, "propensity", propensity, 17, |d, _| {
        link(
            &format!("../{propensity}/golden.csv"),
            &d.join("golden.csv"),
        )
    });
    add_version(root, "propensity", propensity, 18, |d, m| {
        let outside = elsewhere.path().join("model.toml");
        fs::write(&outside, m.as_bytes()).unwrap();
        fs::remove_file(d.join("model.toml")).unwrap();
        symlink(&outside, d.join("model.toml")).unwrap();
        // add_version writes the manifest through the symlink afterwards:
        // the outside file gets this version's text, a valid manifest.
    });
    // labels.toml as a FIFO used to block the scan (and start-up) forever.
    fifo(&root.join("propensity").join("labels.toml"));

    let app = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        spawn_app_with(root, |_| {}),
    )
    .await
    .expect("start-up is not blocked by a FIFO");
    let list = app
        .client
        .clone()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let failed = |name: &str, version: u64, fragments: &[&str]| {
        let m = list.models.iter().find(|m| m.name == name).unwrap();
        let v = m
            .versions
            .iter()
            .find(|v| v.version == version)
            .unwrap_or_else(|| panic!("{name} v{version} not listed"));
        assert_eq!(
            v.state,
            pb::VersionState::Failed as i32,
            "{name} v{version}: {}",
            v.reason
        );
        for fragment in fragments {
            assert!(
                v.reason.contains(fragment),
                "{name} v{version}: `{fragment}` not in `{}`",
                v.reason
            );
        }
        assert!(
            !has_hex_digest(&v.reason),
            "{name} v{version} names a content hash: {}",
            v.reason
        );
    };
    let not_relative = "must be a relative path inside the directory";
    failed("churn", 10, &["model file `../", not_relative]);
    failed("churn", 11, &["model file `/", not_relative]);
    failed(
        "churn",
        12,
        &["model file `model.onnx` resolves to", "outside"],
    );
    failed("churn", 13, &["resolves to /etc/passwd, outside"]);
    failed("churn", 14, &["model file `/etc/passwd`", not_relative]);
    failed("ltv", 15, &["FIFO (named pipe), not a regular file"]);
    failed("ltv", 16, &["resolves to /dev/zero, outside"]);
    failed(
        "propensity",
        17,
        &["golden set: `golden.csv` resolves to", "outside"],
    );
    failed("propensity", 18, &["model.toml", "outside"]);

    // Every shipped version still serves, and scores.
    let resp = app
        .score(request(
            matrix(full_rows(2)),
            vec![model("churn", 0), model("ltv", 0), model("propensity", 0)],
        ))
        .await
        .unwrap();
    assert_eq!(
        resp.models.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![churn, ltv, propensity]
    );
    app.stop().await.unwrap();
}

/// Any 64 hex digits in a row: a sha256 a reason should not carry.
fn has_hex_digest(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .any(|run| run.len() >= 64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_file_over_max_model_bytes_is_refused_and_smaller_ones_serve() {
    // The ONNX models are ~110 KB, the smartcore ones ~1 KB to 60 KB.
    let app = spawn_app_with(&shipped_models(), |a| a.engine.max_model_bytes = 100_000).await;
    let list = app
        .client
        .clone()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let churn = list.models.iter().find(|m| m.name == "churn").unwrap();
    let onnx = churn
        .versions
        .iter()
        .find(|v| v.version == latest_version("churn"))
        .unwrap();
    assert_eq!(onnx.state, pb::VersionState::Failed as i32);
    assert!(
        onnx.reason.contains(
            "model file `model.onnx` is larger than --max-model-bytes allows (100000 bytes)"
        ),
        "{}",
        onnx.reason
    );
    assert_eq!(churn.default_version, 1, "the smartcore version serves");
    let resp = app
        .score(request(matrix(full_rows(2)), vec![model("churn", 0)]))
        .await
        .unwrap();
    assert_eq!(resp.models[0].version, 1);
    app.stop().await.unwrap();
}

/// Rules that took cel 0.15's parser (and with it the process, or the
/// reload task) down: a syntax error past character 65,535.
fn parser_crashers() -> [String; 2] {
    [
        format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!(
            "{} &&& )",
            vec!["features.frequency > 1"; 3_500].join(" || ")
        ),
    ]
}

/// A rules file is untrusted input (issue 16): a rule that crashed the
/// parser refuses its segment at start-up; at reload, an edit into such a
/// rule is refused while the previous rule keeps serving, and the task keeps
/// watching: the next good edit is picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_crashed_the_parser_is_refused_at_start_up_and_at_reload() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("segments.toml");
    let [parens, terms] = parser_crashers();
    write_rules(
        &rules,
        &[
            ("frequent", "features.frequency >= MIN_FREQUENCY"),
            ("parens", &parens),
            ("terms", &terms),
        ],
    );
    let app = spawn_app_with(&shipped_models(), |a| {
        a.segments = Some(rules.clone());
        a.watch_interval_ms = 200;
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let infos = list(&app).await;
    let state = |name: &str| infos.iter().find(|s| s.name == name).unwrap();
    assert_eq!(state("frequent").state(), pb::SegmentState::Ready);
    for name in ["parens", "terms"] {
        assert_eq!(state(name).state(), pb::SegmentState::Failed);
        assert!(
            state(name).reason.contains("over the limit of 4096"),
            "{name}: {}",
            state(name).reason
        );
    }
    let app_ref = &app;
    let frequent = || async move {
        let resp = app_ref
            .score(pb::ScoreRequest {
                features: Some(frequency_rows()),
                segments: vec!["frequent".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        membership(&resp, "frequent").member_rows.clone()
    };
    assert_eq!(frequent().await, [0, 2]);

    // The good rule is edited into a crasher: refused, the previous rule
    // keeps serving and says why.
    write_rules(&rules, &[("frequent", &parens)]);
    eventually(&app, "edit refused", |s| {
        s.len() == 1
            && s[0].state() == pb::SegmentState::Ready
            && s[0].rule == "features.frequency >= MIN_FREQUENCY"
            && s[0]
                .reason
                .starts_with("edit refused, the previous rule keeps serving: ")
            && s[0].reason.contains("over the limit of 4096")
    })
    .await;
    assert_eq!(frequent().await, [0, 2]);

    // The task still watches: a good edit is picked up.
    write_rules(&rules, &[("frequent", "features.frequency >= 5")]);
    eventually(&app, "good edit", |s| {
        s.len() == 1
            && s[0].state() == pb::SegmentState::Ready
            && s[0].rule == "features.frequency >= 5"
            && s[0].reason.is_empty()
    })
    .await;
    assert_eq!(frequent().await, [0]);
    let (_, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert!(!text.contains("result=\"panicked\""), "{text}");
    assert!(!app.handle.as_ref().unwrap().is_finished());
    app.stop().await.unwrap();
}

#[test]
fn segments_check_refuses_a_parser_crasher_without_crashing() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("segments.toml");
    let [parens, _] = parser_crashers();
    write_rules(
        &rules,
        &[("ok", "features.frequency >= 3"), ("parens", &parens)],
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"))
        .args(["segments", "check"])
        .arg(&rules)
        .arg("--models")
        .arg(shipped_models())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ok      ok"), "{stdout}");
    assert!(
        stdout.contains("FAILED  parens: the rule is 200004 bytes long, over the limit of 4096"),
        "{stdout}"
    );

    // `serve --segments` starts and serves with the same file.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_segscore"));
    command
        .args(["--log-format", "json", "serve", "--addr", "127.0.0.1:0"])
        .args(["--workers", "1", "--segments"])
        .arg(&rules)
        .arg("--models")
        .arg(shipped_models())
        .env_remove("RUST_LOG");
    let mut server = ServedBinary::start(command);
    assert!(server.terminate().success());
}
