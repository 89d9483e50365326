//! Progress reporting for `segscore score`: an `indicatif` bar (rows/s, ETA)
//! when stderr is a terminal, else a `tracing` info line every few seconds,
//! so a job's log in Kubernetes still shows it moving. Counts only: never an
//! id or a value.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::info;

const LOG_EVERY: Duration = Duration::from_secs(5);

pub struct Reporter {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    rows: u64,
    started: Instant,
    last_log: Instant,
}

impl Reporter {
    /// `total`: rows this run will read, when known.
    pub fn new(total: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} rows, {per_sec}, ETA {eta}"
            } else {
                "{elapsed_precise} {spinner} {human_pos} rows, {per_sec}"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("literal template; this is a bug")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            total,
            rows: 0,
            started: now,
            last_log: now,
        }
    }

    /// `rows` more input rows were written (scored or rejected).
    pub fn advance(&mut self, rows: u64) {
        self.rows += rows;
        if let Some(bar) = &self.bar {
            bar.inc(rows);
            return;
        }
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-9);
            let rate = self.rows as f64 / secs;
            let eta = self
                .total
                .map(|t| (t.saturating_sub(self.rows) as f64 / rate.max(1e-9)).round());
            info!(
                rows = self.rows,
                total = self.total,
                rows_per_second = rate.round(),
                eta_seconds = eta,
                "scoring"
            );
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
