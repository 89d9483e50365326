//! What ListModels and GetModel report: the repository's versions, plus those
//! in the validation gate or draining, as segscore.v1 `ModelInfo`.

use std::collections::{BTreeMap, BTreeSet};

use crate::{
    proto::pb,
    repository::{ModelEntry, Phase, Repository, VersionStatus},
};

/// Every model ListModels reports: the repository's, plus names that only
/// have versions in the gate or draining.
pub fn model_infos(repository: &Repository) -> Vec<pb::ModelInfo> {
    let transient = Transient::of(repository);
    let mut names: BTreeSet<&str> = repository.models().keys().map(String::as_str).collect();
    names.extend(transient.gate.iter().map(|(n, _, _)| n.as_str()));
    names.extend(transient.draining.iter().map(|(n, _)| n.as_str()));
    names
        .into_iter()
        .filter_map(|n| info_of(repository, n, &transient))
        .collect()
}

/// The tracker's view, read once per ListModels.
struct Transient {
    gate: Vec<(String, u64, Phase)>,
    draining: Vec<(String, u64)>,
}

impl Transient {
    fn of(repository: &Repository) -> Self {
        Self {
            gate: repository.tracker().in_gate(),
            draining: repository.tracker().draining(),
        }
    }
}

/// One model's versions as ListModels/GetModel report them: the snapshot's
/// versions, those still in the validation gate (LOADING, VALIDATING) and
/// those that left it but finish in-flight requests (DRAINING).
pub fn model_info(repository: &Repository, name: &str) -> Option<pb::ModelInfo> {
    info_of(repository, name, &Transient::of(repository))
}

fn info_of(repository: &Repository, name: &str, transient: &Transient) -> Option<pb::ModelInfo> {
    let empty = ModelEntry::default();
    let entry = repository.models().get(name);
    let gate: Vec<(u64, pb::VersionState)> = transient
        .gate
        .iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, v, phase)| {
            let state = match phase {
                Phase::Loading => pb::VersionState::Loading,
                Phase::Validating => pb::VersionState::Validating,
            };
            (*v, state)
        })
        .collect();
    let draining: Vec<u64> = transient
        .draining
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| *v)
        .collect();
    if entry.is_none() && gate.is_empty() && draining.is_empty() {
        return None;
    }
    let entry = entry.unwrap_or(&empty);
    let mut versions: BTreeMap<u64, pb::ModelVersionInfo> = entry
        .versions
        .iter()
        .map(|(&version, status)| {
            let (state, reason, manifest) = match status {
                VersionStatus::Serving(m) => {
                    (pb::VersionState::Serving, String::new(), Some(&m.manifest))
                }
                VersionStatus::Retired { manifest } => (
                    pb::VersionState::Retired,
                    String::new(),
                    Some(manifest.as_ref()),
                ),
                VersionStatus::Failed { reason, manifest } => (
                    pb::VersionState::Failed,
                    reason.clone(),
                    manifest.as_deref(),
                ),
            };
            let mut info = pb::ModelVersionInfo {
                version,
                state: state.into(),
                reason,
                labels: entry.labels_of(version),
                ..Default::default()
            };
            if let Some(m) = manifest {
                info.format = m.format.as_str().into();
                info.task = pb::Task::from(m.task).into();
                info.sha256 = m.sha256.clone();
                info.features = m.features.iter().map(Into::into).collect();
                info.card_json = serde_json::to_string(&m.card).unwrap_or_default();
            }
            (version, info)
        })
        .collect();
    // A version being (re)loaded or draining is reported as such unless the
    // snapshot serves it (a reload of a serving version keeps serving until
    // the new copy passes; a replaced copy drains behind the serving one).
    let transient = gate.into_iter().chain(
        draining
            .into_iter()
            .map(|v| (v, pb::VersionState::Draining)),
    );
    for (version, state) in transient {
        let serving = matches!(
            entry.versions.get(&version),
            Some(VersionStatus::Serving(_))
        );
        if !serving {
            let info = versions
                .entry(version)
                .or_insert_with(|| pb::ModelVersionInfo {
                    version,
                    ..Default::default()
                });
            info.state = state.into();
        }
    }
    Some(pb::ModelInfo {
        name: name.into(),
        default_version: entry.default_version().map_or(0, |m| m.version()),
        versions: versions.into_values().collect(),
        labels: entry.routing.labels.clone().into_iter().collect(),
        loads_succeeded: entry.loads_succeeded,
        loads_failed: entry.loads_failed,
        canary_percent: entry.routing.canary().map_or(0.0, |(_, p)| p),
        label_warnings: entry
            .dangling_labels()
            .into_iter()
            .map(|(_, warning)| warning)
            .collect(),
    })
}
