//! Broken model versions are refused with a visible reason while every other
//! version keeps serving.

use std::{fs, path::Path};

use segscore::proto::pb;

use crate::helpers::*;

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(fs::read(path).unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_and_the_good_ones_serve() {
    let dir = copy_models();
    let root = dir.path();
    let churn_onnx = latest_version("churn");
    let ltv = latest_version("ltv");
    let propensity = latest_version("propensity");

    // Corrupt model file, with a manifest whose sha256 matches the damage, so
    // it is ONNX Runtime that refuses it.
    add_version(root, "churn", churn_onnx, 10, |d, m| {
        fs::write(d.join("model.onnx"), b"this is not an onnx graph").unwrap();
        let old = m
            .lines()
            .find(|l| l.starts_with("sha256"))
            .unwrap()
            .to_string();
        *m = m.replace(
            &old,
            &format!("sha256 = \"{}\"", sha256_hex(&d.join("model.onnx"))),
        );
    });
    // Wrong sha256.
    add_version(root, "ltv", ltv, 11, |_, m| {
        let old = m
            .lines()
            .find(|l| l.starts_with("sha256"))
            .unwrap()
            .to_string();
        *m = m.replace(&old, &format!("sha256 = \"{}\"", "0".repeat(64)));
    });
    // Schema mismatch: the manifest drops the last feature (region), so it
    // describes 11 inputs for a graph that takes 12.
    add_version(root, "propensity", propensity, 12, |_, m| {
        let start = m.rfind("[[features]]").unwrap();
        let end = m[start..].find("\n[").map_or(m.len(), |e| start + e + 1);
        m.replace_range(start..end, "");
    });
    // Golden set that the model does not reproduce.
    add_version(root, "churn", churn_onnx, 13, |d, _| {
        let golden = fs::read_to_string(d.join("golden.csv")).unwrap();
        let mut lines: Vec<String> = golden.lines().map(str::to_owned).collect();
        let cells: Vec<&str> = lines[1].rsplitn(2, ',').collect();
        let e: f64 = cells[0].parse().unwrap();
        let wrong = if e > 0.5 { e - 0.3 } else { e + 0.3 };
        lines[1] = format!("{},{wrong}", cells[1]);
        fs::write(d.join("golden.csv"), lines.join("\n") + "\n").unwrap();
    });
    // A half-copied version (no manifest yet) is not even a candidate.
    copy_dir(
        &root.join("ltv").join(ltv.to_string()),
        &root.join("ltv").join("20"),
    );
    fs::remove_file(root.join("ltv/20/model.toml")).unwrap();

    let app = spawn_app_with(root, |_| {}).await;
    let list = app
        .client
        .clone()
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap()
        .into_inner();
    let state = |name: &str, version: u64| {
        let m = list.models.iter().find(|m| m.name == name).unwrap();
        let v = m
            .versions
            .iter()
            .find(|v| v.version == version)
            .unwrap_or_else(|| panic!("{name} v{version} not listed"));
        (v.state, v.reason.clone(), m.default_version)
    };
    let failed = pb::VersionState::Failed as i32;
    let (s, reason, default) = state("churn", 10);
    assert_eq!(s, failed);
    assert!(reason.contains("ONNX Runtime"), "{reason}");
    assert_eq!(default, churn_onnx, "the previous version keeps serving");
    let (s, reason, default) = state("ltv", 11);
    assert_eq!(s, failed);
    assert!(reason.contains("sha256 mismatch"), "{reason}");
    assert_eq!(default, ltv);
    let (s, reason, _) = state("propensity", 12);
    assert_eq!(s, failed);
    assert!(
        reason.contains("do not match the manifest") && reason.contains("11"),
        "{reason}"
    );
    let (s, reason, _) = state("churn", 13);
    assert_eq!(s, failed);
    assert!(
        reason.contains("golden set") && reason.contains("row 0"),
        "{reason}"
    );
    let ltv_versions: Vec<u64> = list
        .models
        .iter()
        .find(|m| m.name == "ltv")
        .unwrap()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert!(
        !ltv_versions.contains(&20),
        "a version without a manifest is ignored: {ltv_versions:?}"
    );

    // Good versions serve; pinning a failed one says why.
    let resp = app
        .score(request(
            matrix(full_rows(3)),
            vec![model("churn", 0), model("ltv", 0), model("propensity", 0)],
        ))
        .await
        .unwrap();
    assert_eq!(
        resp.models.iter().map(|m| m.version).collect::<Vec<_>>(),
        vec![churn_onnx, ltv, propensity]
    );
    let status = app
        .score(request(matrix(full_rows(1)), vec![model("ltv", 11)]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(
        status.message().contains("not serving") && status.message().contains("sha256"),
        "{}",
        status.message()
    );
    app.stop().await.unwrap();

    // `segscore models validate` reaches the same verdicts.
    let bin = env!("CARGO_BIN_EXE_segscore");
    let out = std::process::Command::new(bin)
        .args(["models", "validate"])
        .arg(root)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("FAILED").count(), 4, "{stdout}");
    let good = std::process::Command::new(bin)
        .args(["models", "validate"])
        .arg(shipped_models())
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_reports_its_phases_and_list_models_shows_versions_in_it() {
    use segscore::{
        api::models::model_info,
        config::ServeArgs,
        repository::{load, Phase, Repository},
    };
    let engine = ServeArgs::for_models(shipped_models())
        .engine
        .engine_config();
    let phases = std::sync::Mutex::new(Vec::new());
    let dir = shipped_models()
        .join("churn")
        .join(latest_version("churn").to_string());
    let on_phase = |p: Phase| phases.lock().unwrap().push(p);
    let model = load::load(&dir, &engine, None, &on_phase).unwrap();
    assert_eq!(*phases.lock().unwrap(), [Phase::Loading, Phase::Validating]);
    assert!(model.golden.warmup_ms > 0.0, "{:?}", model.golden);

    // A version still in the gate is listed with its phase, beside the
    // versions of the snapshot; an unknown name in the gate is listed too.
    let repository = Repository::load(&shipped_models(), &engine).unwrap();
    repository
        .tracker()
        .set_phase("churn", 99, Some(Phase::Validating));
    repository
        .tracker()
        .set_phase("newcomer", 1, Some(Phase::Loading));
    let churn = model_info(&repository, "churn").unwrap();
    let v99 = churn.versions.iter().find(|v| v.version == 99).unwrap();
    assert_eq!(v99.state, pb::VersionState::Validating as i32);
    assert!(
        churn.default_version < 99,
        "a version in the gate never serves"
    );
    let newcomer = model_info(&repository, "newcomer").unwrap();
    assert_eq!(newcomer.versions[0].state, pb::VersionState::Loading as i32);
    assert_eq!(newcomer.default_version, 0);
    repository.tracker().set_phase("newcomer", 1, None);
    assert!(model_info(&repository, "newcomer").is_none());
}
