//! What the immutable repository snapshot cannot show: versions still in
//! the validation gate (LOADING, VALIDATING) and versions that left the
//! repository but still finish in-flight requests (DRAINING). Shared by every
//! snapshot, updated by the lifecycle writer, read by ListModels.

use std::{
    collections::BTreeMap,
    sync::{Arc, Weak},
};

use parking_lot::Mutex;
use tracing::info;

use super::{load::Phase, LoadedModel};

#[derive(Default)]
pub struct Tracker {
    phases: Mutex<BTreeMap<(String, u64), Phase>>,
    /// Name and version kept beside the weak reference: upgrading it to read
    /// them could make a handler thread the one that drops the last reference
    /// and joins the workers.
    draining: Mutex<Vec<(String, u64, Weak<LoadedModel>)>>,
}

impl Tracker {
    /// Records the gate phase of a version being loaded (None: finished).
    pub fn set_phase(&self, name: &str, version: u64, phase: Option<Phase>) {
        let mut phases = self.phases.lock();
        match phase {
            Some(p) => {
                if phases.insert((name.to_owned(), version), p) != Some(p) {
                    info!(model = %name, version, phase = ?p, "model version entered the gate");
                }
            }
            None => {
                phases.remove(&(name.to_owned(), version));
            }
        }
    }

    /// Versions in the gate now.
    pub fn in_gate(&self) -> Vec<(String, u64, Phase)> {
        self.phases
            .lock()
            .iter()
            .map(|((n, v), p)| (n.clone(), *v, *p))
            .collect()
    }

    /// Notes a version leaving the repository; it shows as DRAINING until the
    /// last in-flight request holding it finishes and its workers stop.
    pub fn drain(&self, model: &Arc<LoadedModel>) {
        let mut draining = self.draining.lock();
        // Forget the finished ones here too, so the list stays short even if
        // nobody asks for ListModels.
        draining.retain(|(_, _, w)| w.strong_count() > 0);
        draining.push((
            model.name().to_owned(),
            model.version(),
            Arc::downgrade(model),
        ));
    }

    /// (name, version) of the versions still draining.
    pub fn draining(&self) -> Vec<(String, u64)> {
        let mut draining = self.draining.lock();
        draining.retain(|(_, _, w)| w.strong_count() > 0);
        draining.iter().map(|(n, v, _)| (n.clone(), *v)).collect()
    }
}
