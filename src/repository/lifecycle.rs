//! The model lifecycle: one writer at a time changes the shared repository
//! (directory watcher, admin RPCs, OIP repository RPCs), loading and
//! validating on blocking threads, then swapping the new repository in
//! atomically. Readers never wait: requests resolve against whatever
//! repository is current and keep the versions they resolved until they finish.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher};
use tokio::sync::{watch, Mutex};
use tracing::{debug, warn};

use super::{LifecycleError, Repository, ResolveError, SharedRepository, VersionStatus};
use crate::metrics::{Metrics, ModelState};

/// Serialises repository changes and announces them.
pub struct Lifecycle {
    repository: SharedRepository,
    metrics: Option<Arc<Metrics>>,
    /// Models published to the metrics, so a removed one drops to 0 loaded.
    published: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Held while a change is computed and swapped, so two writers never
    /// build on the same snapshot and lose one another's change.
    writer: Mutex<()>,
    /// Bumped after every swap (health publishing listens to it).
    generation: watch::Sender<u64>,
}

impl Lifecycle {
    pub fn new(repository: SharedRepository, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        let lifecycle = Arc::new(Self {
            repository,
            metrics,
            published: Default::default(),
            writer: Mutex::new(()),
            generation: watch::Sender::new(0),
        });
        lifecycle.publish();
        lifecycle
    }

    /// Publishes loaded versions and load outcomes per model.
    fn publish(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let repository = self.repository.load();
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        for gone in published
            .iter()
            .filter(|n| !repository.models().contains_key(*n))
        {
            metrics.set_model_state(gone, ModelState::default());
        }
        published.clear();
        for (name, entry) in repository.models() {
            let loaded = entry
                .versions
                .values()
                .filter(|s| matches!(s, VersionStatus::Serving(_)))
                .count();
            let state = ModelState {
                loaded,
                dangling_labels: entry.dangling_labels().len(),
                loads_succeeded: entry.loads_succeeded,
                loads_failed: entry.loads_failed,
            };
            metrics.set_model_state(name, state);
            published.insert(name.clone());
        }
    }

    pub fn repository(&self) -> &SharedRepository {
        &self.repository
    }

    /// Changes after every swap.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn swap(&self, next: Repository) {
        self.repository.store(Arc::new(next));
        self.publish();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Runs `change` on the current repository on a blocking thread and swaps
    /// in what it returns.
    async fn change<T: Send + 'static, E: From<String> + Send + 'static>(
        &self,
        change: impl FnOnce(&Repository) -> Result<(Repository, T), E> + Send + 'static,
    ) -> Result<T, E> {
        let _writer = self.writer.lock().await;
        let current = self.repository.load_full();
        let (next, out) = tokio::task::spawn_blocking(move || change(&current))
            .await
            .map_err(|e| E::from(format!("lifecycle task: {e}")))??;
        self.swap(next);
        Ok(out)
    }

    /// Rescans the directory; true if anything changed.
    pub async fn reconcile(&self) -> std::io::Result<bool> {
        let _writer = self.writer.lock().await;
        let current = self.repository.load_full();
        let next = tokio::task::spawn_blocking(move || current.reconcile())
            .await
            .map_err(std::io::Error::other)??;
        Ok(match next {
            Some(next) => {
                self.swap(next);
                true
            }
            None => false,
        })
    }

    pub async fn reload_model(&self, name: String) -> Result<(), LifecycleCommandError> {
        self.change(move |r| {
            let next = r
                .with_model_reloaded(&name)
                .map_err(|e| LifecycleCommandError::Internal(e.to_string()))??;
            Ok((next, ()))
        })
        .await
    }

    pub async fn unload_model(&self, name: String) -> Result<(), LifecycleCommandError> {
        self.change(move |r| Ok((r.without_model(&name)?, ())))
            .await
    }

    pub async fn set_label(
        &self,
        name: String,
        label: String,
        version: u64,
    ) -> Result<(), LifecycleCommandError> {
        self.change(move |r| Ok((r.with_label(&name, &label, version)?, ())))
            .await
    }

    /// Returns (from, to).
    pub async fn rollback(&self, name: String) -> Result<(u64, u64), LifecycleCommandError> {
        self.change(move |r| {
            let (from, to, next) = r.rolled_back(&name)?;
            Ok((next, (from, to)))
        })
        .await
    }
}

/// A lifecycle command's failure.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleCommandError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Lifecycle(#[from] LifecycleError),
    #[error("{0}")]
    Internal(String),
}

impl From<String> for LifecycleCommandError {
    fn from(s: String) -> Self {
        Self::Internal(s)
    }
}

/// Watches the model directory: file events trigger a rescan soon after (the
/// `notify` crate), and a rescan also runs every `interval` in case events
/// are missed (network filesystems, some container mounts). Runs until the
/// lifecycle is dropped by everyone else.
pub async fn watch_task(lifecycle: Arc<Lifecycle>, root: PathBuf, interval: Duration) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |_event| {
        let _ = tx.try_send(()); // a pending wake-up already covers this event
    })
    .and_then(|mut w| w.watch(&root, RecursiveMode::Recursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, root = %root.display(), "file events unavailable; polling only");
            None
        }
    };
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Let a burst of writes (a copy in progress) settle first.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(interval) => {}
        }
        if Arc::strong_count(&lifecycle) == 1 {
            return; // the server is gone
        }
        match lifecycle.reconcile().await {
            Ok(changed) => debug!(changed, "model directory rescanned"),
            Err(e) => warn!(error = %e, "rescanning the model directory failed"),
        }
    }
}
