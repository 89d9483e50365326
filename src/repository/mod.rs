//! The model repository: `models/<name>/<version>/` scanned at start-up, each
//! version validated (see [`load`]) and either serving or failed with a reason
//! that ListModels shows. A failed version never takes down its neighbours.

pub mod load;
pub mod manifest;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use tracing::{info, warn};

pub use load::{EngineConfig, LoadError, LoadedModel};
pub use manifest::{Format, Manifest, Task, MANIFEST_FILE};

/// The state of one version directory.
#[derive(Clone)]
pub enum VersionStatus {
    Serving(Arc<LoadedModel>),
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
}

impl ModelEntry {
    /// The version a request that pins none gets: the highest serving one.
    pub fn default_version(&self) -> Option<&Arc<LoadedModel>> {
        self.versions.values().rev().find_map(|v| match v {
            VersionStatus::Serving(m) => Some(m),
            VersionStatus::Failed { .. } => None,
        })
    }
}

/// Why a model reference does not resolve to a serving version.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ResolveError {
    #[error("model `{0}` not found")]
    UnknownModel(String),
    #[error("model `{name}` has no version {version}")]
    UnknownVersion { name: String, version: u64 },
    #[error("model `{name}` version {version} is not serving: {reason}")]
    NotServing {
        name: String,
        version: u64,
        reason: String,
    },
    #[error("model `{0}` has no serving version")]
    NoServingVersion(String),
    #[error("model `{name}` has no label `{label}`")]
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
}

/// The repository as the services see it: swapped atomically on reloads.
pub type SharedRepository = Arc<arc_swap::ArcSwap<Repository>>;

impl Repository {
    /// Scans `root` and loads every version that has a manifest. Only an
    /// unreadable root is an error; bad versions are recorded as failed.
    pub fn load(root: &Path, config: &EngineConfig) -> std::io::Result<Self> {
        let mut models = BTreeMap::new();
        for (name, versions) in scan(root)? {
            models.insert(name.clone(), load_entry(&name, versions, config));
        }
        Ok(Self {
            root: root.to_path_buf(),
            config: config.clone(),
            models,
        })
    }

    /// A copy of this repository with `name` loaded afresh from disk (every
    /// version re-validated). Blocking: run it off the async threads.
    pub fn with_model_reloaded(&self, name: &str) -> std::io::Result<Result<Self, ResolveError>> {
        let mut found = scan(&self.root)?;
        let Some(versions) = found.remove(name) else {
            return Ok(Err(ResolveError::UnknownModel(name.into())));
        };
        let mut next = self.clone();
        next.models
            .insert(name.into(), load_entry(name, versions, &self.config));
        Ok(Ok(next))
    }

    /// A copy of this repository without `name`; its versions drain and stop
    /// once in-flight requests finish.
    pub fn without_model(&self, name: &str) -> Result<Self, ResolveError> {
        let mut next = self.clone();
        next.models
            .remove(name)
            .ok_or_else(|| ResolveError::UnknownModel(name.into()))?;
        Ok(next)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models(&self) -> &BTreeMap<String, ModelEntry> {
        &self.models
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
            // Labels (models/<name>/labels.toml) come with the lifecycle work;
            // until then no label exists, and saying so beats ignoring it.
            return Err(ResolveError::UnknownLabel {
                name: name.into(),
                label: label.into(),
            });
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
            None => Err(ResolveError::UnknownVersion {
                name: name.into(),
                version,
            }),
        }
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

/// Loads every version of one model, recording failures with their reason.
fn load_entry(name: &str, versions: BTreeMap<u64, PathBuf>, config: &EngineConfig) -> ModelEntry {
    let mut entry = ModelEntry::default();
    for (version, dir) in versions {
        let status = match load::load(&dir, config) {
            Ok(model) => {
                info!(
                    model = %name, version, format = model.manifest.format.as_str(),
                    golden_rows = model.golden.rows, golden_max_abs_diff = model.golden.max_abs_diff,
                    "model version serving"
                );
                VersionStatus::Serving(model)
            }
            Err(e) => {
                let reason = e.to_string();
                warn!(model = %name, version, %reason, "model version refused");
                let manifest = Manifest::read(&dir.join(MANIFEST_FILE)).ok().map(Box::new);
                VersionStatus::Failed { reason, manifest }
            }
        };
        entry.versions.insert(version, status);
    }
    entry
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
        let mut versions = BTreeMap::new();
        for version in std::fs::read_dir(model.path())? {
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
