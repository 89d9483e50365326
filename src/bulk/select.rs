//! Which model versions a bulk job scores with.
//!
//! A server that cannot load a new version keeps serving the previous one:
//! that is its job. A bulk job that did the same would write a file scored by
//! other models than the ones it was asked for (or without a column at all),
//! with nothing but a log line to say so. So a version the job needs that
//! cannot be used fails the job, with one message naming the model, the
//! version and why. The version a job needs is the pinned one for
//! `name:version`; for a bare `name` (or no `--models`: every model there is)
//! it is the version a request pinning none would get if every version
//! loaded: the `stable` label's when it names a version that exists, else the
//! highest. With `--allow-fallback`, an unpinned model whose intended version
//! failed is scored with the version that does serve instead; the job warns,
//! and the summary and the output's metadata name the fallback.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    proto::pb,
    repository::{ModelEntry, VersionStatus, DEFAULT_LABEL},
};

/// One model's versions as the job sees them: the repository's (embedded)
/// or a server's ListModels answer (remote).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Every version found, with why it cannot be used (None: it can).
    pub versions: BTreeMap<u64, Option<String>>,
    /// The `stable` label's version, when one is set.
    pub stable: Option<u64>,
    /// The version a request pinning none gets now (None: none is valid).
    pub default: Option<u64>,
}

impl Candidates {
    pub fn from_entry(entry: &ModelEntry) -> Self {
        let versions = entry
            .versions
            .iter()
            .map(|(v, status)| {
                let why_not = match status {
                    VersionStatus::Serving(_) => None,
                    VersionStatus::Failed { reason, .. } => Some(reason.clone()),
                    VersionStatus::Retired { .. } => Some(
                        "retired (older than the versions kept loaded: raise --keep-versions)"
                            .to_string(),
                    ),
                };
                (*v, why_not)
            })
            .collect();
        Self {
            versions,
            stable: entry.routing.labels.get(DEFAULT_LABEL).copied(),
            default: entry.default_version().map(|m| m.version()),
        }
    }

    /// From a server's ListModels entry; `addr` names the server in reasons.
    pub fn from_info(info: &pb::ModelInfo, addr: &str) -> Self {
        let versions = info
            .versions
            .iter()
            .map(|v| {
                let why_not = match pb::VersionState::try_from(v.state) {
                    Ok(pb::VersionState::Serving) => None,
                    Ok(pb::VersionState::Failed) => Some(format!("{} (on {addr})", v.reason)),
                    Ok(state) => Some(format!(
                        "{addr} lists it as {}",
                        state
                            .as_str_name()
                            .trim_start_matches("VERSION_STATE_")
                            .to_lowercase()
                    )),
                    Err(_) => Some(format!("{addr} lists it in an unknown state {}", v.state)),
                };
                (v.version, why_not)
            })
            .collect();
        Self {
            versions,
            stable: info.labels.get(DEFAULT_LABEL).copied(),
            default: (info.default_version != 0).then_some(info.default_version),
        }
    }

    /// The version a bare `--models name` asks for: what a request pinning
    /// none would get if every version loaded.
    pub fn intended(&self) -> Option<u64> {
        self.stable
            .filter(|v| self.versions.contains_key(v))
            .or_else(|| self.versions.keys().next_back().copied())
    }
}

/// An unpinned model scored with another version than the one it asked for
/// (`--allow-fallback`): in the summary and the output's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub name: String,
    /// The version the job asked for (see [`Candidates::intended`]).
    pub wanted: u64,
    /// The version it scored with.
    pub used: u64,
    /// Why `wanted` could not be used.
    pub reason: String,
}

/// A model version the job scores with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    pub name: String,
    pub version: u64,
    pub fallback: Option<Fallback>,
}

/// A version the job needs and cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Unusable {
    name: String,
    version: u64,
    reason: String,
    /// Unpinned: the valid version `--allow-fallback` scores with instead.
    instead: Option<u64>,
}

/// Picks the version of each requested `(name, version)` (0 = the intended
/// default), or fails with every version that cannot be used, in one message.
pub fn choose(
    requests: &[(String, u64, Candidates)],
    allow_fallback: bool,
) -> anyhow::Result<Vec<Chosen>> {
    let mut chosen = Vec::new();
    let mut failures = Vec::new();
    for (name, version, candidates) in requests {
        let pinned = *version != 0;
        let Some(wanted) = (if pinned {
            Some(*version)
        } else {
            candidates.intended()
        }) else {
            failures.push(Unusable {
                name: name.clone(),
                version: 0,
                reason: "it has no version".into(),
                instead: None,
            });
            continue;
        };
        let reason = match candidates.versions.get(&wanted) {
            None => format!(
                "no such version (it has: {})",
                candidates
                    .versions
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some(Some(why)) => why.clone(),
            // Valid, and (unpinned) the default a server would give too.
            Some(None) if pinned || candidates.default == Some(wanted) => {
                chosen.push(Chosen {
                    name: name.clone(),
                    version: wanted,
                    fallback: None,
                });
                continue;
            }
            // Valid but not the default: a version being deployed right now.
            Some(None) => "not yet the default version".into(),
        };
        let instead = if pinned { None } else { candidates.default };
        match instead {
            Some(used) if allow_fallback => {
                warn!(
                    model = %name, wanted, used, %reason,
                    "model version cannot be used: falling back to the version that serves (--allow-fallback)"
                );
                chosen.push(Chosen {
                    name: name.clone(),
                    version: used,
                    fallback: Some(Fallback {
                        name: name.clone(),
                        wanted,
                        used,
                        reason,
                    }),
                });
            }
            _ => failures.push(Unusable {
                name: name.clone(),
                version: wanted,
                reason,
                instead,
            }),
        }
    }
    if failures.is_empty() {
        Ok(chosen)
    } else {
        anyhow::bail!("{}", describe(&failures, allow_fallback))
    }
}

/// One message for every version that cannot be used: grouped by reason
/// (a missing ONNX Runtime fails every ONNX model alike), then what
/// `--allow-fallback` would do.
fn describe(failures: &[Unusable], allow_fallback: bool) -> String {
    let mut groups: Vec<(&str, Vec<&Unusable>)> = Vec::new();
    for f in failures {
        match groups.iter_mut().find(|(reason, _)| *reason == f.reason) {
            Some((_, group)) => group.push(f),
            None => groups.push((&f.reason, vec![f])),
        }
    }
    let mut text = groups
        .iter()
        .map(|(reason, group)| {
            let which: Vec<String> = group
                .iter()
                .map(|f| match f.version {
                    0 => format!("model `{}`", f.name),
                    v => format!("model `{}` version {v}", f.name),
                })
                .collect();
            format!("{} cannot be used: {reason}", join_and(&which))
        })
        .collect::<Vec<_>>()
        .join("; ");
    if !text.ends_with('.') {
        text.push('.');
    }
    let instead: Vec<String> = failures
        .iter()
        .filter_map(|f| f.instead.map(|v| format!("{} with version {v}", f.name)))
        .collect();
    let stuck: Vec<String> = failures
        .iter()
        .filter(|f| f.instead.is_none())
        .map(|f| f.name.clone())
        .collect();
    // Fallbacks already taken (with the flag) are not failures, so with the
    // flag every failure here is stuck.
    if !allow_fallback && !instead.is_empty() {
        text.push_str(&format!(
            " --allow-fallback would score {} instead",
            join_and(&instead)
        ));
        if stuck.is_empty() {
            text.push('.');
        } else {
            text.push_str(&format!("; {} cannot fall back.", join_and(&stuck)));
        }
    }
    text
}

/// "a", "a and b", "a, b and c".
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions 1..=n, with the failed ones' reasons, the default being the
    /// highest valid (no label).
    fn candidates(valid: &[u64], failed: &[(u64, &str)]) -> Candidates {
        let mut versions: BTreeMap<u64, Option<String>> =
            valid.iter().map(|v| (*v, None)).collect();
        for (v, why) in failed {
            versions.insert(*v, Some(why.to_string()));
        }
        Candidates {
            versions,
            stable: None,
            default: valid.iter().max().copied(),
        }
    }

    fn request(name: &str, version: u64, c: Candidates) -> (String, u64, Candidates) {
        (name.to_string(), version, c)
    }

    const NO_ORT: &str = "ONNX Runtime is not available. Fix: run `make venv`";

    #[test]
    fn the_highest_version_is_intended_unless_stable_names_an_existing_one() {
        let mut c = candidates(&[1, 2], &[(3, "bad golden set")]);
        assert_eq!(c.intended(), Some(3));
        c.stable = Some(1);
        assert_eq!(c.intended(), Some(1));
        c.stable = Some(9); // a label left pointing at a removed version
        assert_eq!(c.intended(), Some(3));
        assert_eq!(Candidates::default().intended(), None);
    }

    #[test]
    fn the_intended_versions_are_used_when_they_are_valid() {
        let mut labelled = candidates(&[1, 2], &[]);
        labelled.stable = Some(1);
        labelled.default = Some(1);
        let chosen = choose(
            &[
                request("churn", 0, candidates(&[1, 2], &[])),
                request("ltv", 0, labelled),
                request("propensity", 1, candidates(&[1, 2], &[])),
            ],
            false,
        )
        .unwrap();
        let versions: Vec<(&str, u64)> = chosen
            .iter()
            .map(|c| (c.name.as_str(), c.version))
            .collect();
        assert_eq!(versions, [("churn", 2), ("ltv", 1), ("propensity", 1)]);
        assert!(chosen.iter().all(|c| c.fallback.is_none()));
    }

    #[test]
    fn a_failed_intended_version_fails_the_job_with_one_message() {
        let err = choose(
            &[
                request("churn", 0, candidates(&[1], &[(2, NO_ORT)])),
                request("ltv", 0, candidates(&[], &[(1, NO_ORT)])),
                request(
                    "propensity",
                    0,
                    candidates(&[1], &[(2, "golden set row 0")]),
                ),
            ],
            false,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!(
                "model `churn` version 2 and model `ltv` version 1 cannot be used: {NO_ORT}; \
                 model `propensity` version 2 cannot be used: golden set row 0. \
                 --allow-fallback would score churn with version 1 and propensity with \
                 version 1 instead; ltv cannot fall back."
            )
        );
    }

    #[test]
    fn allow_fallback_uses_the_valid_default_and_records_it() {
        let chosen = choose(
            &[
                request("churn", 0, candidates(&[1], &[(2, NO_ORT)])),
                request("ltv", 0, candidates(&[1], &[])),
            ],
            true,
        )
        .unwrap();
        assert_eq!(
            chosen[0].fallback,
            Some(Fallback {
                name: "churn".into(),
                wanted: 2,
                used: 1,
                reason: NO_ORT.into(),
            })
        );
        assert_eq!(chosen[0].version, 1);
        assert_eq!((chosen[1].version, &chosen[1].fallback), (1, &None));
    }

    #[test]
    fn allow_fallback_still_fails_without_a_valid_version() {
        let err = choose(
            &[
                request("churn", 0, candidates(&[1], &[(2, NO_ORT)])),
                request("ltv", 0, candidates(&[], &[(1, NO_ORT)])),
            ],
            true,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            format!("model `ltv` version 1 cannot be used: {NO_ORT}.")
        );
    }

    #[test]
    fn a_pinned_version_never_falls_back() {
        for allow_fallback in [false, true] {
            let err = choose(
                &[request("churn", 2, candidates(&[1], &[(2, NO_ORT)]))],
                allow_fallback,
            )
            .unwrap_err()
            .to_string();
            assert_eq!(
                err,
                format!("model `churn` version 2 cannot be used: {NO_ORT}.")
            );
        }
        let err = choose(&[request("churn", 9, candidates(&[1, 2], &[]))], true)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "model `churn` version 9 cannot be used: no such version (it has: 1, 2)."
        );
    }

    #[test]
    fn a_stable_label_on_a_failed_version_does_not_move_to_a_newer_one() {
        let mut c = candidates(&[2], &[(1, "sha256 mismatch")]);
        c.stable = Some(1);
        let err = choose(&[request("churn", 0, c.clone())], false)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("model `churn` version 1 cannot be used: sha256 mismatch."));
        let chosen = choose(&[request("churn", 0, c)], true).unwrap();
        assert_eq!(chosen[0].version, 2);
    }

    #[test]
    fn a_valid_version_that_is_not_yet_the_default_is_not_silently_skipped() {
        // Remote: the server lists version 3 as serving before it became
        // the default (a deploy in progress).
        let mut c = candidates(&[1, 3], &[]);
        c.default = Some(1);
        let err = choose(&[request("churn", 0, c)], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("version 3 cannot be used"), "{err}");
    }
}
