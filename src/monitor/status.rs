//! What the status page shows, gathered in one pass: every model and
//! version with its state, labels and model card figures, each serving
//! version's drift window, and every segment's window. Plain data, so the
//! page renders (and is tested) without a server.

use std::collections::BTreeMap;

use super::{segments::SegmentWindow, Monitor};
use crate::{
    drift::DriftWindow,
    repository::{Manifest, Repository, VersionStatus},
};

/// The page's data.
#[derive(Debug, Clone, Default)]
pub struct StatusSnapshot {
    pub models: Vec<ModelStatus>,
    pub segments: Vec<SegmentWindow>,
    /// Whether drift counting is on (`serve --drift`).
    pub drift_on: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ModelStatus {
    pub name: String,
    /// The version a request that pins none gets.
    pub default_version: Option<u64>,
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Clone, Default)]
pub struct VersionView {
    pub version: u64,
    /// `serving`, `retired` or `failed`.
    pub state: &'static str,
    /// Why a failed version was refused.
    pub reason: Option<String>,
    pub labels: Vec<String>,
    pub task: String,
    pub format: String,
    pub trained_at: Option<String>,
    /// `[card.metrics]`: name → value, as written.
    pub metrics: BTreeMap<String, String>,
    /// `[card.baselines]`: what the metrics are compared with.
    pub baselines: BTreeMap<String, String>,
    /// Serving versions with a reference, while drift counting is on.
    pub drift: Option<DriftWindow>,
}

/// The snapshot of `repository` and `monitor` now (the page's one call).
pub fn snapshot(repository: &Repository, monitor: &Monitor) -> StatusSnapshot {
    let models = repository
        .models()
        .iter()
        .map(|(name, entry)| ModelStatus {
            name: name.clone(),
            default_version: entry.default_version().map(|m| m.version()),
            versions: entry
                .versions
                .iter()
                .rev()
                .map(|(&version, status)| {
                    let (state, reason, manifest, drift) = match status {
                        VersionStatus::Serving(m) => (
                            "serving",
                            None,
                            Some(&m.manifest),
                            m.drift().filter(|_| monitor.drift()).map(|d| d.window()),
                        ),
                        VersionStatus::Retired { manifest } => {
                            ("retired", None, Some(&**manifest), None)
                        }
                        VersionStatus::Failed { reason, manifest } => {
                            ("failed", Some(reason.clone()), manifest.as_deref(), None)
                        }
                    };
                    let mut view = VersionView {
                        version,
                        state,
                        reason,
                        labels: entry.labels_of(version),
                        drift,
                        ..Default::default()
                    };
                    if let Some(m) = manifest {
                        card_into(m, &mut view);
                    }
                    view
                })
                .collect(),
        })
        .collect();
    StatusSnapshot {
        models,
        segments: monitor.segments.windows(),
        drift_on: monitor.drift(),
    }
}

fn card_into(manifest: &Manifest, view: &mut VersionView) {
    view.task = format!("{:?}", manifest.task);
    view.format = manifest.format.as_str().to_owned();
    view.trained_at = manifest
        .card
        .get("trained_at")
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned));
    let table = |key: &str| -> BTreeMap<String, String> {
        manifest
            .card
            .get(key)
            .and_then(|t| t.as_table())
            .map(|t| {
                t.iter()
                    .filter(|(_, v)| !v.is_table() && !v.is_array())
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    view.metrics = table("metrics");
    view.baselines = table("baselines");
}
