//! Drop-in model lifecycle: new, corrupt and schema-breaking versions, rollback
//! and removal under continuous load with zero failed requests; slow copies;
//! labels.

use std::{
    fs,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use segscore::proto::pb;
use tonic::Code;

use crate::helpers::*;

/// Copies version `from` of `name` to `to`, manifest last (as the contract
/// says), letting `edit` change the manifest text.
fn drop_in(root: &Path, name: &str, from: u64, to: u64, edit: impl FnOnce(&mut String)) {
    let src = root.join(name).join(from.to_string());
    let dst = root.join(name).join(to.to_string());
    fs::create_dir_all(&dst).unwrap();
    for entry in fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.toml" {
            fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
        }
    }
    let mut manifest = fs::read_to_string(src.join("model.toml"))
        .unwrap()
        .replace(&format!("version = {from}\n"), &format!("version = {to}\n"));
    edit(&mut manifest);
    fs::write(dst.join("model.toml"), manifest).unwrap();
}

/// Same model, but `frequency` declared f32: a dtype change that callers of
/// the previous version did not sign up for (a breaking change).
fn retype_frequency(manifest: &mut String) {
    let at = manifest.find("name = \"frequency\"").unwrap();
    let dtype = at + manifest[at..].find("dtype = \"i64\"").unwrap();
    manifest.replace_range(dtype..dtype + "dtype = \"i64\"".len(), "dtype = \"f32\"");
}

async fn models(app: &TestApp) -> Vec<pb::ModelInfo> {
    app.client
        .clone()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models
}

/// Polls ListModels until `check` holds (file events and a 100 ms watch
/// interval make this quick; the bound keeps a broken watcher from hanging).
async fn wait_until(app: &TestApp, what: &str, check: impl Fn(&[pb::ModelInfo]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if check(&models(app).await) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn default_of(models: &[pb::ModelInfo], name: &str) -> u64 {
    models
        .iter()
        .find(|m| m.name == name)
        .map_or(0, |m| m.default_version)
}

fn state_of(models: &[pb::ModelInfo], name: &str, version: u64) -> Option<(i32, String)> {
    let m = models.iter().find(|m| m.name == name)?;
    let v = m.versions.iter().find(|v| v.version == version)?;
    Some((v.state, v.reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_ins_swaps_and_rollback_under_load_fail_no_request() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let (churn, ltv, propensity) = (
        latest_version("churn"),
        latest_version("ltv"),
        latest_version("propensity"),
    );

    // Continuous load: four callers scoring all three models until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = app.client.clone();
            let (stop, ok, failed, errors) =
                (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let req = request(
                        matrix(full_rows(5)),
                        vec![model("churn", 0), model("ltv", 0), model("propensity", 0)],
                    );
                    match client.score(req).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.lock().unwrap().push(e.message().to_string());
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();

    // 1. A new version of every model: each becomes the default.
    drop_in(&root, "churn", churn, churn + 1, |_| {});
    drop_in(&root, "ltv", ltv, ltv + 1, |_| {});
    drop_in(&root, "propensity", propensity, propensity + 1, |_| {});
    wait_until(&app, "new versions serve", |m| {
        default_of(m, "churn") == churn + 1
            && default_of(m, "ltv") == ltv + 1
            && default_of(m, "propensity") == propensity + 1
    })
    .await;

    // 2. A corrupt version (sha256 mismatch) is refused; the default stays.
    drop_in(&root, "churn", churn, churn + 2, |m| {
        let line = m
            .lines()
            .find(|l| l.starts_with("sha256"))
            .unwrap()
            .to_string();
        *m = m.replace(&line, &format!("sha256 = \"{}\"", "f".repeat(64)));
    });
    // 3. A schema-breaking version (its manifest drops a feature) is refused.
    drop_in(&root, "propensity", propensity, propensity + 2, |m| {
        let start = m.rfind("[[features]]").unwrap();
        let end = m[start..].find("\n[").map_or(m.len(), |e| start + e + 1);
        m.replace_range(start..end, "");
    });
    let failed_state = pb::VersionState::Failed as i32;
    wait_until(&app, "corrupt and breaking versions refused", |m| {
        state_of(m, "churn", churn + 2)
            .is_some_and(|(s, r)| s == failed_state && r.contains("sha256"))
            && state_of(m, "propensity", propensity + 2)
                .is_some_and(|(s, r)| s == failed_state && r.contains("11"))
    })
    .await;
    let now = models(&app).await;
    assert_eq!(default_of(&now, "churn"), churn + 1);
    assert_eq!(default_of(&now, "propensity"), propensity + 1);
    let churn_info = now.iter().find(|m| m.name == "churn").unwrap();
    assert!(
        churn_info.loads_failed >= 1 && churn_info.loads_succeeded >= 3,
        "{churn_info:?}"
    );

    // 4. Roll churn back: `stable` now points at the previous version.
    let mut admin = app.admin().await;
    let rolled = admin
        .rollback(pb::RollbackRequest {
            name: "churn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((rolled.from_version, rolled.to_version), (churn + 1, churn));
    assert_eq!(default_of(&models(&app).await, "churn"), churn);
    let labels = fs::read_to_string(root.join("churn/labels.toml")).unwrap();
    assert!(labels.contains(&format!("stable = {churn}")), "{labels}");

    // 5. Removing a version directory unloads it; the previous one serves.
    fs::remove_dir_all(root.join("ltv").join((ltv + 1).to_string())).unwrap();
    wait_until(&app, "removed version unloaded", |m| {
        default_of(m, "ltv") == ltv && state_of(m, "ltv", ltv + 1).is_none()
    })
    .await;

    // The callers go on scoring against the final state: wait until they
    // have finished a few more requests (an event, not a span of time).
    let settled = ok.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::Relaxed) < settled + 8 {
        assert!(
            Instant::now() < deadline,
            "the load generator stopped making progress ({} failed)",
            failed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(
        failed,
        0,
        "failed requests during swaps: {:?}",
        errors.lock().unwrap().first()
    );
    // Scores now come from the rolled-back churn version.
    let resp = app
        .score(request(matrix(full_rows(1)), vec![model("churn", 0)]))
        .await
        .unwrap();
    assert_eq!(resp.models[0].version, churn);
    drop(admin);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_copied_version_loads_only_once_its_manifest_lands() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let ltv = latest_version("ltv");
    let src = root.join("ltv").join(ltv.to_string());
    let dst = root.join("ltv").join((ltv + 1).to_string());
    fs::create_dir_all(&dst).unwrap();
    // The model file arrives in pieces, over a second.
    let bytes = fs::read(src.join("model.onnx")).unwrap();
    for part in bytes.chunks(bytes.len() / 4 + 1) {
        use std::io::Write;
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dst.join("model.onnx"))
            .unwrap();
        f.write_all(part).unwrap();
        f.sync_all().unwrap();
        // A rescan of its own after each piece (Reload returns once the scan
        // is done): the half-copied version must be ignored every time, and
        // the file watcher sees the writes as they happen too.
        assert_ignored(&app, ltv).await;
    }
    fs::copy(src.join("golden.csv"), dst.join("golden.csv")).unwrap();
    // The drift reference the manifest names, if the version has one.
    if src.join("reference.json").exists() {
        fs::copy(src.join("reference.json"), dst.join("reference.json")).unwrap();
    }
    assert_ignored(&app, ltv).await;
    let manifest = fs::read_to_string(src.join("model.toml")).unwrap().replace(
        &format!("version = {ltv}\n"),
        &format!("version = {}\n", ltv + 1),
    );
    fs::write(dst.join("model.toml"), manifest).unwrap();
    wait_until(&app, "complete version serves", |m| {
        default_of(m, "ltv") == ltv + 1
    })
    .await;
    app.stop().await.unwrap();
}

/// Rescans the repository now and checks that `ltv` version `ltv + 1`, still
/// without its manifest, was not considered and `ltv` still serves.
async fn assert_ignored(app: &TestApp, ltv: u64) {
    let after_scan = app
        .admin()
        .await
        .reload(pb::ReloadRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    for models in [after_scan, models(app).await] {
        assert!(
            state_of(&models, "ltv", ltv + 1).is_none(),
            "a version without a manifest was considered"
        );
        assert_eq!(default_of(&models, "ltv"), ltv);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_pin_versions_and_set_label_persists_them() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let churn = latest_version("churn");
    fs::write(
        root.join("churn/labels.toml"),
        format!("stable = 1\ncanary = {churn}\n"),
    )
    .unwrap();
    wait_until(&app, "labels read", |m| default_of(m, "churn") == 1).await;
    let info = models(&app)
        .await
        .into_iter()
        .find(|m| m.name == "churn")
        .unwrap();
    assert_eq!(info.labels.get("canary"), Some(&churn));
    let v = info.versions.iter().find(|v| v.version == churn).unwrap();
    assert_eq!(v.labels, vec!["canary".to_string()]);
    let by_label = pb::ModelRef {
        name: "churn".into(),
        version: 0,
        label: "canary".into(),
    };
    let resp = app
        .score(request(
            matrix(full_rows(1)),
            vec![by_label, model("churn", 0)],
        ))
        .await
        .unwrap();
    assert_eq!((resp.models[0].version, resp.models[1].version), (churn, 1));

    let mut admin = app.admin().await;
    let bad = admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "stable".into(),
            version: 99,
        })
        .await
        .unwrap_err();
    // A version that does not exist is NOT_FOUND, as the README says.
    assert_eq!(bad.code(), Code::NotFound, "{}", bad.message());
    assert!(bad.message().contains("no version 99"), "{}", bad.message());
    let unknown = admin
        .set_label(pb::SetLabelRequest {
            name: "nope".into(),
            label: "stable".into(),
            version: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let set = admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "stable".into(),
            version: churn,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.model.unwrap().default_version, churn);
    assert!(fs::read_to_string(root.join("churn/labels.toml"))
        .unwrap()
        .contains(&format!("stable = {churn}")));
    // Nothing older than version 1 to roll back to once stable is 1.
    admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "stable".into(),
            version: 1,
        })
        .await
        .unwrap();
    let none = admin
        .rollback(pb::RollbackRequest {
            name: "churn".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(none.code(), Code::FailedPrecondition);
    drop(admin);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaking_feature_change_needs_the_manifest_to_say_so() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let ltv = latest_version("ltv");
    drop_in(&root, "ltv", ltv, ltv + 1, retype_frequency);
    wait_until(&app, "breaking version refused", |m| {
        state_of(m, "ltv", ltv + 1)
            .is_some_and(|(_, r)| r.contains("breaking change") && r.contains("frequency"))
    })
    .await;
    assert_eq!(default_of(&models(&app).await, "ltv"), ltv);
    drop_in(&root, "ltv", ltv, ltv + 2, |m| {
        retype_frequency(m);
        // Top-level key: before the first table of the manifest.
        *m = m.replacen("[[features]]", "breaking_change = true\n\n[[features]]", 1);
    });
    wait_until(&app, "declared breaking version serves", |m| {
        default_of(m, "ltv") == ltv + 2
    })
    .await;
    app.stop().await.unwrap();
}

/// `n` rows with distinct entity ids.
fn with_ids(n: usize, models: Vec<pb::ModelRef>) -> pb::ScoreRequest {
    let mut req = request(matrix(full_rows(n)), models);
    req.entity_ids = (0..n).map(|i| format!("customer-{i:06}")).collect();
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_a_stable_entity_hashed_share_and_responses_say_so() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let churn = latest_version("churn");
    assert!(churn >= 2, "the canary test needs two churn versions");
    fs::write(
        root.join("churn/labels.toml"),
        format!("stable = 1\ncanary = {{ version = {churn}, percent = 30.0 }}\n"),
    )
    .unwrap();
    wait_until(&app, "canary configured", |m| {
        m.iter()
            .any(|i| i.name == "churn" && i.canary_percent == 30.0 && i.default_version == 1)
    })
    .await;

    let n = 3000;
    let resp = app
        .score(with_ids(n, vec![model("churn", 0)]))
        .await
        .unwrap();
    let scores = &resp.models[0];
    assert_eq!((scores.version, scores.canary_version), (1, churn));
    assert_eq!(scores.canary_sha256, manifest("churn", churn).sha256);
    let expected_rows: Vec<u32> = resp
        .entity_ids
        .iter()
        .enumerate()
        .filter(|(_, id)| segscore::repository::routing::in_canary("churn", id, 30.0))
        .map(|(i, _)| i as u32)
        .collect();
    assert_eq!(scores.canary_rows, expected_rows);
    let share = scores.canary_rows.len() as f64 / n as f64;
    assert!((share - 0.30).abs() < 0.03, "canary share {share}");

    // Every row's score is the score of the version the response names.
    let stable = app
        .score(with_ids(n, vec![model("churn", 1)]))
        .await
        .unwrap();
    let canary = app
        .score(with_ids(n, vec![model("churn", churn)]))
        .await
        .unwrap();
    assert_eq!(
        stable.models[0].canary_version, 0,
        "a pinned version never splits"
    );
    let in_canary: std::collections::HashSet<u32> = scores.canary_rows.iter().copied().collect();
    for row in 0..n {
        let want = if in_canary.contains(&(row as u32)) {
            canary.models[0].scores[row]
        } else {
            stable.models[0].scores[row]
        };
        assert_eq!(scores.scores[row], want, "row {row}");
    }

    // The same entity gets the same version whatever its position or company.
    let mut reversed = with_ids(n, vec![model("churn", 0)]);
    reversed.entity_ids.reverse();
    let again = app.score(reversed).await.unwrap();
    let mut mirrored: Vec<u32> = scores
        .canary_rows
        .iter()
        .map(|r| (n as u32 - 1) - r)
        .collect();
    mirrored.sort_unstable();
    assert_eq!(again.models[0].canary_rows, mirrored);

    // Without entity ids there is nothing stable to hash: no split.
    let anonymous = app
        .score(request(matrix(full_rows(50)), vec![model("churn", 0)]))
        .await
        .unwrap();
    assert_eq!(
        (
            anonymous.models[0].version,
            anonymous.models[0].canary_version
        ),
        (1, 0)
    );

    // SetLabel moves the canary and keeps its percent.
    let mut admin = app.admin().await;
    admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "canary".into(),
            version: 1,
        })
        .await
        .unwrap();
    let labels = fs::read_to_string(root.join("churn/labels.toml")).unwrap();
    assert!(labels.contains("percent = 30.0"), "{labels}");
    let same = app
        .score(with_ids(100, vec![model("churn", 0)]))
        .await
        .unwrap();
    assert_eq!(
        same.models[0].canary_version, 0,
        "a canary on the default version splits nothing"
    );
    drop(admin);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_beyond_keep_versions_retire_and_come_back_on_rollback() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| {
        a.watch_interval_ms = 100;
        a.engine.keep_versions = 1;
    })
    .await;
    let churn = latest_version("churn");
    drop_in(&root, "churn", churn, churn + 1, |_| {});
    drop_in(&root, "churn", churn, churn + 2, |_| {});
    let retired = pb::VersionState::Retired as i32;
    let serving = pb::VersionState::Serving as i32;
    let is = |m: &[pb::ModelInfo], v: u64, state: i32| {
        state_of(m, "churn", v).is_some_and(|(s, _)| s == state)
    };
    // Default churn+2; churn+1 kept for rollback; everything older retired.
    wait_until(&app, "old versions retired", |m| {
        default_of(m, "churn") == churn + 2
            && is(m, churn + 1, serving)
            && (1..=churn).all(|v| is(m, v, retired))
    })
    .await;
    let pinned = app
        .score(request(matrix(full_rows(1)), vec![model("churn", 1)]))
        .await
        .unwrap_err();
    assert_eq!(pinned.code(), Code::NotFound);
    assert!(pinned.message().contains("retired"), "{}", pinned.message());

    // Rolling back twice: the kept version at once, then a retired one,
    // which is loaded and validated again.
    let mut admin = app.admin().await;
    let first = admin
        .rollback(pb::RollbackRequest {
            name: "churn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (first.from_version, first.to_version),
        (churn + 2, churn + 1)
    );
    let second = admin
        .rollback(pb::RollbackRequest {
            name: "churn".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.from_version, second.to_version), (churn + 1, churn));
    let now = models(&app).await;
    assert!(is(&now, churn, serving), "{now:?}");
    let resp = app
        .score(request(matrix(full_rows(1)), vec![model("churn", 0)]))
        .await
        .unwrap();
    assert_eq!(resp.models[0].version, churn);
    drop(admin);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_version_shows_draining_until_its_last_request_finishes() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let ltv = latest_version("ltv");
    drop_in(&root, "ltv", ltv, ltv + 1, |_| {});
    wait_until(&app, "new version serves", |m| {
        default_of(m, "ltv") == ltv + 1
    })
    .await;
    // An in-flight request holds the version it resolved.
    let held = app.repository.load().resolve("ltv", ltv + 1, "").unwrap();
    fs::remove_dir_all(root.join("ltv").join((ltv + 1).to_string())).unwrap();
    let draining = pb::VersionState::Draining as i32;
    wait_until(&app, "removed version draining", |m| {
        default_of(m, "ltv") == ltv
            && state_of(m, "ltv", ltv + 1).is_some_and(|(s, _)| s == draining)
    })
    .await;
    drop(held);
    wait_until(&app, "drained version gone", |m| {
        state_of(m, "ltv", ltv + 1).is_none()
    })
    .await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_over_its_latency_budget_is_refused() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    let app = spawn_app_with(&root, |a| a.watch_interval_ms = 100).await;
    let ltv = latest_version("ltv");
    // No model scores 1,024 rows in a nanosecond: the gate must refuse it.
    drop_in(&root, "ltv", ltv, ltv + 1, |m| {
        *m = m.replacen("[golden]\n", "[golden]\nlatency_budget_ms = 0.000001\n", 1);
    });
    wait_until(&app, "slow version refused", |m| {
        state_of(m, "ltv", ltv + 1).is_some_and(|(s, r)| {
            s == pb::VersionState::Failed as i32
                && r.contains("warm-up batch of 1024 rows")
                && r.contains("latency_budget_ms")
        })
    })
    .await;
    assert_eq!(default_of(&models(&app).await, "ltv"), ltv);
    app.stop().await.unwrap();
}

#[test]
fn models_validate_runs_the_breaking_change_check_like_the_server() {
    let dir = copy_models();
    let root = dir.path();
    let ltv = latest_version("ltv");
    drop_in(root, "ltv", ltv, ltv + 1, retype_frequency);
    let validate = |target: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_segscore"))
            .args(["models", "validate"])
            .arg(target)
            .output()
            .unwrap()
    };
    for target in [
        root.join("ltv").join((ltv + 1).to_string()),
        root.to_path_buf(),
    ] {
        let out = validate(&target);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{stdout}");
        assert!(
            stdout.contains("breaking change against version") && stdout.contains("frequency"),
            "{}: {stdout}",
            target.display()
        );
    }
    let ok = validate(&root.join("ltv").join(ltv.to_string()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_left_pointing_at_a_deleted_version_is_reported_not_silent() {
    let dir = copy_models();
    let root = dir.path().to_path_buf();
    // No watcher: each change is applied by an admin Reload (a synchronous
    // rescan), so every check below follows the event it is about.
    let app = spawn_app_with(&root, |a| {
        a.watch_interval_ms = 0;
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let churn = latest_version("churn");
    let reload = || async {
        let mut admin = app.admin().await;
        admin
            .reload(pb::ReloadRequest {})
            .await
            .unwrap()
            .into_inner()
            .models
    };
    let churn_info =
        |models: Vec<pb::ModelInfo>| models.into_iter().find(|m| m.name == "churn").unwrap();
    fs::write(root.join("churn/labels.toml"), "stable = 1\nvip = 1\n").unwrap();
    let info = churn_info(reload().await);
    assert_eq!(info.default_version, 1);
    assert!(info.label_warnings.is_empty(), "{:?}", info.label_warnings);

    fs::remove_dir_all(root.join("churn/1")).unwrap();
    let info = churn_info(reload().await);
    // Requests that pin nothing get the highest serving version, and the
    // model says why: the labels no longer apply.
    assert_eq!(info.default_version, churn);
    assert_eq!(info.label_warnings.len(), 2, "{:?}", info.label_warnings);
    let stable = info
        .label_warnings
        .iter()
        .find(|w| w.contains("`stable`"))
        .unwrap();
    assert!(
        stable.contains("version 1, which is not in the repository")
            && stable.contains(&format!("get version {churn}")),
        "{stable}"
    );
    let vip = info
        .label_warnings
        .iter()
        .find(|w| w.contains("`vip`"))
        .unwrap();
    assert!(vip.contains("requests naming `vip` fail"), "{vip}");
    let by_label = pb::ModelRef {
        name: "churn".into(),
        version: 0,
        label: "vip".into(),
    };
    let err = app
        .score(request(matrix(full_rows(1)), vec![by_label]))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    crate::metrics::wait_for_metric(
        app.metrics_addr.unwrap(),
        "segscore_dangling_labels{model=\"churn\"}",
        2.0,
    )
    .await;

    // Pointing the labels at a serving version clears the warnings.
    fs::write(
        root.join("churn/labels.toml"),
        format!("stable = {churn}\nvip = {churn}\n"),
    )
    .unwrap();
    let info = churn_info(reload().await);
    assert!(info.label_warnings.is_empty(), "{:?}", info.label_warnings);
    let (_, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(
        crate::metrics::sample(&text, "segscore_dangling_labels{model=\"churn\"}"),
        Some(0.0),
        "{text}"
    );
    app.stop().await.unwrap();
}
