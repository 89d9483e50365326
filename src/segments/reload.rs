//! Keeping the segments current: the rules file is re-read when it changes
//! (file events on its directory, plus a periodic check for filesystems
//! without events) and recompiled when the set of serving models changes, so
//! a rule naming a removed model becomes an error for that segment. A file
//! that cannot be read or parsed leaves the previous segments serving.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{Catalog, FileError, RulesFile, Segments, SharedSegments};
use crate::{
    metrics::Metrics,
    repository::{Repository, SharedRepository},
};

/// Reads and compiles `path` against what `repository` serves.
pub fn load(path: &Path, repository: &Repository) -> Result<Segments, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let file = RulesFile::parse(&text).map_err(|message| FileError::Parse {
        path: path.display().to_string(),
        message,
    })?;
    let mut segments = Segments::compile(
        &file,
        &Catalog::from_repository(repository),
        Some(path.display().to_string()),
    );
    segments.source_text = Some(text);
    report(&segments);
    Ok(segments)
}

/// One log line per segment state change worth knowing: what failed and why.
fn report(segments: &Segments) {
    let ready = segments
        .segments()
        .iter()
        .filter(|s| s.state.is_ok())
        .count();
    info!(
        source = segments.source.as_deref().unwrap_or(""),
        ready,
        failed = segments.segments().len() - ready,
        "segments loaded"
    );
    for segment in segments.segments() {
        if let Err(reason) = &segment.state {
            warn!(segment = %segment.name, %reason, "segment refused");
        }
    }
}

/// Watches `path` and the repository; swaps recompiled segments into
/// `shared`. Runs until aborted. Each outcome is counted in `metrics`, so an
/// operator (and a test) can see that a bad file was read and refused.
pub async fn watch_task(
    shared: SharedSegments,
    path: PathBuf,
    repository: SharedRepository,
    mut generation: watch::Receiver<u64>,
    interval: Duration,
    metrics: Option<Arc<Metrics>>,
) {
    let count = |result: &str| {
        if let Some(m) = &metrics {
            m.segment_reload(result);
        }
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    // The directory, not the file: editors and deploys replace the file by
    // renaming a new one over it, which ends a watch on the old inode.
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let watcher = notify::recommended_watcher(move |_event| {
        let _ = tx.try_send(());
    })
    .and_then(|mut w| w.watch(&dir, RecursiveMode::NonRecursive).map(|_| w));
    let _watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "file events unavailable for the segments file; polling only");
            None
        }
    };
    // What is serving now, not what the file holds when this task starts:
    // an edit made in between must not be mistaken for the loaded text.
    let mut last_text = shared.load().source_text.clone();
    let mut failed_text: Option<String> = None;
    loop {
        let models_changed = tokio::select! {
            Some(()) = rx.recv() => {
                // Let a burst of writes settle.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                false
            }
            changed = generation.changed() => {
                if changed.is_err() {
                    return; // the lifecycle is gone: the server stopped
                }
                true
            }
            _ = tokio::time::sleep(interval) => false,
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                if failed_text.as_deref() != Some("") {
                    warn!(path = %path.display(), error = %e, "segments file unreadable; keeping the previous segments");
                    failed_text = Some(String::new());
                    count("unreadable");
                }
                continue;
            }
        };
        if !models_changed && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        let file = match RulesFile::parse(&text) {
            Ok(file) => file,
            Err(message) => {
                if failed_text.as_deref() != Some(text.as_str()) {
                    warn!(path = %path.display(), error = %message, "segments file does not parse; keeping the previous segments");
                    failed_text = Some(text);
                    count("invalid");
                }
                continue;
            }
        };
        failed_text = None;
        let catalog = Catalog::from_repository(&repository.load());
        let mut segments = Segments::compile(&file, &catalog, Some(path.display().to_string()));
        segments.source_text = Some(text.clone());
        report(&segments);
        shared.store(Arc::new(segments));
        count("applied");
        last_text = Some(text);
    }
}
