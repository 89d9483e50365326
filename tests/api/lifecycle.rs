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

use segscore::api::pb::{self, model_admin_client::ModelAdminClient};
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
    let mut admin = ModelAdminClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
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

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "failed requests during swaps: {:?}",
        errors.lock().unwrap().first()
    );
    assert!(ok > 20, "the load generator barely ran ({ok} requests)");
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fs::copy(src.join("golden.csv"), dst.join("golden.csv")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = models(&app).await;
    assert!(
        state_of(&before, "ltv", ltv + 1).is_none(),
        "a version without a manifest was considered"
    );
    assert_eq!(default_of(&before, "ltv"), ltv);
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

    let mut admin = ModelAdminClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let bad = admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "stable".into(),
            version: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::FailedPrecondition, "{}", bad.message());
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
    // Same model, but `frequency` now declared f32: a dtype change that
    // callers of the previous version did not sign up for.
    let retype = |m: &mut String| {
        let at = m.find("name = \"frequency\"").unwrap();
        let dtype = at + m[at..].find("dtype = \"i64\"").unwrap();
        m.replace_range(dtype..dtype + "dtype = \"i64\"".len(), "dtype = \"f32\"");
    };
    drop_in(&root, "ltv", ltv, ltv + 1, retype);
    wait_until(&app, "breaking version refused", |m| {
        state_of(m, "ltv", ltv + 1)
            .is_some_and(|(_, r)| r.contains("breaking change") && r.contains("frequency"))
    })
    .await;
    assert_eq!(default_of(&models(&app).await, "ltv"), ltv);
    drop_in(&root, "ltv", ltv, ltv + 2, |m| {
        retype(m);
        // Top-level key: before the first table of the manifest.
        *m = m.replacen("[[features]]", "breaking_change = true\n\n[[features]]", 1);
    });
    wait_until(&app, "declared breaking version serves", |m| {
        default_of(m, "ltv") == ltv + 2
    })
    .await;
    app.stop().await.unwrap();
}
