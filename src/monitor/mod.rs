//! Watching the models and segments while they serve: live input and
//! score drift against each version's reference distributions, segment
//! size and stability over windows of scored rows, exported as Prometheus
//! gauges computed at scrape time, and the status page's renderer.
//!
//! - [`crate::drift`] (below the repository): `reference.json` and a
//!   version's sliding window of bin counters, filled on the scoring path
//!   by `infer::Scorer`; this module reads them at scrape time;
//! - [`segments`]: segment windows compared with `segments stats`' code;
//! - [`status`]: the snapshot the status page shows, and [`page`] its HTML.
//!
//! The repository holds each version's [`crate::drift::VersionDrift`]; the
//! exporter and the snapshot read the repository (never the other way).

pub mod page;
pub mod segments;
pub mod status;

use std::sync::Arc;

use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    GaugeVec, Opts,
};

use crate::repository::{SharedRepository, VersionStatus};

/// Fewer rows than this in a window give no PSI gauge: the index of a
/// handful of rows is noise (about bins / rows even without drift).
pub const MIN_PSI_ROWS: u64 = 100;

/// What the scoring core feeds (`serve --drift`).
pub struct Monitor {
    /// Whether rows are counted against the references at all.
    drift: bool,
    pub segments: segments::SegmentMonitor,
}

impl Monitor {
    pub fn new(drift: bool, window_rows: u64) -> Arc<Self> {
        Arc::new(Self {
            drift,
            segments: segments::SegmentMonitor::new(window_rows),
        })
    }

    /// Whether drift counting is on.
    pub fn drift(&self) -> bool {
        self.drift
    }
}

/// The drift and segment gauges, computed from the repository's versions
/// and the segment windows at each scrape.
pub struct Exporter {
    repository: SharedRepository,
    monitor: Arc<Monitor>,
    feature_psi: GaugeVec,
    feature_missing: GaugeVec,
    score_psi: GaugeVec,
    window_rows: GaugeVec,
    segment_members: GaugeVec,
    segment_share: GaugeVec,
    segment_rows: GaugeVec,
    segment_change: GaugeVec,
    segment_entered: GaugeVec,
    segment_left: GaugeVec,
    segment_jaccard: GaugeVec,
    descs: Vec<Desc>,
    /// One scrape at a time: each resets the gauges and sets them again.
    scraping: parking_lot::Mutex<()>,
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(Opts::new(name, help), labels)
        .expect("static metric definitions are valid; this is a bug")
}

const VERSION: &[&str] = &["model", "version"];
const FEATURE: &[&str] = &["model", "version", "feature"];
const SEGMENT: &[&str] = &["segment"];

impl Exporter {
    pub fn new(repository: SharedRepository, monitor: Arc<Monitor>) -> Self {
        let mut e = Self {
            repository,
            monitor,
            feature_psi: gauge(
                "segscore_feature_drift_psi",
                "Population stability index of a feature over the drift window against the \
                 version's reference (missing values as one bin); > 0.2 is a shift",
                FEATURE,
            ),
            feature_missing: gauge(
                "segscore_feature_missing_ratio",
                "Share of the drift window's rows where the feature was missing",
                FEATURE,
            ),
            score_psi: gauge(
                "segscore_score_drift_psi",
                "Population stability index of the version's score over the drift window \
                 against its reference",
                VERSION,
            ),
            window_rows: gauge(
                "segscore_drift_window_rows",
                "Rows in a version's drift window (PSI gauges need at least 100)",
                VERSION,
            ),
            segment_members: gauge(
                "segscore_segment_members",
                "Members of a segment in its last completed window of evaluated rows \
                 (distinct entity ids where requests carried them; the rows so far before \
                 the first window completes), as `segscore segments stats` counts them",
                SEGMENT,
            ),
            segment_share: gauge(
                "segscore_segment_share",
                "Members / rows of a segment's window",
                SEGMENT,
            ),
            segment_rows: gauge(
                "segscore_segment_window_rows",
                "Rows a segment was evaluated on in its window",
                SEGMENT,
            ),
            segment_change: gauge(
                "segscore_segment_change_ratio",
                "(members - previous window's members) / previous members; present when \
                 both windows completed and the previous one had members",
                SEGMENT,
            ),
            segment_entered: gauge(
                "segscore_segment_entered",
                "Members of the last window that were not members of the one before \
                 (windows whose rows all carried entity ids)",
                SEGMENT,
            ),
            segment_left: gauge(
                "segscore_segment_left",
                "Members of the window before the last that are not members of the last",
                SEGMENT,
            ),
            segment_jaccard: gauge(
                "segscore_segment_jaccard",
                "|members in both windows| / |members in either|",
                SEGMENT,
            ),
            descs: Vec::new(),
            scraping: parking_lot::Mutex::new(()),
        };
        e.descs = e
            .all()
            .iter()
            .flat_map(|g| g.desc().into_iter().cloned())
            .collect();
        e
    }

    fn all(&self) -> [&GaugeVec; 11] {
        [
            &self.feature_psi,
            &self.feature_missing,
            &self.score_psi,
            &self.window_rows,
            &self.segment_members,
            &self.segment_share,
            &self.segment_rows,
            &self.segment_change,
            &self.segment_entered,
            &self.segment_left,
            &self.segment_jaccard,
        ]
    }

    fn refresh(&self) {
        for g in self.all() {
            g.reset();
        }
        let repository = self.repository.load();
        for (name, entry) in repository.models() {
            for (version, status) in &entry.versions {
                let VersionStatus::Serving(model) = status else {
                    continue;
                };
                let Some(drift) = model.drift().filter(|_| self.monitor.drift()) else {
                    continue;
                };
                let window = drift.window();
                let v = version.to_string();
                self.window_rows
                    .with_label_values(&[name.as_str(), &v])
                    .set(window.rows as f64);
                for f in &window.features {
                    let labels = [name.as_str(), &v, &f.name];
                    if let Some(m) = f.missing_ratio() {
                        self.feature_missing.with_label_values(&labels).set(m);
                    }
                    if let Some(psi) = f.psi.filter(|_| f.rows >= MIN_PSI_ROWS) {
                        self.feature_psi.with_label_values(&labels).set(psi);
                    }
                }
                let scored: u64 = window.score_counts.iter().sum();
                if let Some(psi) = window.score_psi.filter(|_| scored >= MIN_PSI_ROWS) {
                    self.score_psi
                        .with_label_values(&[name.as_str(), &v])
                        .set(psi);
                }
            }
        }
        for w in self.monitor.segments.windows() {
            let s = &w.stats;
            let l = [s.segment.as_str()];
            self.segment_members
                .with_label_values(&l)
                .set(s.members as f64);
            self.segment_share.with_label_values(&l).set(s.share);
            self.segment_rows.with_label_values(&l).set(s.rows as f64);
            if let Some(b) = &s.baseline {
                if let Some(r) = b.change_ratio {
                    self.segment_change.with_label_values(&l).set(r);
                }
                self.segment_entered
                    .with_label_values(&l)
                    .set(b.entered as f64);
                self.segment_left.with_label_values(&l).set(b.left as f64);
                self.segment_jaccard.with_label_values(&l).set(b.jaccard);
            }
        }
    }
}

impl Collector for Exporter {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self.scraping.lock();
        self.refresh();
        self.all().iter().flat_map(|g| g.collect()).collect()
    }
}
