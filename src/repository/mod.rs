//! The model repository: `models/<name>/<version>/` scanned at start-up, each
//! version validated (see [`load`]) and either serving or failed with a reason
//! that ListModels shows. A failed version never takes down its neighbours.

pub mod files;
pub mod import;
pub mod lifecycle;
pub mod load;
pub mod manifest;
pub mod reference;
pub mod routing;
pub mod tracker;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::{info, warn};

use crate::echo::echo;

pub use load::{EngineConfig, LoadError, LoadedModel, ModelOutput, Phase};
pub use manifest::{Format, Manifest, Task, MANIFEST_FILE};
pub use routing::{Routing, CANARY_LABEL, DEFAULT_LABEL, LABELS_FILE};
pub use tracker::Tracker;

/// The state of one version directory.
#[derive(Clone)]
pub enum VersionStatus {
    Serving(Arc<LoadedModel>),
    /// Passed validation but unloaded to free its workers: older than the
    /// `keep_versions` kept for rollback. A label or rollback pointing at it
    /// loads it again.
    Retired {
        manifest: Box<Manifest>,
    },
    /// Refused, with the reason; the manifest is kept when it parsed, so
    /// GetModel can still show what the version claims to be.
    Failed {
        reason: String,
        manifest: Option<Box<Manifest>>,
    },
}

/// All versions of one model name.
#[derive(Default, Clone)]
pub struct ModelEntry {
    pub versions: BTreeMap<u64, VersionStatus>,
    /// Each version directory's file listing when it was loaded: any change
    /// triggers a reload.
    fingerprints: BTreeMap<u64, String>,
    /// From models/<name>/labels.toml.
    pub routing: Routing,
    pub loads_succeeded: u64,
    pub loads_failed: u64,
}

/// A model reference resolved for one request: the version to serve and, for
/// requests that pin nothing while a canary split is on, the canary version
/// and the percent of entities it takes.
pub struct Route {
    pub primary: Arc<LoadedModel>,
    pub canary: Option<(Arc<LoadedModel>, f64)>,
}

impl ModelEntry {
    /// The version a request that pins none gets: the `stable` label if it
    /// points at a serving version, else the highest serving one.
    pub fn default_version(&self) -> Option<&Arc<LoadedModel>> {
        self.routing
            .labels
            .get(DEFAULT_LABEL)
            .and_then(|v| self.serving(*v))
            .or_else(|| {
                self.versions.values().rev().find_map(|v| match v {
                    VersionStatus::Serving(m) => Some(m),
                    _ => None,
                })
            })
    }

    pub fn serving(&self, version: u64) -> Option<&Arc<LoadedModel>> {
        match self.versions.get(&version) {
            Some(VersionStatus::Serving(m)) => Some(m),
            _ => None,
        }
    }

    /// Labels that point at no serving version (deleted, failed, or not
    /// written yet), each with a sentence saying so and what requests get
    /// instead. A request naming such a label fails; one that pins nothing
    /// falls back to the highest serving version when it is `stable`. Both
    /// are reported (log, GetModel, a gauge), never silent.
    pub fn dangling_labels(&self) -> Vec<(String, String)> {
        let fallback = self.default_version().map(|m| m.version());
        self.routing
            .labels
            .iter()
            .filter(|(_, v)| self.serving(**v).is_none())
            .map(|(label, &version)| {
                let why = match self.versions.get(&version) {
                    None => "which is not in the repository (deleted, or not written yet)",
                    Some(VersionStatus::Failed { .. }) => "which failed validation",
                    Some(_) => "which is not serving",
                };
                let instead = match (label.as_str(), fallback) {
                    (DEFAULT_LABEL, Some(v)) => {
                        format!("requests that pin no version get version {v}, the highest serving")
                    }
                    (DEFAULT_LABEL, None) => "no version is serving".to_string(),
                    _ => format!("requests naming `{label}` fail"),
                };
                (
                    label.clone(),
                    format!("label `{label}` points at version {version}, {why}: {instead}"),
                )
            })
            .collect()
    }

    /// Labels pointing at `version`, for ListModels.
    pub fn labels_of(&self, version: u64) -> Vec<String> {
        self.routing
            .labels
            .iter()
            .filter(|(_, v)| **v == version)
            .map(|(l, _)| l.clone())
            .collect()
    }
}

/// Why a lifecycle command was refused.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("model `{}` not found", echo(.0))]
    UnknownModel(String),
    #[error("model `{}` has no version {version}", echo(.name))]
    UnknownVersion { name: String, version: u64 },
    #[error("model `{}` version {version} is not serving, so no label can point at it", echo(.name))]
    NotServing { name: String, version: u64 },
    #[error("model `{}` version {version} could not be loaded again: {reason}", echo(.name))]
    Reload {
        name: String,
        version: u64,
        reason: String,
    },
    #[error("model `{}` has no serving version older than {current} to roll back to", echo(.name))]
    NothingToRollBackTo { name: String, current: u64 },
    #[error("label `{}` is not a valid name (letters, digits, `_`, `-`)", echo(.0))]
    BadLabel(String),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a model reference does not resolve to a serving version.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ResolveError {
    #[error("model `{}` not found", echo(.0))]
    UnknownModel(String),
    #[error("model `{}` has no version {version}", echo(.name))]
    UnknownVersion { name: String, version: u64 },
    #[error("model `{}` version {version} is not serving: {reason}", echo(.name))]
    NotServing {
        name: String,
        version: u64,
        reason: String,
    },
    #[error("model `{}` has no serving version", echo(.0))]
    NoServingVersion(String),
    #[error("model `{}` has no label `{}`", echo(.name), echo(.label))]
    UnknownLabel { name: String, label: String },
}

/// Every model found under the repository root. Immutable: a reload builds a
/// new `Repository` and swaps it into [`SharedRepository`], so scoring never
/// waits on a load and in-flight requests finish on the versions they resolved.
#[derive(Clone)]
pub struct Repository {
    root: PathBuf,
    config: EngineConfig,
    models: BTreeMap<String, ModelEntry>,
    /// Models unloaded on request: the watcher leaves them out until an
    /// explicit load brings them back.
    unloaded: BTreeSet<String>,
    /// Gate phases and draining versions, shared by every snapshot.
    tracker: Arc<Tracker>,
}

/// The repository as the services see it: swapped atomically on reloads.
pub type SharedRepository = Arc<arc_swap::ArcSwap<Repository>>;

impl Repository {
    /// Scans `root` and loads every version that has a manifest. Only an
    /// unreadable root is an error; bad versions are recorded as failed.
    pub fn load(root: &Path, config: &EngineConfig) -> std::io::Result<Self> {
        let empty = Self {
            root: root.to_path_buf(),
            config: config.clone(),
            models: BTreeMap::new(),
            unloaded: BTreeSet::new(),
            tracker: Arc::default(),
        };
        // Nothing found leaves it empty, which is valid: models may arrive.
        Ok(match empty.reconcile()? {
            Some(loaded) => loaded,
            None => empty,
        })
    }

    /// Brings the repository in line with the directory: loads new or
    /// rewritten versions (only complete ones: the manifest is written last),
    /// drops removed ones (they drain: in-flight requests hold them), re-reads
    /// labels. Returns the new repository, or None if nothing changed.
    /// Blocking (validation runs models): call it off the async threads.
    pub fn reconcile(&self) -> std::io::Result<Option<Self>> {
        let found = scan(&self.root)?;
        let mut next = self.clone();
        let mut changed = false;
        for (name, versions) in &found {
            if self.unloaded.contains(name) {
                continue;
            }
            let entry = next.models.entry(name.clone()).or_default();
            for (&version, dir) in versions {
                let fingerprint = directory_fingerprint(dir);
                if entry.fingerprints.get(&version) == Some(&fingerprint) {
                    continue;
                }
                changed = true;
                load_version_into(entry, name, version, dir, &self.config, &self.tracker);
                entry.fingerprints.insert(version, fingerprint);
            }
            let gone: Vec<u64> = entry
                .versions
                .keys()
                .filter(|v| !versions.contains_key(v))
                .copied()
                .collect();
            for version in gone {
                changed = true;
                if let Some(VersionStatus::Serving(m)) = entry.versions.remove(&version) {
                    self.tracker.drain(&m);
                }
                entry.fingerprints.remove(&version);
                info!(model = %name, version, "model version removed: draining in-flight requests");
            }
            let routing = routing::read(&self.root.join(name).join(LABELS_FILE), name)
                .unwrap_or_else(|| entry.routing.clone());
            if routing != entry.routing {
                changed = true;
                info!(model = %name, labels = ?routing.labels, canary_percent = ?routing.canary_percent, "labels changed");
                entry.routing = routing;
            }
            changed |= retire_old_versions(entry, name, self.config.keep_versions, &self.tracker);
            // A label whose version went away (or never came) no longer
            // applies: say so once, when it starts dangling.
            let before = self.models.get(name).map(ModelEntry::dangling_labels);
            for (label, warning) in entry.dangling_labels() {
                let known = before
                    .as_ref()
                    .is_some_and(|b| b.iter().any(|(l, w)| *l == label && *w == warning));
                if !known {
                    warn!(model = %name, label = %label, "{warning}");
                }
            }
        }
        let removed: Vec<String> = next
            .models
            .keys()
            .filter(|n| !found.contains_key(*n))
            .cloned()
            .collect();
        for name in removed {
            changed = true;
            if let Some(entry) = next.models.remove(&name) {
                self.drain_all(&entry);
            }
            info!(model = %name, "model removed from the repository");
        }
        Ok(changed.then_some(next))
    }

    /// A copy of this repository with `name` loaded afresh from disk (every
    /// version re-validated). Blocking: run it off the async threads.
    pub fn with_model_reloaded(&self, name: &str) -> std::io::Result<Result<Self, ResolveError>> {
        let mut found = scan(&self.root)?;
        let Some(versions) = found.remove(name) else {
            return Ok(Err(ResolveError::UnknownModel(name.into())));
        };
        let mut next = self.clone();
        next.unloaded.remove(name);
        let mut entry = ModelEntry {
            routing: routing::read(&self.root.join(name).join(LABELS_FILE), name)
                .unwrap_or_default(),
            ..Default::default()
        };
        if let Some(old) = self.models.get(name) {
            entry.loads_succeeded = old.loads_succeeded;
            entry.loads_failed = old.loads_failed;
            self.drain_all(old);
        }
        for (version, dir) in versions {
            let fingerprint = directory_fingerprint(&dir);
            load_version_into(&mut entry, name, version, &dir, &self.config, &self.tracker);
            entry.fingerprints.insert(version, fingerprint);
        }
        retire_old_versions(&mut entry, name, self.config.keep_versions, &self.tracker);
        next.models.insert(name.into(), entry);
        Ok(Ok(next))
    }

    /// A copy of this repository without `name`; its versions drain and stop
    /// once in-flight requests finish, and the watcher leaves it out.
    pub fn without_model(&self, name: &str) -> Result<Self, ResolveError> {
        let mut next = self.clone();
        let entry = next
            .models
            .remove(name)
            .ok_or_else(|| ResolveError::UnknownModel(name.into()))?;
        self.drain_all(&entry);
        next.unloaded.insert(name.into());
        info!(model = %name, "model unloaded");
        Ok(next)
    }

    /// Points `label` at `version`, persisting labels.toml (a canary split
    /// keeps its percent). A retired version is loaded and validated again
    /// first. Blocking: run it off the async threads.
    pub fn with_label(
        &self,
        name: &str,
        label: &str,
        version: u64,
    ) -> Result<Self, LifecycleError> {
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(LifecycleError::BadLabel(label.into()));
        }
        let mut next = self.clone();
        let entry = next
            .models
            .get_mut(name)
            .ok_or_else(|| LifecycleError::UnknownModel(name.into()))?;
        match entry.versions.get(&version) {
            Some(VersionStatus::Serving(_)) => {}
            Some(VersionStatus::Retired { .. }) => {
                let dir = self.root.join(name).join(version.to_string());
                load_version_into(entry, name, version, &dir, &self.config, &self.tracker);
                if let Some(VersionStatus::Failed { reason, .. }) = entry.versions.get(&version) {
                    return Err(LifecycleError::Reload {
                        name: name.into(),
                        version,
                        reason: reason.clone(),
                    });
                }
            }
            // A version that does not exist is unknown (NOT_FOUND); one that
            // exists but failed or is loading is not servable yet.
            None => {
                return Err(LifecycleError::UnknownVersion {
                    name: name.into(),
                    version,
                })
            }
            Some(_) => {
                return Err(LifecycleError::NotServing {
                    name: name.into(),
                    version,
                })
            }
        }
        let mut routing = entry.routing.clone();
        routing.labels.insert(label.into(), version);
        routing::write(&self.root.join(name).join(LABELS_FILE), &routing)?;
        entry.routing = routing;
        retire_old_versions(entry, name, self.config.keep_versions, &self.tracker);
        info!(model = %name, label, version, "label set");
        Ok(next)
    }

    /// Points `stable` at the highest valid version below the current
    /// default (loading it again if it was retired). Returns (from, to,
    /// repository). Blocking: run it off the async threads.
    pub fn rolled_back(&self, name: &str) -> Result<(u64, u64, Self), LifecycleError> {
        let entry = self
            .models
            .get(name)
            .ok_or_else(|| LifecycleError::UnknownModel(name.into()))?;
        let current = entry.default_version().map_or(0, |m| m.version());
        let previous = entry
            .versions
            .range(..current)
            .rev()
            .find_map(|(v, s)| {
                matches!(s, VersionStatus::Serving(_) | VersionStatus::Retired { .. }).then_some(*v)
            })
            .ok_or(LifecycleError::NothingToRollBackTo {
                name: name.into(),
                current,
            })?;
        let next = self.with_label(name, DEFAULT_LABEL, previous)?;
        info!(model = %name, from = current, to = previous, "rolled back");
        Ok((current, previous, next))
    }

    /// Marks every loaded version of `entry` as draining (it left the repository).
    fn drain_all(&self, entry: &ModelEntry) {
        for status in entry.versions.values() {
            if let VersionStatus::Serving(m) = status {
                self.tracker.drain(m);
            }
        }
    }

    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models(&self) -> &BTreeMap<String, ModelEntry> {
        &self.models
    }

    /// Models unloaded on request (RepositoryModelUnload), until loaded again.
    pub fn unloaded(&self) -> &BTreeSet<String> {
        &self.unloaded
    }

    /// Finds the version to serve for `name`: `version` (0 = default) or `label`.
    pub fn resolve(
        &self,
        name: &str,
        version: u64,
        label: &str,
    ) -> Result<Arc<LoadedModel>, ResolveError> {
        let entry = self
            .models
            .get(name)
            .ok_or_else(|| ResolveError::UnknownModel(name.into()))?;
        if !label.is_empty() {
            let version =
                *entry
                    .routing
                    .labels
                    .get(label)
                    .ok_or_else(|| ResolveError::UnknownLabel {
                        name: name.into(),
                        label: label.into(),
                    })?;
            return self.resolve(name, version, "");
        }
        if version == 0 {
            return entry
                .default_version()
                .cloned()
                .ok_or_else(|| ResolveError::NoServingVersion(name.into()));
        }
        match entry.versions.get(&version) {
            Some(VersionStatus::Serving(m)) => Ok(m.clone()),
            Some(VersionStatus::Failed { reason, .. }) => Err(ResolveError::NotServing {
                name: name.into(),
                version,
                reason: reason.clone(),
            }),
            Some(VersionStatus::Retired { .. }) => Err(ResolveError::NotServing {
                name: name.into(),
                version,
                reason: format!(
                    "retired (older than the {} versions kept loaded; set a label on it or roll back to load it again)",
                    self.config.keep_versions
                ),
            }),
            None => Err(ResolveError::UnknownVersion {
                name: name.into(),
                version,
            }),
        }
    }

    /// Like [`resolve`](Self::resolve), plus the canary split that applies
    /// to requests pinning neither a version nor a label.
    pub fn route(&self, name: &str, version: u64, label: &str) -> Result<Route, ResolveError> {
        let primary = self.resolve(name, version, label)?;
        let canary = (version == 0 && label.is_empty())
            .then(|| {
                let entry = self.models.get(name)?;
                let (canary_version, percent) = entry.routing.canary()?;
                let canary = entry.serving(canary_version)?;
                (canary_version != primary.version()).then(|| (canary.clone(), percent))
            })
            .flatten();
        Ok(Route { primary, canary })
    }

    /// Names of the models that have a serving version.
    pub fn serving_names(&self) -> Vec<String> {
        self.models
            .iter()
            .filter(|(_, e)| e.default_version().is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Validates one version and records the outcome (and a log line) in `entry`;
/// a version it replaces drains.
fn load_version_into(
    entry: &mut ModelEntry,
    name: &str,
    version: u64,
    dir: &Path,
    config: &EngineConfig,
    tracker: &Tracker,
) {
    // The breaking-change check compares with the version this one follows.
    let previous = entry
        .versions
        .range(..version)
        .rev()
        .find_map(|(_, s)| match s {
            VersionStatus::Serving(m) => Some(m.manifest.clone()),
            VersionStatus::Retired { manifest } => Some((**manifest).clone()),
            VersionStatus::Failed { .. } => None,
        });
    let on_phase = |phase| tracker.set_phase(name, version, Some(phase));
    let loaded = load::load(dir, config, previous.as_ref(), &on_phase);
    tracker.set_phase(name, version, None);
    let status = match loaded {
        Ok(model) => {
            entry.loads_succeeded += 1;
            info!(
                model = %name, version, format = model.manifest.format.as_str(),
                golden_rows = model.golden.rows, golden_max_abs_diff = model.golden.max_abs_diff,
                warmup_ms = model.golden.warmup_ms,
                "model version serving"
            );
            VersionStatus::Serving(model)
        }
        Err(e) => {
            let reason = e.to_string();
            entry.loads_failed += 1;
            warn!(model = %name, version, %reason, "model version refused");
            let manifest = Manifest::read(&dir.join(MANIFEST_FILE)).ok().map(Box::new);
            VersionStatus::Failed { reason, manifest }
        }
    };
    if let Some(VersionStatus::Serving(old)) = entry.versions.insert(version, status) {
        tracker.drain(&old);
    }
}

/// Unloads serving versions older than the default beyond the `keep` most
/// recent ones, unless a label points at them. Returns true if any was retired.
fn retire_old_versions(entry: &mut ModelEntry, name: &str, keep: usize, tracker: &Tracker) -> bool {
    let Some(default) = entry.default_version().map(|m| m.version()) else {
        return false;
    };
    let retire: Vec<u64> = entry
        .versions
        .range(..default)
        .rev()
        .filter(|(_, s)| matches!(s, VersionStatus::Serving(_)))
        .map(|(v, _)| *v)
        .skip(keep)
        .filter(|v| !entry.routing.labels.values().any(|l| l == v))
        .collect();
    for version in &retire {
        let Some(VersionStatus::Serving(model)) = entry.versions.remove(version) else {
            continue;
        };
        tracker.drain(&model);
        entry.versions.insert(
            *version,
            VersionStatus::Retired {
                manifest: Box::new(model.manifest.clone()),
            },
        );
        info!(model = %name, version, keep, default, "model version retired: older than the versions kept loaded; unloading once drained");
    }
    !retire.is_empty()
}

/// What a version directory looks like now: every file's name, size and
/// modification time. A version whose files change after it was loaded (a
/// copy that wrote the manifest before the model, a replaced file) is loaded
/// again on the next scan.
fn directory_fingerprint(dir: &Path) -> String {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            let modified = meta
                .modified()
                .ok()?
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_nanos();
            Some(format!(
                "{}:{}:{modified}",
                e.file_name().to_string_lossy(),
                meta.len()
            ))
        })
        .collect();
    files.sort();
    files.join("|")
}

/// Lists `root/<name>/<version>/` directories that hold a manifest. Other
/// entries (files, non-numeric or half-copied directories) are skipped.
pub fn scan(root: &Path) -> std::io::Result<BTreeMap<String, BTreeMap<u64, PathBuf>>> {
    let mut found = BTreeMap::new();
    for model in std::fs::read_dir(root)? {
        let model = model?;
        let Some(name) = model.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !model.file_type()?.is_dir() || name.starts_with('.') {
            continue;
        }
        // An unreadable directory (ext4's lost+found on a mounted volume) is
        // not a model: skip it rather than refuse the whole repository.
        let entries = match std::fs::read_dir(model.path()) {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %model.path().display(), error = %e, "skipping an unreadable directory in the model repository");
                continue;
            }
        };
        let mut versions = BTreeMap::new();
        for version in entries {
            let version = version?;
            let parsed = version
                .file_name()
                .to_str()
                .and_then(|v| v.parse::<u64>().ok());
            match parsed {
                Some(v) if v > 0 && version.path().join(MANIFEST_FILE).is_file() => {
                    versions.insert(v, version.path());
                }
                _ => {}
            }
        }
        if !versions.is_empty() {
            found.insert(name, versions);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    //! Scanning a repository directory, labels.toml, and keep-N retirement,
    //! on temp copies of the shipped smartcore churn model (it loads without
    //! ONNX Runtime, so these run wherever the unit tests do).

    use std::{fs, time::Duration};

    use super::*;
    use crate::engine::BatcherConfig;

    const SHIPPED_CHURN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/churn/1");

    /// Adds `root/churn/<version>/` as a copy of the shipped churn v1 with
    /// its manifest renumbered (the directory and the manifest must agree).
    fn add_churn(root: &Path, version: u64) -> PathBuf {
        let dir = root.join("churn").join(version.to_string());
        fs::create_dir_all(&dir).unwrap();
        for file in fs::read_dir(SHIPPED_CHURN).unwrap() {
            let file = file.unwrap();
            fs::copy(file.path(), dir.join(file.file_name())).unwrap();
        }
        let manifest = fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(
            manifest.contains("\nversion = 1\n"),
            "the shipped manifest changed"
        );
        let manifest = manifest.replace("\nversion = 1\n", &format!("\nversion = {version}\n"));
        fs::write(dir.join(MANIFEST_FILE), manifest).unwrap();
        dir
    }

    fn churn_repository(versions: &[u64]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for &version in versions {
            add_churn(root.path(), version);
        }
        root
    }

    fn write_labels(root: &Path, text: &str) {
        fs::write(root.join("churn").join(LABELS_FILE), text).unwrap();
    }

    fn config(keep_versions: usize) -> EngineConfig {
        EngineConfig {
            workers: 1,
            intra_threads: 1,
            batcher: BatcherConfig {
                max_batch_rows: 64,
                max_queue_delay: Duration::ZERO,
                queue_capacity: 16,
                batching: true,
            },
            ort_dylib_path: None,
            // The warm-up budget is a gate on slow models, not what these
            // tests are about: generous, so a busy machine refuses nothing.
            latency_budget: Duration::from_secs(600),
            keep_versions,
            max_model_bytes: files::DEFAULT_MAX_MODEL_BYTES,
            metrics: None,
            drift_window: Default::default(),
            backend_wrapper: None,
        }
    }

    /// Each churn version's state: "serving", "retired" or the failure reason.
    fn states(repository: &Repository) -> Vec<(u64, String)> {
        repository.models()["churn"]
            .versions
            .iter()
            .map(|(v, s)| {
                let state = match s {
                    VersionStatus::Serving(_) => "serving".to_string(),
                    VersionStatus::Retired { .. } => "retired".to_string(),
                    VersionStatus::Failed { reason, .. } => reason.clone(),
                };
                (*v, state)
            })
            .collect()
    }

    fn serving(versions: &[u64]) -> Vec<(u64, String)> {
        versions
            .iter()
            .map(|v| (*v, "serving".to_string()))
            .collect()
    }

    #[test]
    fn scan_lists_numbered_version_directories_with_a_manifest() {
        let root = churn_repository(&[1, 2]);
        let churn = root.path().join("churn");
        // Not versions: zero, not a number, half-copied (no manifest yet), a file.
        for skipped in ["0", "abc", "-3"] {
            fs::create_dir(churn.join(skipped)).unwrap();
            fs::copy(
                churn.join("1").join(MANIFEST_FILE),
                churn.join(skipped).join(MANIFEST_FILE),
            )
            .unwrap();
        }
        fs::create_dir(churn.join("3")).unwrap();
        fs::write(churn.join("4"), "a file, not a directory").unwrap();
        // Not models: a hidden directory, a file, a directory without versions.
        fs::create_dir_all(root.path().join(".trash/1")).unwrap();
        fs::copy(
            churn.join("1").join(MANIFEST_FILE),
            root.path().join(".trash/1").join(MANIFEST_FILE),
        )
        .unwrap();
        fs::write(root.path().join("README"), "not a model").unwrap();
        fs::create_dir(root.path().join("empty")).unwrap();

        let found = scan(root.path()).unwrap();
        let want: BTreeMap<String, BTreeMap<u64, PathBuf>> = [(
            "churn".to_string(),
            [(1, churn.join("1")), (2, churn.join("2"))].into(),
        )]
        .into();
        assert_eq!(found, want);
    }

    #[test]
    fn scan_of_a_missing_root_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = scan(&root.path().join("nowhere")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_bad_version_is_refused_with_its_reason_and_its_neighbours_serve() {
        let root = churn_repository(&[1]);
        // The manifest claims another version than its directory.
        let misnumbered = add_churn(root.path(), 2);
        let text = fs::read_to_string(misnumbered.join(MANIFEST_FILE)).unwrap();
        fs::write(
            misnumbered.join(MANIFEST_FILE),
            text.replace("\nversion = 2\n", "\nversion = 7\n"),
        )
        .unwrap();
        // The model file is not the one the manifest's sha256 names.
        let tampered = add_churn(root.path(), 3);
        fs::write(tampered.join("model.smartcore.json"), "{}").unwrap();
        // The manifest does not parse.
        let broken = add_churn(root.path(), 4);
        fs::write(broken.join(MANIFEST_FILE), "name = \"churn\"\nversion = ").unwrap();

        let repository = Repository::load(root.path(), &config(2)).unwrap();
        let states = states(&repository);
        assert_eq!(states[0], (1, "serving".to_string()));
        assert_eq!(
            states[1],
            (
                2,
                "manifest says version = `7` but the directory says `2`".to_string()
            )
        );
        assert!(
            states[2].1.starts_with("sha256 mismatch for "),
            "{:?}",
            states[2]
        );
        assert!(states[3].1.starts_with("manifest: "), "{:?}", states[3]);
        let entry = &repository.models()["churn"];
        assert_eq!((entry.loads_succeeded, entry.loads_failed), (1, 3));
        // A misnumbered manifest still parses, so GetModel can show it.
        assert!(matches!(
            &entry.versions[&2],
            VersionStatus::Failed { manifest: Some(m), .. } if m.version == 7
        ));
        // Requests that pin nothing get the good version; pinning a bad one
        // says why it is not serving.
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 1);
        match repository.resolve("churn", 2, "") {
            Err(ResolveError::NotServing {
                version, reason, ..
            }) => {
                assert_eq!(version, 2);
                assert_eq!(reason, states[1].1);
            }
            other => panic!("{:?}", other.map(|m| m.version())),
        }
    }

    #[tokio::test]
    async fn labels_choose_the_default_and_a_label_to_a_missing_version_dangles() {
        let root = churn_repository(&[1, 2]);
        write_labels(root.path(), "stable = 1\nbeta = 7\n");
        let repository = Repository::load(root.path(), &config(2)).unwrap();
        let entry = &repository.models()["churn"];
        assert_eq!(
            entry.routing.labels,
            [("beta".into(), 7), ("stable".into(), 1)].into()
        );
        assert_eq!(entry.labels_of(1), ["stable"]);
        assert!(entry.labels_of(2).is_empty());
        // `stable` wins over the highest version.
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 1);
        assert_eq!(
            repository.resolve("churn", 0, "stable").unwrap().version(),
            1
        );
        assert_eq!(
            entry.dangling_labels(),
            [(
                "beta".to_string(),
                "label `beta` points at version 7, which is not in the repository (deleted, or \
                 not written yet): requests naming `beta` fail"
                    .to_string()
            )]
        );
        assert_eq!(
            repository.resolve("churn", 0, "beta").map(|m| m.version()),
            Err(ResolveError::UnknownVersion {
                name: "churn".into(),
                version: 7
            })
        );
        assert_eq!(
            repository.resolve("churn", 0, "gamma").map(|m| m.version()),
            Err(ResolveError::UnknownLabel {
                name: "churn".into(),
                label: "gamma".into()
            })
        );
    }

    #[tokio::test]
    async fn a_dangling_stable_label_falls_back_to_the_highest_serving_version() {
        let root = churn_repository(&[1, 2]);
        write_labels(root.path(), "stable = 9\n");
        let repository = Repository::load(root.path(), &config(2)).unwrap();
        let entry = &repository.models()["churn"];
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 2);
        assert_eq!(
            entry.dangling_labels(),
            [(
                "stable".to_string(),
                "label `stable` points at version 9, which is not in the repository (deleted, \
                 or not written yet): requests that pin no version get version 2, the highest \
                 serving"
                    .to_string()
            )]
        );
    }

    #[tokio::test]
    async fn a_malformed_labels_file_is_ignored_and_the_last_good_labels_kept() {
        let root = churn_repository(&[1, 2]);
        write_labels(root.path(), "stable = 0\n");
        let repository = Repository::load(root.path(), &config(2)).unwrap();
        assert!(repository.models()["churn"].routing.labels.is_empty());
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 2);

        write_labels(root.path(), "stable = 1\n");
        let repository = repository.reconcile().unwrap().expect("the labels changed");
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 1);
        // A bad edit keeps what served before rather than dropping the label.
        write_labels(root.path(), "stable = \"1\"\n");
        assert!(repository.reconcile().unwrap().is_none(), "nothing changed");
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 1);
    }

    #[tokio::test]
    async fn a_rescan_loads_new_versions_and_drops_removed_ones() {
        let root = churn_repository(&[1]);
        let repository = Repository::load(root.path(), &config(2)).unwrap();
        assert!(repository.reconcile().unwrap().is_none(), "nothing changed");
        // A half-copied version (no manifest yet) is not a candidate...
        let dir = add_churn(root.path(), 2);
        fs::rename(dir.join(MANIFEST_FILE), root.path().join("model.toml.part")).unwrap();
        assert!(
            repository.reconcile().unwrap().is_none(),
            "no manifest, no version"
        );
        // ...until its manifest, written last, arrives.
        fs::rename(root.path().join("model.toml.part"), dir.join(MANIFEST_FILE)).unwrap();
        let repository = repository.reconcile().unwrap().expect("version 2 arrived");
        assert_eq!(states(&repository), serving(&[1, 2]));
        assert_eq!(repository.resolve("churn", 0, "").unwrap().version(), 2);
        fs::remove_dir_all(&dir).unwrap();
        let repository = repository.reconcile().unwrap().expect("version 2 left");
        assert_eq!(states(&repository), serving(&[1]));
        fs::remove_dir_all(root.path().join("churn")).unwrap();
        let repository = repository.reconcile().unwrap().expect("churn left");
        assert!(repository.models().is_empty());
    }

    #[tokio::test]
    async fn versions_below_the_default_beyond_keep_n_are_retired_unless_labelled() {
        let root = churn_repository(&[1, 2, 3, 4]);
        // Default 4 (the highest); keep 1 below it: 3 stays, 2 and 1 retire.
        let repository = Repository::load(root.path(), &config(1)).unwrap();
        assert_eq!(
            states(&repository),
            [
                (1, "retired".to_string()),
                (2, "retired".to_string()),
                (3, "serving".to_string()),
                (4, "serving".to_string()),
            ]
        );
        match repository.resolve("churn", 2, "") {
            Err(ResolveError::NotServing { reason, .. }) => assert_eq!(
                reason,
                "retired (older than the 1 versions kept loaded; set a label on it or roll \
                 back to load it again)"
            ),
            other => panic!("{:?}", other.map(|m| m.version())),
        }
        // Labelling a retired version loads it again, and keeps it loaded.
        let labelled = repository.with_label("churn", "old", 1).unwrap();
        assert_eq!(
            states(&labelled),
            [
                (1, "serving".to_string()),
                (2, "retired".to_string()),
                (3, "serving".to_string()),
                (4, "serving".to_string()),
            ]
        );
        assert_eq!(labelled.resolve("churn", 0, "old").unwrap().version(), 1);
    }

    #[tokio::test]
    async fn keep_n_counts_below_the_default_and_newer_versions_stay_loaded() {
        let root = churn_repository(&[1, 2, 3, 4]);
        // `stable` at 3: 4 is newer and stays; keep 1 below 3 keeps 2.
        write_labels(root.path(), "stable = 3\n");
        let repository = Repository::load(root.path(), &config(1)).unwrap();
        assert_eq!(
            states(&repository),
            [
                (1, "retired".to_string()),
                (2, "serving".to_string()),
                (3, "serving".to_string()),
                (4, "serving".to_string()),
            ]
        );
        // keep 0: only the default and what is newer stay loaded.
        let repository = Repository::load(root.path(), &config(0)).unwrap();
        assert_eq!(
            states(&repository)[..2],
            [(1, "retired".into()), (2, "retired".into())]
        );
        // Enough room keeps everything.
        let repository = Repository::load(root.path(), &config(3)).unwrap();
        assert_eq!(states(&repository), serving(&[1, 2, 3, 4]));
    }
}
