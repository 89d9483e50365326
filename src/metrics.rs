//! Prometheus metrics (`--metrics-addr`): histograms, not summaries, so
//! latencies aggregate across replicas (the complaint in Triton #3060/#7672).
//!
//! Each server owns its registry (several servers in one test process do not
//! mix their counts). Per-version handles are resolved once when a version
//! loads, so the hot path touches only atomics, and the score histograms are
//! filled through thread-local buffers flushed once per batch.
//!
//! This module knows nothing of the model repository: a version's handles
//! are built from plain values (name, version, which score histogram and how
//! a row's values become its score), and the repository converts its
//! manifest into them. That keeps the dependency one-way (repository ->
//! metrics).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

/// Request latency buckets, 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Probability buckets for binary classifiers: 0.05 wide.
const PROBABILITY_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85,
    0.9, 0.95, 1.0,
];
/// Regression values (LTV in currency units and similar), 1-2.5-5 steps.
const VALUE_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    25000.0, 50000.0, 100000.0,
];

/// Every metric segscore exports (documented in docs/operations.md).
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    model_request_duration: HistogramVec,
    in_flight: IntGauge,
    rows: IntCounterVec,
    queue_wait: HistogramVec,
    compute: HistogramVec,
    batch_rows: HistogramVec,
    queue_depth: IntGaugeVec,
    score_probability: HistogramVec,
    score_value: HistogramVec,
    loaded_versions: IntGaugeVec,
    dangling_labels: IntGaugeVec,
    model_loads: IntCounterVec,
    segment_rows: IntCounterVec,
    segment_errors: IntCounterVec,
    segment_reloads: IntCounterVec,
    allocator_allocated: IntGauge,
    allocator_resident: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("static metric definitions are valid; this is a bug")
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .expect("static metric definitions are valid; this is a bug")
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels)
        .expect("static metric definitions are valid; this is a bug")
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let batch_buckets: Vec<f64> = (0..=13).map(|p| f64::from(1u32 << p)).collect();
        let m = Self {
            registry: Registry::new(),
            requests: counter(
                "segscore_requests_total",
                "Scoring requests (ScoreStream: chunks) by method, protocol (grpc|http) and status code",
                &["method", "protocol", "code"],
            ),
            request_duration: histogram(
                "segscore_request_duration_seconds",
                "Time from request decoded to response ready, by method, protocol and status code",
                &["method", "protocol", "code"],
                LATENCY_BUCKETS,
            ),
            model_request_duration: histogram(
                "segscore_model_request_duration_seconds",
                "Duration of successful requests that a model version scored",
                &["model", "version"],
                LATENCY_BUCKETS,
            ),
            in_flight: IntGauge::new(
                "segscore_in_flight_requests",
                "Scoring requests being handled now",
            )
            .expect("static metric definitions are valid; this is a bug"),
            rows: counter(
                "segscore_rows_total",
                "Rows scored by a model version",
                &["model", "version"],
            ),
            queue_wait: histogram(
                "segscore_queue_wait_seconds",
                "Time a request chunk waited before a worker started scoring it",
                &["model", "version"],
                LATENCY_BUCKETS,
            ),
            compute: histogram(
                "segscore_compute_seconds",
                "Model call duration per batch",
                &["model", "version"],
                LATENCY_BUCKETS,
            ),
            batch_rows: histogram(
                "segscore_batch_rows",
                "Rows per model call (dynamic batching merges requests)",
                &["model", "version"],
                &batch_buckets,
            ),
            queue_depth: gauge(
                "segscore_queue_depth",
                "Request chunks queued for a model version's workers",
                &["model", "version"],
            ),
            score_probability: histogram(
                "segscore_score_probability",
                "Scores of binary classifiers (probability of the positive class)",
                &["model", "version"],
                PROBABILITY_BUCKETS,
            ),
            score_value: histogram(
                "segscore_score_value",
                "Predictions of regression models",
                &["model", "version"],
                VALUE_BUCKETS,
            ),
            loaded_versions: gauge(
                "segscore_loaded_versions",
                "Serving (loaded) versions per model",
                &["model"],
            ),
            dangling_labels: gauge(
                "segscore_dangling_labels",
                "Labels in labels.toml that point at no serving version (see GetModel label_warnings)",
                &["model"],
            ),
            model_loads: counter(
                "segscore_model_loads_total",
                "Version loads by outcome (passed or failed the validation gate)",
                &["model", "result"],
            ),
            segment_rows: counter(
                "segscore_segment_rows_total",
                "Rows found members of a segment (Score and ScoreStream)",
                &["segment"],
            ),
            segment_errors: counter(
                "segscore_segment_errors_total",
                "Rows a segment's rule could not be evaluated on (missing rejected feature, rule error)",
                &["segment"],
            ),
            segment_reloads: counter(
                "segscore_segment_reloads_total",
                "Changed segments files (or model sets) the reload task acted on, by outcome: \
                 applied (refused rules included), invalid (does not parse, or unusable \
                 constants; the previous segments keep serving), unreadable (missing, not a \
                 regular file, over the size cap) or panicked (a bug: logged, the previous \
                 segments keep serving and the task keeps watching)",
                &["result"],
            ),
            allocator_allocated: IntGauge::new(
                "segscore_allocator_allocated_bytes",
                "Heap bytes the process holds (jemalloc stats.allocated; grows with a leak)",
            )
            .expect("static metric definitions are valid; this is a bug"),
            allocator_resident: IntGauge::new(
                "segscore_allocator_resident_bytes",
                "Resident bytes the heap allocator maps, freed pages not yet returned included \
                 (jemalloc stats.resident)",
            )
            .expect("static metric definitions are valid; this is a bug"),
        };
        // Which build is running, as a label on a constant 1 (the Prometheus
        // convention: join it onto other series, alert on mixed versions).
        let build_info = gauge(
            "segscore_build_info",
            "The running segscore build (always 1; the version is the label)",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mut collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build_info),
            Box::new(m.requests.clone()),
            Box::new(m.request_duration.clone()),
            Box::new(m.model_request_duration.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.rows.clone()),
            Box::new(m.queue_wait.clone()),
            Box::new(m.compute.clone()),
            Box::new(m.batch_rows.clone()),
            Box::new(m.queue_depth.clone()),
            Box::new(m.score_probability.clone()),
            Box::new(m.score_value.clone()),
            Box::new(m.loaded_versions.clone()),
            Box::new(m.dangling_labels.clone()),
            Box::new(m.model_loads.clone()),
            Box::new(m.segment_rows.clone()),
            Box::new(m.segment_errors.clone()),
            Box::new(m.segment_reloads.clone()),
            Box::new(m.allocator_allocated.clone()),
            Box::new(m.allocator_resident.clone()),
        ];
        // process_* (resident and virtual memory, CPU seconds, open and max
        // fds, start time, threads) from /proc, the standard names every
        // dashboard and alert expects; read at scrape time only.
        #[cfg(target_os = "linux")]
        collectors.push(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        for c in collectors {
            m.registry
                .register(c)
                .expect("each metric is registered once; this is a bug");
        }
        Arc::new(m)
    }

    /// Adds a collector computed at scrape time (the drift and segment
    /// gauges of `monitor`, which read the repository this module must not
    /// know).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::error!(error = %e, "a collector could not be registered; its metrics are missing");
        }
    }

    /// One attempt of the segments reload task: `applied`, `invalid`,
    /// `unreadable` or `panicked`.
    pub fn segment_reload(&self, result: &str) {
        self.segment_reloads.with_label_values(&[result]).inc();
    }

    /// Handles for version `version` of `model`, resolved once at load;
    /// `scores` is the score histogram it fills (none for clustering).
    pub fn version(
        &self,
        model: &str,
        version: u64,
        scores: Option<ScoreHistogram>,
    ) -> VersionMetrics {
        let version = version.to_string();
        let labels = [model, version.as_str()];
        let scores = scores.map(|scores| match scores {
            ScoreHistogram::Probability(row) => {
                (self.score_probability.with_label_values(&labels), row)
            }
            ScoreHistogram::Value(row) => (self.score_value.with_label_values(&labels), row),
        });
        VersionMetrics {
            rows: self.rows.with_label_values(&labels),
            queue_wait: self.queue_wait.with_label_values(&labels),
            compute: self.compute.with_label_values(&labels),
            batch_rows: self.batch_rows.with_label_values(&labels),
            queue_depth: self.queue_depth.with_label_values(&labels),
            scores,
        }
    }

    /// Counts a request and observes its duration; `models` are the versions
    /// that scored it (empty when it failed).
    pub fn request<'a>(
        &self,
        method: &str,
        protocol: crate::api::gate::Protocol,
        code: tonic::Code,
        elapsed: Duration,
        models: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let code = format!("{code:?}");
        let labels = [method, protocol.as_str(), &code];
        self.requests.with_label_values(&labels).inc();
        let seconds = elapsed.as_secs_f64();
        self.request_duration
            .with_label_values(&labels)
            .observe(seconds);
        for (model, version) in models {
            self.model_request_duration
                .with_label_values(&[model, &version.to_string()])
                .observe(seconds);
        }
    }

    /// Marks a request in flight until the guard drops.
    pub fn in_flight(self: &Arc<Self>) -> InFlight {
        self.in_flight.inc();
        InFlight(self.clone())
    }

    /// Publishes the lifecycle state: loaded versions and load outcomes per
    /// model (`succeeded`/`failed` are totals since start-up).
    pub fn set_model_state(&self, model: &str, state: ModelState) {
        self.loaded_versions
            .with_label_values(&[model])
            .set(state.loaded as i64);
        self.dangling_labels
            .with_label_values(&[model])
            .set(state.dangling_labels as i64);
        let (succeeded, failed) = (state.loads_succeeded, state.loads_failed);
        for (result, total) in [("passed", succeeded), ("failed", failed)] {
            let c = self.model_loads.with_label_values(&[model, result]);
            c.inc_by(total.saturating_sub(c.get()));
        }
    }

    /// Counts one segment's evaluation over a request: member rows and
    /// rows in error.
    pub fn segment(&self, segment: &str, members: usize, errors: usize) {
        self.segment_rows
            .with_label_values(&[segment])
            .inc_by(members as u64);
        if errors > 0 {
            self.segment_errors
                .with_label_values(&[segment])
                .inc_by(errors as u64);
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        if let Some(heap) = crate::alloc::stats() {
            self.allocator_allocated
                .set(i64::try_from(heap.allocated).unwrap_or(i64::MAX));
            self.allocator_resident
                .set(i64::try_from(heap.resident).unwrap_or(i64::MAX));
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail; this is a bug");
        String::from_utf8(out).expect("the text format is UTF-8; this is a bug")
    }
}

/// One model's lifecycle state, as published by [`Metrics::set_model_state`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ModelState {
    /// Serving versions loaded.
    pub loaded: usize,
    /// Labels pointing at no serving version.
    pub dangling_labels: usize,
    /// Version loads since start-up that passed / failed the gate.
    pub loads_succeeded: u64,
    pub loads_failed: u64,
}

/// The score histogram a version fills, with how a row's values become the
/// score it observes.
pub enum ScoreHistogram {
    /// `segscore_score_probability`: classifiers.
    Probability(Arc<dyn RowScore>),
    /// `segscore_score_value`: regression models.
    Value(Arc<dyn RowScore>),
}

/// How one row of a model's output becomes its score: a classifier may
/// return every class's probability, and the histogram must hold scores, not
/// classes. The repository implements it from the manifest, so this module
/// needs nothing of the repository.
pub trait RowScore: Send + Sync {
    /// Values per row in a batch's row-major output.
    fn width(&self) -> usize;
    /// The score of one row's [`width`](Self::width) values.
    fn score(&self, row: &[f32]) -> f32;
}

/// Decrements the in-flight gauge when the request is done.
pub struct InFlight(Arc<Metrics>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// One model version's metric handles.
#[derive(Clone)]
pub struct VersionMetrics {
    rows: IntCounter,
    queue_wait: Histogram,
    compute: Histogram,
    batch_rows: Histogram,
    pub(crate) queue_depth: IntGauge,
    /// The score histogram, and how a row's values become its score.
    scores: Option<(Histogram, Arc<dyn RowScore>)>,
}

impl VersionMetrics {
    /// Records one model call: its rows, duration, the wait of each chunk in
    /// it, and the score distribution.
    pub(crate) fn batch(
        &self,
        waits: impl Iterator<Item = Duration>,
        compute: Duration,
        rows: usize,
        scores: &[f32],
    ) {
        for wait in waits {
            self.queue_wait.observe(wait.as_secs_f64());
        }
        self.compute.observe(compute.as_secs_f64());
        self.batch_rows.observe(rows as f64);
        self.rows.inc_by(rows as u64);
        if let Some((histogram, row)) = &self.scores {
            // One flush of a local copy instead of an atomic add per row.
            let local = histogram.local();
            for values in scores.chunks(row.width().max(1)) {
                local.observe(f64::from(row.score(values)));
            }
            local.flush();
        }
    }
}

/// Binds the metrics listener (so a taken port fails start-up).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))
}

/// Serves `GET /metrics` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::{http::header, routing::get, Router};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two values per row, the score in the second (a binary classifier
    /// returning both classes' probabilities).
    struct Second;
    impl RowScore for Second {
        fn width(&self) -> usize {
            2
        }
        fn score(&self, row: &[f32]) -> f32 {
            row[1]
        }
    }

    fn line<'a>(text: &'a str, metric: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(metric))
    }

    #[test]
    fn a_version_observes_one_score_per_row_under_its_name_and_version() {
        let metrics = Metrics::new();
        let churn = metrics.version(
            "churn",
            3,
            Some(ScoreHistogram::Probability(Arc::new(Second))),
        );
        let ltv = metrics.version("ltv", 1, Some(ScoreHistogram::Value(Arc::new(Second))));
        let clusters = metrics.version("clusters", 1, None);
        let waits = || [Duration::from_millis(1)].into_iter();
        churn.batch(waits(), Duration::from_millis(2), 2, &[0.9, 0.1, 0.4, 0.6]);
        ltv.batch(waits(), Duration::from_millis(2), 1, &[0.0, 120.0]);
        clusters.batch(waits(), Duration::from_millis(2), 1, &[4.0, 0.5]);
        let text = metrics.render();
        let churn = r#"{model="churn",version="3"}"#;
        assert_eq!(
            line(&text, &format!("segscore_score_probability_count{churn}")),
            Some(format!("segscore_score_probability_count{churn} 2").as_str())
        );
        let sum = line(&text, &format!("segscore_score_probability_sum{churn}")).unwrap();
        let sum: f64 = sum.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            (sum - 0.7).abs() < 1e-6,
            "the second value of each row: {sum}"
        );
        assert_eq!(
            line(
                &text,
                r#"segscore_score_value_sum{model="ltv",version="1"}"#
            ),
            Some(r#"segscore_score_value_sum{model="ltv",version="1"} 120"#)
        );
        assert_eq!(
            line(
                &text,
                r#"segscore_rows_total{model="clusters",version="1"}"#
            ),
            Some(r#"segscore_rows_total{model="clusters",version="1"} 1"#)
        );
        assert!(
            !text.contains(r#"segscore_score_probability_count{model="clusters""#)
                && !text.contains(r#"segscore_score_value_count{model="clusters""#),
            "clustering fills no score histogram"
        );
    }
}
