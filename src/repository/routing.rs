//! `models/<name>/labels.toml`: labels (`stable = 3`) and the optional canary
//! split (`canary = { version = 4, percent = 10 }`), and the entity hash that
//! routes a stable share of entities to the canary.
//!
//! The split hashes the entity id, not the request or the row, so an entity
//! sees the same version on every call (its scores do not flip between
//! versions from one request to the next) and the share is exact in
//! expectation whatever the traffic mix.

use std::{collections::BTreeMap, path::Path};

use serde::Deserialize;
use tracing::warn;

use super::LifecycleError;

/// Per-model labels file, beside the version directories.
pub const LABELS_FILE: &str = "labels.toml";
/// The label that picks the default version.
pub const DEFAULT_LABEL: &str = "stable";
/// The label whose table form (`{ version, percent }`) sets a traffic split.
pub const CANARY_LABEL: &str = "canary";

/// Labels and canary share of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// label -> version; includes `canary` when set.
    pub labels: BTreeMap<String, u64>,
    /// Share of entities (0-100) whose default-version requests go to the
    /// `canary` label's version; None without a split.
    pub canary_percent: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryTable {
    version: u64,
    percent: f64,
}

impl Routing {
    /// Parses labels.toml text; the error says which key is wrong and how.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut routing = Routing::default();
        for (label, value) in table {
            let version = match value {
                toml::Value::Integer(v) if v > 0 => v as u64,
                toml::Value::Table(t) if label == CANARY_LABEL => {
                    let canary = CanaryTable::deserialize(t).map_err(|e| {
                        format!("`canary`: {e} (expected {{ version = 4, percent = 10 }})")
                    })?;
                    if !(0.0..=100.0).contains(&canary.percent) {
                        return Err(format!(
                            "`canary.percent` = {} is outside 0..=100",
                            canary.percent
                        ));
                    }
                    routing.canary_percent = Some(canary.percent);
                    canary.version
                }
                _ => {
                    return Err(format!(
                        "label `{label}` must be a version number > 0{}",
                        if label == CANARY_LABEL {
                            " or { version = 4, percent = 10 }"
                        } else {
                            ""
                        }
                    ))
                }
            };
            routing.labels.insert(label, version);
        }
        Ok(routing)
    }

    /// The TOML text that [`parse`](Self::parse) reads back as `self`.
    pub fn to_toml(&self) -> String {
        let mut table = toml::Table::new();
        for (label, &version) in &self.labels {
            let value = match self.canary_percent {
                Some(percent) if label == CANARY_LABEL => {
                    let mut canary = toml::Table::new();
                    canary.insert("version".into(), toml::Value::Integer(version as i64));
                    canary.insert("percent".into(), toml::Value::Float(percent));
                    toml::Value::Table(canary)
                }
                _ => toml::Value::Integer(version as i64),
            };
            table.insert(label.clone(), value);
        }
        toml::to_string(&table).expect("labels and numbers serialize; this is a bug")
    }

    /// The canary version and its share, when a split is configured.
    pub fn canary(&self) -> Option<(u64, f64)> {
        let percent = self.canary_percent.filter(|p| *p > 0.0)?;
        Some((*self.labels.get(CANARY_LABEL)?, percent))
    }
}

/// Reads labels.toml (a regular file inside the model's directory, within
/// [`MAX_LABELS_BYTES`](super::files::MAX_LABELS_BYTES)). None when the file
/// is refused, unreadable or malformed: the caller keeps the routing it had,
/// so a half-edited file never changes it.
pub fn read(path: &Path, name: &str) -> Option<Routing> {
    use super::files::{read_text_in_parent, Cap, MAX_LABELS_BYTES};
    let cap = Cap::new(MAX_LABELS_BYTES, "the labels.toml limit");
    let text = match read_text_in_parent(path, cap) {
        Ok(text) => text,
        Err(e) if e.is_not_found() => return Some(Routing::default()),
        Err(error) => {
            warn!(model = %name, %error, "ignoring labels.toml");
            return None;
        }
    };
    match Routing::parse(&text) {
        Ok(routing) => Some(routing),
        Err(error) => {
            warn!(model = %name, %error, "ignoring malformed labels.toml");
            None
        }
    }
}

/// Writes labels.toml through a temp file and a rename, so the watcher never
/// reads half a file. The temp file is created afresh (`create_new`), so a
/// symlink planted under its name is replaced, never written through.
pub fn write(path: &Path, routing: &Routing) -> Result<(), LifecycleError> {
    use std::io::Write;
    let io = |source| LifecycleError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("toml.tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(routing.to_toml().as_bytes()).map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io)
}

/// Hash buckets: a share is resolved to 0.01 %.
const BUCKETS: u64 = 10_000;

/// True when `entity_id` falls in the first `percent` % of `model`'s
/// buckets. XXH3-64 of the id, seeded with XXH3-64 of the model name (so each
/// model's canary draws an independent sample of entities), modulo 10,000,
/// compared with `percent * 100`: any client can recompute the assignment.
pub fn in_canary(model: &str, entity_id: &str, percent: f64) -> bool {
    let seed = xxhash_rust::xxh3::xxh3_64(model.as_bytes());
    let bucket = xxhash_rust::xxh3::xxh3_64_with_seed(entity_id.as_bytes(), seed) % BUCKETS;
    (bucket as f64) < percent * (BUCKETS as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_canary_round_trip() {
        let routing =
            Routing::parse("stable = 2\ncanary = { version = 3, percent = 12.5 }\n").unwrap();
        assert_eq!(routing.labels["stable"], 2);
        assert_eq!(routing.canary(), Some((3, 12.5)));
        assert_eq!(Routing::parse(&routing.to_toml()).unwrap(), routing);
        let plain = Routing::parse("canary = 3").unwrap();
        assert_eq!(plain.canary(), None, "a plain canary label splits nothing");
    }

    #[test]
    fn malformed_labels_say_what_is_wrong() {
        for (text, needle) in [
            ("stable = 0", "label `stable` must be a version number > 0"),
            ("stable = \"2\"", "label `stable`"),
            (
                "canary = { version = 3 }",
                "`canary`: missing field `percent`",
            ),
            (
                "canary = { version = 3, percent = 120.0 }",
                "outside 0..=100",
            ),
            (
                "canary = { version = 3, percent = 1.0, x = 1 }",
                "unknown field `x`",
            ),
            (
                "beta = { version = 3, percent = 1.0 }",
                "label `beta` must be a version",
            ),
        ] {
            let err = Routing::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn canary_share_is_deterministic_and_close_to_percent() {
        let ids: Vec<String> = (0..100_000).map(|i| format!("customer-{i}")).collect();
        let picked = |model: &str, p: f64| -> Vec<bool> {
            ids.iter().map(|id| in_canary(model, id, p)).collect()
        };
        let ten = picked("churn", 10.0);
        assert_eq!(ten, picked("churn", 10.0), "same ids, same split");
        let share = ten.iter().filter(|b| **b).count() as f64 / ids.len() as f64;
        assert!((share - 0.10).abs() < 0.005, "share {share}");
        // Growing the share only adds entities: nobody flips back to stable.
        let twenty = picked("churn", 20.0);
        assert!(ten.iter().zip(&twenty).all(|(a, b)| !a || *b));
        assert!(picked("churn", 0.0).iter().all(|b| !b));
        assert!(picked("churn", 100.0).iter().all(|b| *b));
        // Each model samples its own entities.
        assert_ne!(ten, picked("ltv", 10.0));
    }
}
