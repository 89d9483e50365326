//! Keeping the segments current: the rules file is re-read when it changes
//! (file events on its directory, plus a periodic check for filesystems
//! without events) and recompiled when the set of serving models changes, so
//! a rule naming a removed model becomes an error for that segment. A file
//! that cannot be read or parsed leaves the previous segments serving, and a
//! segment whose edited rule is refused keeps its previous rule. The task is
//! supervised: it outlives any panic in it.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::FutureExt;
use notify::{RecursiveMode, Watcher};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::{Catalog, FileError, RulesFile, Segments, SharedSegments};
use crate::{
    metrics::Metrics,
    repository::{Repository, SharedRepository},
};

/// Reads and compiles `path` against what `repository` serves.
pub fn load(path: &Path, repository: &Repository) -> Result<Segments, FileError> {
    let text = super::read_text(path)?;
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
        } else if let Some(reason) = &segment.refused_edit {
            warn!(segment = %segment.name, %reason, "segment edit refused; the previous rule keeps serving");
        }
    }
}

/// Watches `path` and the repository; swaps recompiled segments into
/// `shared`. Runs until aborted. Each outcome is counted in `metrics`, so an
/// operator (and a test) can see that a bad file was read and refused.
///
/// Supervised: a panic anywhere in the watch loop is logged, counted as
/// `panicked`, and the loop starts again from what is serving, so one bad
/// file can never leave the rules unwatched for the rest of the process.
pub async fn watch_task(
    shared: SharedSegments,
    path: PathBuf,
    repository: SharedRepository,
    generation: watch::Receiver<u64>,
    interval: Duration,
    metrics: Option<Arc<Metrics>>,
) {
    let count = counter(metrics.clone());
    supervise(
        "segments reload",
        || {
            watch_loop(
                shared.clone(),
                path.clone(),
                repository.clone(),
                generation.clone(),
                interval,
                metrics.clone(),
            )
        },
        || count("panicked"),
    )
    .await;
}

fn counter(metrics: Option<Arc<Metrics>>) -> impl Fn(&str) {
    move |result: &str| {
        if let Some(m) = &metrics {
            m.segment_reload(result);
        }
    }
}

/// Runs the future `start` makes until it finishes; when it panics instead,
/// logs the panic, calls `on_panic` and starts a new one. The future is
/// dropped whole after a panic (nothing of it is reused), which is what makes
/// asserting its unwind safety sound.
async fn supervise<Fut: Future<Output = ()>>(
    task: &str,
    mut start: impl FnMut() -> Fut,
    on_panic: impl Fn(),
) {
    loop {
        match AssertUnwindSafe(start()).catch_unwind().await {
            Ok(()) => return,
            Err(payload) => {
                let panic = super::limits::panic_message(payload.as_ref());
                error!(task, %panic, "background task panicked; restarting it");
                on_panic();
            }
        }
    }
}

async fn watch_loop(
    shared: SharedSegments,
    path: PathBuf,
    repository: SharedRepository,
    mut generation: watch::Receiver<u64>,
    interval: Duration,
    metrics: Option<Arc<Metrics>>,
) {
    let count = counter(metrics);
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
        // Bounded and non-blocking: a FIFO or a device in the file's place
        // is refused, not waited on.
        let text = match super::read_text(&path) {
            Ok(text) => text,
            Err(e) => {
                if failed_text.as_deref() != Some("") {
                    warn!(error = %e, "segments file unreadable; keeping the previous segments");
                    failed_text = Some(String::new());
                    count("unreadable");
                }
                continue;
            }
        };
        if !models_changed && last_text.as_deref() == Some(text.as_str()) {
            continue;
        }
        // A file that does not parse, or whose constants are unusable (they
        // would refuse every segment), is one refused edit: the previous
        // segments keep serving.
        let file = match RulesFile::parse(&text).and_then(|f| match f.constants_error() {
            Some(error) => Err(error),
            None => Ok(f),
        }) {
            Ok(file) => file,
            Err(message) => {
                if failed_text.as_deref() != Some(text.as_str()) {
                    warn!(path = %path.display(), error = %message, "segments file refused; keeping the previous segments");
                    failed_text = Some(text);
                    count("invalid");
                }
                continue;
            }
        };
        let catalog = Catalog::from_repository(&repository.load());
        let previous = shared.load_full();
        let source = path.display().to_string();
        let compiled_text = text.clone();
        // Off the async threads (compiling is CPU work), and a panic that
        // escapes the per-rule net ends this job, not the task.
        let compiled = tokio::task::spawn_blocking(move || {
            let mut segments =
                Segments::compile_over(&file, &catalog, Some(source), Some(&previous));
            segments.source_text = Some(compiled_text);
            segments
        })
        .await;
        match compiled {
            Ok(segments) => {
                failed_text = None;
                report(&segments);
                shared.store(Arc::new(segments));
                count("applied");
                last_text = Some(text);
            }
            Err(e) if e.is_panic() => {
                let panic = super::limits::panic_message(e.into_panic().as_ref());
                if failed_text.as_deref() != Some(text.as_str()) {
                    error!(path = %path.display(), %panic, "compiling the segments file panicked; keeping the previous segments");
                    failed_text = Some(text);
                    count("panicked");
                }
            }
            Err(_) => return, // the runtime is shutting down
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_counted_and_started_again() {
        let runs = AtomicUsize::new(0);
        let panics = AtomicUsize::new(0);
        supervise(
            "test",
            || {
                let run = runs.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    // resume_unwind skips the panic hook: nothing printed.
                    if run < 2 {
                        std::panic::resume_unwind(Box::new("boom"));
                    }
                }
            },
            || {
                panics.fetch_add(1, Ordering::SeqCst);
            },
        )
        .await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(panics.load(Ordering::SeqCst), 2);
    }
}
