//! Command-line and configuration: one clap struct per subcommand, every option
//! also read from `SEGSCORE_<OPTION>` and from the TOML file of `--config`
//! (precedence: flag > env > file > default), and the old spellings of the
//! model repository option, still accepted with a warning.

use std::{
    collections::HashSet,
    ffi::{OsStr, OsString},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{
    error::ContextKind, parser::ValueSource, Arg, ArgAction, Args, CommandFactory, FromArgMatches,
    Parser, Subcommand, ValueEnum,
};

use crate::{engine::BatcherConfig, repository::EngineConfig};

#[derive(Debug, Parser)]
#[command(
    name = "segscore",
    version,
    about = "Scores customer churn, lifetime value and purchase propensity models over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: one-line text, multi-line pretty text, or one JSON object
    /// per line (for log shippers).
    #[arg(long, global = true, env = "SEGSCORE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Export request spans to an OpenTelemetry collector over OTLP/gRPC
    /// (e.g. http://127.0.0.1:4317); off by default.
    #[arg(long, global = true, env = "SEGSCORE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// TOML file with options of the subcommand (and the global ones) as keys,
    /// snake_case or kebab-case: `metrics_addr = "0.0.0.0:9090"`,
    /// `auth_tokens = ["score:t1"]`. Flags and env vars override it; an
    /// unknown key is an error.
    #[arg(long, global = true, env = "SEGSCORE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the model repository over gRPC.
    Serve(ServeArgs),
    /// Score a CSV file of customers, in-process or against running servers.
    Score(ScoreArgs),
    /// Model repository tools.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Segment rules tools: check a rules file, compare scored files.
    #[command(subcommand)]
    Segments(SegmentsCommand),
    /// Train a smartcore model from a feature CSV and write a model version.
    Train(crate::train::TrainArgs),
    /// Run the benchmark suite (in-process ORT vs the service) and write
    /// BENCHMARKS.md; traffic only to 127.0.0.1, bounded in time.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Check a model version directory (or a whole repository) exactly as the
    /// server does before serving it; exit 1 with the reasons if any fails.
    Validate {
        /// A version directory (models/churn/2) or a repository root (models).
        dir: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Import a foreign ONNX model (skl2onnx, onnxmltools, …) as the next
    /// version of NAME: reads its signature, infers the feature schema from
    /// a sample CSV, computes the golden set with the real engine, checks
    /// the version like the server does and only then moves it into place.
    Import(ImportArgs),
    /// Champion / challenger: score a labelled file with two versions
    /// (NAME:VERSION NAME:VERSION) through the engine and print ROC AUC, log
    /// loss, reliability, Spearman, MAE, Σpredicted/Σactual and top-decile
    /// lift side by side.
    Compare(crate::compare::CompareArgs),
}

/// `segscore models import`; the rules are in `repository::import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// The ONNX model file.
    #[arg(long, env = "SEGSCORE_IMPORT_ONNX", value_name = "FILE")]
    pub onnx: PathBuf,
    /// A CSV with a header row and feature rows (a few hundred are enough):
    /// feature names, dtypes, ranges, categories and missing policies are
    /// inferred from it, and its first 200 rows become the golden set.
    #[arg(long, env = "SEGSCORE_IMPORT_SAMPLE", value_name = "CSV")]
    pub sample: PathBuf,
    /// The model's name (its directory under the repository).
    #[arg(long, env = "SEGSCORE_IMPORT_NAME")]
    pub name: String,
    /// Override the detected task: binary_classification,
    /// multiclass_classification or regression.
    #[arg(long, env = "SEGSCORE_IMPORT_TASK", value_parser = parse_task)]
    pub task: Option<crate::repository::Task>,
    /// The features in the graph's column order (comma-separated), when the
    /// sample has other columns too or the graph's inputs do not name them.
    #[arg(long, env = "SEGSCORE_IMPORT_FEATURES", value_delimiter = ',')]
    pub features: Option<Vec<String>>,
    /// Binary classifiers: the class label whose probability is the score.
    /// Default: the second class (label 1, True, or the later of two sorted
    /// string labels), as sklearn's `predict_proba(x)[:, 1]`.
    #[arg(long, env = "SEGSCORE_IMPORT_POSITIVE_CLASS", value_name = "LABEL")]
    pub positive_class: Option<String>,
    /// Model repository root the version is written into.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// Check everything and print the manifest; write nothing.
    #[arg(long, env = "SEGSCORE_IMPORT_DRY_RUN")]
    pub dry_run: bool,
    #[command(flatten)]
    pub engine: EngineArgs,
}

fn parse_task(s: &str) -> Result<crate::repository::Task, String> {
    use crate::repository::Task;
    match s {
        "binary_classification" => Ok(Task::BinaryClassification),
        "multiclass_classification" => Ok(Task::MulticlassClassification),
        "regression" => Ok(Task::Regression),
        "clustering" => Ok(Task::Clustering),
        _ => Err(
            "expected binary_classification, multiclass_classification, regression or clustering"
                .into(),
        ),
    }
}

#[derive(Debug, Subcommand)]
pub enum SegmentsCommand {
    /// Compile and type-check a segments file against a model repository's
    /// manifests (the highest version of each model; models are not loaded)
    /// and print each segment's state; exit 1 if any segment is refused.
    Check {
        /// The rules file (segments.toml).
        file: PathBuf,
        /// Model repository whose features and models the rules may name.
        #[arg(
            long,
            env = "SEGSCORE_MODEL_REPOSITORY",
            default_value = "models",
            value_name = "DIR"
        )]
        model_repository: PathBuf,
    },
    /// Segment sizes in a scored CSV file (an id column plus boolean
    /// `segment:<name>` columns) and, with --baseline, their change: size
    /// change, members entering and leaving, Jaccard overlap of member ids.
    Stats {
        /// The scored file.
        #[arg(long, env = "SEGSCORE_STATS_INPUT")]
        input: PathBuf,
        /// An earlier scored file to compare with.
        #[arg(long, env = "SEGSCORE_STATS_BASELINE")]
        baseline: Option<PathBuf>,
        /// The id column that matches rows between the two files.
        #[arg(long, env = "SEGSCORE_ID_COLUMN", default_value = "customer_id")]
        id_column: String,
        /// Print one JSON object per segment instead of a table.
        #[arg(long, env = "SEGSCORE_STATS_JSON")]
        json: bool,
    },
}

/// How models are run; shared by every subcommand that scores.
#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Path to libonnxruntime.so (from the PyPI onnxruntime wheel). Default:
    /// searched in the project's .venv.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_dylib_path: Option<PathBuf>,
    /// Worker threads per model version, each owning its own session.
    /// Default: the number of cores.
    #[arg(long, env = "SEGSCORE_WORKERS")]
    pub workers: Option<usize>,
    /// ONNX Runtime intra-op threads per session (1 keeps workers from
    /// oversubscribing the cores).
    #[arg(long, env = "SEGSCORE_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
    /// Largest number of rows a worker scores at once; bigger requests are
    /// split and reassembled in order.
    #[arg(long, env = "SEGSCORE_MAX_BATCH_ROWS", default_value_t = 4096)]
    pub max_batch_rows: usize,
    /// Chunks that may wait per model version; a request that does not fit
    /// gets RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "SEGSCORE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Dynamic batching: merge queued requests into one model call
    /// (`--batching false` scores each request chunk alone).
    #[arg(long, env = "SEGSCORE_BATCHING", default_value_t = true, action = clap::ArgAction::Set)]
    pub batching: bool,
    /// Extra microseconds a partly full batch waits for more rows. 0 batches
    /// only what queued while the workers were busy, adding no latency.
    #[arg(long, env = "SEGSCORE_MAX_QUEUE_DELAY_US", default_value_t = 0)]
    pub max_queue_delay_us: u64,
    /// Validation gate: the longest a warm-up batch of 1,024 rows may take on
    /// one worker (best of three runs) before the version is refused. A
    /// manifest's `[golden] latency_budget_ms` takes precedence.
    #[arg(long, env = "SEGSCORE_LATENCY_BUDGET_MS", default_value_t = 250.0)]
    pub latency_budget_ms: f64,
    /// Serving versions older than the default kept loaded per model for
    /// instant rollback; older ones are unloaded (RETIRED) and reloaded from
    /// disk if a label or a rollback points at them again. Labelled versions
    /// and versions newer than the default always stay loaded.
    #[arg(long, env = "SEGSCORE_KEEP_VERSIONS", default_value_t = 2)]
    pub keep_versions: usize,
    /// Largest model file a version may have, in bytes; a bigger one (or
    /// one that grows past it while being read) refuses the version. The
    /// default is the largest shipped model ×100, rounded up (16 MiB).
    #[arg(long, env = "SEGSCORE_MAX_MODEL_BYTES", default_value_t = crate::repository::files::DEFAULT_MAX_MODEL_BYTES)]
    pub max_model_bytes: u64,
    /// Library-only: wraps each serving backend (tests use it to control a
    /// model's latency); never set from the command line.
    #[arg(skip)]
    pub backend_wrapper: Option<crate::engine::BackendWrapper>,
}

impl EngineArgs {
    pub fn engine_config(&self) -> EngineConfig {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        EngineConfig {
            workers: self.workers.unwrap_or(cores).max(1),
            intra_threads: self.intra_threads.max(1),
            batcher: BatcherConfig {
                max_batch_rows: self.max_batch_rows.max(1),
                max_queue_delay: Duration::from_micros(self.max_queue_delay_us),
                queue_capacity: self.queue_capacity.max(1),
                batching: self.batching,
            },
            ort_dylib_path: self.ort_dylib_path.clone(),
            latency_budget: Duration::from_secs_f64(self.latency_budget_ms.max(0.0) / 1000.0),
            keep_versions: self.keep_versions,
            max_model_bytes: self.max_model_bytes,
            metrics: None,
            backend_wrapper: self.backend_wrapper.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Model repository root: <DIR>/<name>/<version>/model.toml.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    /// Segment rules file (CEL rules over features and scores; see the
    /// README). Reloaded when it changes; none = no segments.
    #[arg(long, env = "SEGSCORE_SEGMENTS")]
    pub segments: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "SEGSCORE_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,
    /// Largest request, in rows; larger requests get RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "SEGSCORE_MAX_ROWS_PER_REQUEST",
        default_value_t = 1_000_000
    )]
    pub max_rows_per_request: usize,
    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "SEGSCORE_MAX_MESSAGE_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// ScoreStream chunks scored concurrently per stream.
    #[arg(long, env = "SEGSCORE_STREAM_IN_FLIGHT", default_value_t = 4)]
    pub stream_in_flight: usize,
    /// How often the model directory is rescanned for new, changed or removed
    /// versions and labels, in milliseconds (file events also trigger a
    /// rescan at once); 0 turns watching off.
    #[arg(long, env = "SEGSCORE_WATCH_INTERVAL_MS", default_value_t = 2000)]
    pub watch_interval_ms: u64,
    /// Serve Prometheus metrics on http://ADDR/metrics (off by default).
    #[arg(long, env = "SEGSCORE_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Scoring requests (Score, ScoreStream, ModelInfer) handled at once;
    /// more get RESOURCE_EXHAUSTED at once instead of queueing.
    #[arg(long, env = "SEGSCORE_MAX_CONCURRENT_REQUESTS", default_value_t = 2048)]
    pub max_concurrent_requests: usize,
    /// Deadline given to requests that carry no `grpc-timeout`, in
    /// milliseconds (0 = none); work past it is abandoned. ScoreStream
    /// applies it to each chunk, not to the whole stream.
    #[arg(long, env = "SEGSCORE_DEFAULT_DEADLINE_MS", default_value_t = 30_000)]
    pub default_deadline_ms: u64,
    /// Concurrent HTTP/2 streams (requests) per client connection.
    #[arg(long, env = "SEGSCORE_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive: ping idle connections this often (seconds, 0 = off)...
    #[arg(long, env = "SEGSCORE_HTTP2_KEEPALIVE_SECS", default_value_t = 30)]
    pub http2_keepalive_secs: u64,
    /// ...and close them when a ping is not answered within this (seconds).
    #[arg(
        long,
        env = "SEGSCORE_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        default_value_t = 10
    )]
    pub http2_keepalive_timeout_secs: u64,
    /// Close connections after this many seconds (0 = never), so clients
    /// rebalance across replicas; in-flight requests get a grace period.
    #[arg(long, env = "SEGSCORE_MAX_CONNECTION_AGE_SECS", default_value_t = 0)]
    pub max_connection_age_secs: u64,
    /// PEM certificate (chain) to serve TLS with; needs --tls-key.
    #[arg(long, env = "SEGSCORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "SEGSCORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it signed (mTLS).
    #[arg(long, env = "SEGSCORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// File of accepted bearer tokens, one `ROLE:TOKEN` per line (ROLE
    /// `score` or `admin`; a bare TOKEN is `score`). With tokens set, calls
    /// without an accepted `authorization: Bearer <token>` get
    /// UNAUTHENTICATED, and a score token calling an admin RPC gets
    /// PERMISSION_DENIED.
    #[arg(long, env = "SEGSCORE_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Accepted bearer tokens, comma-separated `ROLE:TOKEN` entries (as in
    /// --auth-tokens-file). Prefer the environment variable or the file:
    /// command lines are visible to other users.
    #[arg(
        long,
        env = "SEGSCORE_AUTH_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_tokens: Vec<crate::security::Token>,
    /// Require the token for grpc.health.v1 and reflection too (open by
    /// default, so probes and grpcurl need no secret).
    #[arg(long, env = "SEGSCORE_AUTH_HEALTH", default_value_t = false, action = clap::ArgAction::Set)]
    pub auth_health: bool,
    /// Seconds to wait for in-flight requests at shutdown before exiting.
    #[arg(long, env = "SEGSCORE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl ServeArgs {
    /// Arguments for tests and embedding: defaults, the given model
    /// repository, an ephemeral port.
    pub fn for_models(model_repository: impl Into<PathBuf>) -> Self {
        let mut args = ServeArgs::parse_from_defaults();
        args.model_repository = model_repository.into();
        args.addr = "127.0.0.1:0"
            .parse()
            .expect("literal address; this is a bug");
        args
    }

    fn parse_from_defaults() -> Self {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            serve: ServeArgs,
        }
        Wrapper::parse_from(["segscore"]).serve
    }

    pub fn watch_interval(&self) -> Option<Duration> {
        (self.watch_interval_ms > 0).then(|| Duration::from_millis(self.watch_interval_ms))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    pub fn default_deadline(&self) -> Option<Duration> {
        (self.default_deadline_ms > 0).then(|| Duration::from_millis(self.default_deadline_ms))
    }

    fn secs(value: u64) -> Option<Duration> {
        (value > 0).then(|| Duration::from_secs(value))
    }

    pub fn http2_keepalive(&self) -> Option<Duration> {
        Self::secs(self.http2_keepalive_secs)
    }

    pub fn http2_keepalive_timeout(&self) -> Option<Duration> {
        Self::secs(self.http2_keepalive_timeout_secs)
    }

    pub fn max_connection_age(&self) -> Option<Duration> {
        Self::secs(self.max_connection_age_secs)
    }

    /// Rejects values no server can run with.
    pub fn validate(&self) -> Result<(), String> {
        if !self.model_repository.is_dir() {
            return Err(format!(
                "--model-repository {}: not a directory (point it at the model repository)",
                self.model_repository.display()
            ));
        }
        if let Some(file) = self.segments.as_ref().filter(|f| !f.is_file()) {
            return Err(format!(
                "--segments {}: not a file (point it at a segments.toml rules file)",
                file.display()
            ));
        }
        if self.max_rows_per_request == 0 || self.engine.max_batch_rows == 0 {
            return Err("--max-rows-per-request and --max-batch-rows must be at least 1".into());
        }
        if self.engine.workers == Some(0) {
            return Err("--workers must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    /// Input file, CSV (`.csv`) or Parquet (`.parquet`, `.pq`): an id column
    /// plus feature columns (CSV: header row required). Read in chunks of
    /// --batch-rows, never whole.
    #[arg(long, env = "SEGSCORE_INPUT")]
    pub input: PathBuf,
    /// Output file, Parquet (`.parquet`, `.pq`) or CSV (`.csv`): the id column
    /// plus one score column per model, in input order. Parquet carries the
    /// models' names, versions and sha256 in its key-value metadata; CSV gets
    /// them in `<output>.meta.json`.
    #[arg(long, env = "SEGSCORE_OUTPUT")]
    pub output: PathBuf,
    /// Models to apply (comma-separated, `name` or `name:version`). Default:
    /// every model with a serving version.
    #[arg(long, env = "SEGSCORE_SCORE_MODELS", value_delimiter = ',')]
    pub models: Vec<String>,
    /// Segments to evaluate (comma-separated names from the rules file): one
    /// `segment:<name>` boolean column each (null where the rule errored on
    /// the row). The models the rules read are scored and written too.
    #[arg(long, env = "SEGSCORE_SCORE_SEGMENTS", value_delimiter = ',')]
    pub segments: Vec<String>,
    /// Embedded scoring: the segment rules file (a server uses its own).
    #[arg(long, env = "SEGSCORE_SEGMENTS_FILE", default_value = "segments.toml")]
    pub segments_file: PathBuf,
    /// The id column, copied to the output and never logged.
    #[arg(long, env = "SEGSCORE_ID_COLUMN", default_value = "customer_id")]
    pub id_column: String,
    /// Rows per chunk: one ScoreStream request (remote) or one scoring call
    /// (embedded). CSV shards and --resume positions are counted in chunks, so
    /// keep it the same across shards and resumed runs.
    #[arg(long, env = "SEGSCORE_BATCH_ROWS", default_value_t = 4096)]
    pub batch_rows: usize,
    /// Server to score against (http://host:port, or host:port for plain
    /// http); repeat (or comma-separate) to spread chunks over several
    /// servers, one ScoreStream each. None = score in-process.
    #[arg(
        long,
        env = "SEGSCORE_SCORE_ADDR",
        value_delimiter = ',',
        value_parser = server_url
    )]
    pub addr: Vec<String>,
    /// Chunks in flight per server stream (remote) or in the in-process
    /// engine (embedded); bounds memory together with --batch-rows.
    #[arg(long, env = "SEGSCORE_IN_FLIGHT", default_value_t = 4)]
    pub in_flight: usize,
    /// Score only shard K of N (K from 0): Parquet row groups i with
    /// i % N == K; CSV chunks (of --batch-rows rows) c with c % N == K. The N
    /// shards' outputs together hold every row exactly once.
    #[arg(long, env = "SEGSCORE_SHARD")]
    pub shard: Option<Shard>,
    /// Continue an interrupted run from its last committed part (see
    /// `<output>.parts/`), without duplicating or losing rows. Without it, a
    /// leftover `<output>.parts/` is discarded and the job starts over.
    #[arg(long, env = "SEGSCORE_RESUME", default_value_t = false)]
    pub resume: bool,
    /// Where rows with invalid values go (CSV: row,column,reason; row = the
    /// 0-based data row index in the input). Default: `<output>.rejects.csv`.
    /// Not written when no row is rejected (an earlier run's is removed).
    #[arg(long, env = "SEGSCORE_REJECTS")]
    pub rejects: Option<PathBuf>,
    /// Fail on the first invalid row (naming its row and column) instead of
    /// writing it to the rejects file.
    #[arg(long, env = "SEGSCORE_STRICT", default_value_t = false)]
    pub strict: bool,
    /// A model version the job needs that cannot be used (it failed to load
    /// or validate) fails the job. The version needed is the pinned one for
    /// `name:version`; for a bare `name`, and for every model when --models
    /// is not given, it is the `stable` label's version, else the highest
    /// version in the repository (remote: listed by the first server). With
    /// this flag an unpinned model falls back to the version that serves
    /// instead, with a warning; the summary and the output's `fallbacks`
    /// metadata name it. A pinned version never falls back.
    #[arg(long, env = "SEGSCORE_ALLOW_FALLBACK", default_value_t = false)]
    pub allow_fallback: bool,
    /// Output rows per committed part: the unit --resume restarts from.
    #[arg(long, env = "SEGSCORE_PART_ROWS", default_value_t = 1_000_000)]
    pub part_rows: usize,
    /// Test hook: exit abruptly after committing this many parts, leaving the
    /// next part half written, as a crash would.
    #[arg(long, hide = true)]
    pub fail_after_parts: Option<usize>,
    /// Model repository for in-process scoring.
    #[arg(
        long,
        env = "SEGSCORE_MODEL_REPOSITORY",
        default_value = "models",
        value_name = "DIR"
    )]
    pub model_repository: PathBuf,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// `--shard K/N`: the K-th (from 0) of N shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Whether unit `i` (a row group or a chunk) belongs to this shard.
    pub fn owns(&self, i: u64) -> bool {
        i % self.count == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}`: expected K/N with 0 <= K < N, e.g. 0/8");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: u64 = k.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

/// `score --addr`: a server's URL. A bare `host:port` means plain-text
/// HTTP/2 (`http://host:port`), as the server's own `--addr` is written.
fn server_url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let url = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    let uri: tonic::transport::Uri = url.parse().map_err(|e| {
        format!("`{value}` is not a server address ({e}); expected host:port or http://host:port")
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(format!(
            "`{value}` is not a server address; expected host:port or http://host:port"
        ));
    }
    Ok(url)
}

/// An old spelling of an option, still accepted with a warning. Before
/// `--model-repository` the repository was `--models` on some subcommands and
/// `--models-dir` on `score` (where `--models` is the list of models), and
/// `SEGSCORE_MODELS` meant the directory wherever it was read.
struct Deprecated {
    /// The subcommand, e.g. `["segments", "check"]`.
    path: &'static [&'static str],
    /// Id of the hidden argument that takes the old spelling.
    id: &'static str,
    long: &'static str,
    env: Option<&'static str>,
    /// Id of the argument it stands for.
    replacement: &'static str,
}

const DEPRECATED: &[Deprecated] = &[
    Deprecated {
        path: &["serve"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["score"],
        id: "deprecated_models_dir",
        long: "models-dir",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["segments", "check"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["train"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
    Deprecated {
        path: &["bench"],
        id: "deprecated_models",
        long: "models",
        env: Some("SEGSCORE_MODELS"),
        replacement: "model_repository",
    },
];

/// The command line's definition: the derived [`Cli`] plus a hidden argument
/// for each [`DEPRECATED`] spelling, so clap parses the old spellings exactly
/// as it parses the new ones.
pub fn command() -> clap::Command {
    fn at(cmd: clap::Command, path: &[&str], arg: Arg) -> clap::Command {
        match path {
            [] => cmd.arg(arg),
            [first, rest @ ..] => cmd.mut_subcommand(first, |sub| at(sub, rest, arg)),
        }
    }
    DEPRECATED.iter().fold(Cli::command(), |cmd, d| {
        let mut arg = Arg::new(d.id)
            .long(d.long)
            .value_name("DIR")
            .value_parser(clap::value_parser!(PathBuf))
            .hide(true);
        if let Some(env) = d.env {
            arg = arg.env(env);
        }
        at(cmd, d.path, arg)
    })
}

/// Why the command line could not become a [`Cli`].
#[derive(Debug)]
pub enum ParseError {
    /// A usage error on the command line or in the environment, or `--help`
    /// / `--version`: [`clap::Error::exit`] prints it with its exit code.
    Usage(clap::Error),
    /// The `--config` file cannot be read, or holds a key or value no option
    /// of the subcommand takes; names the file and the key.
    Config(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(e) => write!(f, "{}", clap_message(e)),
            Self::Config(message) => f.write_str(message),
        }
    }
}

/// A clap error's message on one line, without its `error: ` prefix and
/// usage footer.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let message = text.split("\n\n").next().unwrap_or_default();
    let message = message.strip_prefix("error: ").unwrap_or(message);
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The parsed command line and the deprecation warnings it earned (each
/// once), for the caller to print.
#[derive(Debug)]
pub struct Parsed {
    pub cli: Cli,
    pub warnings: Vec<String>,
}

/// Parses the process's command line; see [`parse_from`].
pub fn parse() -> Result<Parsed, ParseError> {
    parse_from(std::env::args_os())
}

/// Parses a command line (flags, then env vars, through clap), then fills the
/// options still at their defaults from the `--config` TOML file, and the
/// model repository from a deprecated spelling.
///
/// File values are added to the command line as `--key=value` flags and the
/// whole is parsed again, so they go through the same clap value parsers and
/// checks as flags (and a required option such as `score --input` may come
/// from the file). A key is checked against the subcommand's declared options
/// (flattened and global ones included), whether or not they got a value.
pub fn parse_from<I, T>(args: I) -> Result<Parsed, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = command();
    cmd.build();
    let full = |argv: &[OsString]| {
        let matches = cmd.clone().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches)
    };
    // Lenient first pass: only where the file is, which subcommand runs and
    // where each value came from. Missing required options may be in the
    // file; any other error (and --help) is reported by the full parse.
    let Ok(first) = command().ignore_errors(true).try_get_matches_from(&args) else {
        let cli = full(&args).map_err(ParseError::Usage)?;
        return Ok(Parsed {
            cli,
            warnings: Vec::new(),
        });
    };
    let mut path = Vec::new();
    let mut matches = &first;
    let mut leaf = &cmd;
    while let Some((name, sub)) = matches.subcommand() {
        path.push(name.to_owned());
        matches = sub;
        leaf = leaf
            .find_subcommand(name)
            .expect("clap matched this subcommand; this is a bug");
    }
    // Options set by a flag or an env var: the file does not override them.
    let mut set: HashSet<String> = leaf
        .get_arguments()
        .filter(|a| {
            matches!(
                matches.value_source(a.get_id().as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        })
        .map(|a| a.get_id().to_string())
        .collect();
    let mut warnings = Vec::new();
    let mut warn = |text: String| {
        if !warnings.contains(&text) {
            warnings.push(text);
        }
    };
    let mut added = Vec::new();
    for d in DEPRECATED.iter().filter(|d| d.path == path) {
        let source = matches.value_source(d.id);
        match (source, d.env) {
            (Some(ValueSource::CommandLine), _) => warn(format!(
                "`segscore {} --{}` is deprecated; use --{}",
                path.join(" "),
                d.long,
                d.replacement.replace('_', "-")
            )),
            (Some(ValueSource::EnvVariable), Some(env)) => warn(format!(
                "{env} is deprecated; use SEGSCORE_{}",
                d.replacement.to_uppercase()
            )),
            _ => continue,
        }
        let replacement_source = matches.value_source(d.replacement);
        let outranked = match replacement_source {
            Some(ValueSource::CommandLine) => true,
            Some(ValueSource::EnvVariable) => source != Some(ValueSource::CommandLine),
            _ => false,
        };
        if !outranked {
            let value = matches
                .get_raw(d.id)
                .into_iter()
                .flatten()
                .next()
                .expect("a deprecated option with a source has a value; this is a bug");
            added.push(flag(&d.replacement.replace('_', "-"), value));
        }
        set.insert(d.replacement.to_owned());
    }
    let config = first.get_one::<PathBuf>("config");
    let from_file = match config {
        Some(file) => file_flags(file, leaf, &path, &set, &mut warn)?,
        None => Vec::new(),
    };
    if added.is_empty() && from_file.is_empty() {
        let cli = full(&args).map_err(ParseError::Usage)?;
        return Ok(Parsed { cli, warnings });
    }
    // Before a `--`, after which everything is positional.
    let at = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let splice = |extra: &[OsString]| {
        let mut argv = args[..at].to_vec();
        argv.extend_from_slice(extra);
        argv.extend_from_slice(&args[at..]);
        argv
    };
    let without_file = splice(&added);
    added.extend(from_file);
    match full(&splice(&added)) {
        Ok(cli) => Ok(Parsed { cli, warnings }),
        // A required option neither given nor in the file is a usage error.
        Err(e) if e.kind() == clap::error::ErrorKind::MissingRequiredArgument => {
            Err(ParseError::Usage(e))
        }
        Err(e) => {
            // The same error without the file's values is the command line's
            // (or the environment's) to report; a new one is the file's.
            let what = |e: &clap::Error| {
                (
                    e.kind(),
                    e.get(ContextKind::InvalidArg).map(ToString::to_string),
                    e.get(ContextKind::InvalidValue).map(ToString::to_string),
                )
            };
            match full(&without_file) {
                Err(without) if what(&without) == what(&e) => Err(ParseError::Usage(e)),
                _ => Err(ParseError::Config(format!(
                    "--config {}: {}",
                    config.map_or(String::new(), |f| f.display().to_string()),
                    clap_message(&e)
                ))),
            }
        }
    }
}

fn flag(long: &str, value: &OsStr) -> OsString {
    let mut flag = OsString::from(format!("--{long}="));
    flag.push(value);
    flag
}

/// The `--config` file's keys as flags of the subcommand `leaf`, leaving out
/// options in `set` (given by a flag or an env var, which take precedence).
fn file_flags(
    file: &Path,
    leaf: &clap::Command,
    path: &[String],
    set: &HashSet<String>,
    warn: &mut dyn FnMut(String),
) -> Result<Vec<OsString>, ParseError> {
    let fail = |what: String| ParseError::Config(format!("--config {}: {what}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        fail(
            e.message().to_owned()
                + &e.span().map_or(String::new(), |s| {
                    let line = text[..s.start].lines().count().max(1);
                    format!(" (line {line})")
                }),
        )
    })?;
    let mut flags = Vec::new();
    for (key, value) in &table {
        let kebab = key.replace('_', "-");
        let found = leaf.get_arguments().find(|a| {
            let id = a.get_id().as_str();
            is_option(a)
                && id != "config"
                && (a.get_long() == Some(kebab.as_str()) || id == key.replace('-', "_"))
        });
        let Some(mut arg) = found else {
            return Err(fail(format!(
                "unknown option `{key}` for `segscore {}` (keys are its long options: `segscore {} --help`)",
                path.join(" "),
                path.join(" ")
            )));
        };
        if let Some(d) = DEPRECATED
            .iter()
            .find(|d| d.path == path && d.id == arg.get_id().as_str())
        {
            warn(format!(
                "--config {}: `{key}` is deprecated; use `{}`",
                file.display(),
                d.replacement
            ));
            arg = leaf
                .get_arguments()
                .find(|a| a.get_id().as_str() == d.replacement)
                .expect("a deprecated option's replacement exists; this is a bug");
        }
        let id = arg.get_id().as_str();
        if set.contains(id) {
            continue;
        }
        let long = arg
            .get_long()
            .expect("options have a long name; this is a bug");
        let bad = |why: &str| fail(format!("`{key}`: {why}"));
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(on)) => {
                if *on {
                    flags.push(OsString::from(format!("--{long}")));
                }
            }
            (ArgAction::SetTrue, _) => return Err(bad("expected true or false")),
            (ArgAction::Append, toml::Value::Array(items)) => {
                for item in items {
                    let text = scalar(item).ok_or_else(|| bad("expected a list of values"))?;
                    flags.push(flag(long, OsStr::new(&text)));
                }
            }
            (_, toml::Value::Array(_)) => return Err(bad("takes one value, not a list")),
            (_, value) => {
                let text = scalar(value).ok_or_else(|| bad("expected a value, not a table"))?;
                flags.push(flag(long, OsStr::new(&text)));
            }
        }
    }
    Ok(flags)
}

/// An option that takes or sets a value (not `--help` or `--version`).
fn is_option(arg: &Arg) -> bool {
    arg.get_long().is_some()
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// A TOML value as the command line would spell it.
fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(_)
        | toml::Value::Float(_)
        | toml::Value::Boolean(_)
        | toml::Value::Datetime(_) => Some(value.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    /// A `--config` file with `text` in a fresh directory.
    fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segscore.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    fn parse_args(args: &[&str]) -> Result<Parsed, ParseError> {
        parse_from(std::iter::once("segscore").chain(args.iter().copied()))
    }

    fn serve(args: &[&str]) -> (ServeArgs, Vec<String>) {
        let parsed = parse_args(&[&["serve"], args].concat()).unwrap();
        match parsed.cli.command {
            Command::Serve(serve) => (serve, parsed.warnings),
            other => panic!("not serve: {other:?}"),
        }
    }

    fn score(args: &[&str]) -> (ScoreArgs, Vec<String>) {
        let parsed = parse_args(&[&["score"], args].concat()).unwrap();
        match parsed.cli.command {
            Command::Score(score) => (score, parsed.warnings),
            other => panic!("not score: {other:?}"),
        }
    }

    fn config_error(args: &[&str]) -> String {
        match parse_args(args) {
            Err(ParseError::Config(message)) => message,
            other => panic!("expected a --config error, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_any_option_of_serve_including_flattened_and_list_ones() {
        let (_dir, file) = config_file(
            r#"
            metrics_addr = "127.0.0.1:9464"
            workers = 3
            segments = "rules.toml"
            max-batch-rows = 512
            batching = false
            auth_tokens = ["first", "second"]
            log_format = "json"
            "#,
        );
        let parsed = parse_args(&["serve", "--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(parsed.cli.log_format, LogFormat::Json);
        let Command::Serve(args) = parsed.cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(args.engine.workers, Some(3));
        assert_eq!(args.segments, Some(PathBuf::from("rules.toml")));
        assert_eq!(args.engine.max_batch_rows, 512);
        assert!(!args.engine.batching);
        assert_eq!(args.auth_tokens.len(), 2);
        // Untouched options keep their defaults.
        assert_eq!(args.engine.intra_threads, 1);
        assert_eq!(args.model_repository, PathBuf::from("models"));
    }

    #[test]
    fn a_flag_beats_the_file_and_the_file_beats_the_default() {
        let (_dir, file) = config_file("workers = 5\naddr = \"127.0.0.1:7000\"\n");
        let file = file.to_str().unwrap();
        let (args, _) = serve(&["--workers", "2", "--config", file]);
        assert_eq!(args.engine.workers, Some(2));
        assert_eq!(args.addr, "127.0.0.1:7000".parse().unwrap());
        // Global, so it may also come after the subcommand's own flags or
        // before the subcommand.
        let parsed = parse_args(&["--config", file, "serve"]).unwrap();
        let Command::Serve(args) = parsed.cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.engine.workers, Some(5));
    }

    #[test]
    fn score_takes_required_options_lists_and_switches_from_the_file() {
        let (_dir, file) = config_file(
            r#"
            input = "in.parquet"
            output = "out.parquet"
            models = ["churn:1", "ltv"]
            addr = ["127.0.0.1:50051", "http://10.0.0.2:50051"]
            resume = true
            strict = false
            model_repository = "repo"
            "#,
        );
        let (args, warnings) = score(&["--config", file.to_str().unwrap()]);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(args.input, PathBuf::from("in.parquet"));
        assert_eq!(args.models, ["churn:1", "ltv"]);
        assert_eq!(
            args.addr,
            ["http://127.0.0.1:50051", "http://10.0.0.2:50051"]
        );
        assert!(args.resume);
        assert!(!args.strict);
        assert_eq!(args.model_repository, PathBuf::from("repo"));
        // A list on the command line replaces the file's, not adds to it.
        let (args, _) = score(&["--config", file.to_str().unwrap(), "--models", "churn"]);
        assert_eq!(args.models, ["churn"]);
    }

    #[test]
    fn every_subcommand_with_options_reads_the_file() {
        let (_dir, file) = config_file("model_repository = \"repo\"\n");
        let file = file.to_str().unwrap();
        let parsed = parse_args(&["segments", "check", "rules.toml", "--config", file]).unwrap();
        assert!(matches!(
            parsed.cli.command,
            Command::Segments(SegmentsCommand::Check { model_repository, .. })
                if model_repository == Path::new("repo")
        ));
        let (_dir, train) = config_file(
            "train = \"t.csv\"\nvalid = \"v.csv\"\nname = \"churn\"\nversion = 3\nmodel_repository = \"repo\"\n",
        );
        let parsed = parse_args(&["train", "--config", train.to_str().unwrap()]).unwrap();
        let Command::Train(args) = parsed.cli.command else {
            panic!("not train")
        };
        assert_eq!((args.version, args.model_repository), (3, "repo".into()));
        let (_dir, validate) = config_file("workers = 1\n");
        let parsed = parse_args(&[
            "models",
            "validate",
            "models",
            "--config",
            validate.to_str().unwrap(),
        ])
        .unwrap();
        assert!(matches!(
            parsed.cli.command,
            Command::Models(ModelsCommand::Validate { engine, .. }) if engine.workers == Some(1)
        ));
    }

    #[test]
    fn an_unknown_key_names_the_key_the_file_and_the_subcommand() {
        let (_dir, file) = config_file("workers = 2\nmetrics_adr = \"127.0.0.1:9464\"\n");
        let file = file.to_str().unwrap();
        let message = config_error(&["serve", "--config", file]);
        assert!(message.contains("`metrics_adr`"), "{message}");
        assert!(message.contains(file), "{message}");
        assert!(message.contains("segscore serve"), "{message}");
        // A positional argument and `config` itself are not keys.
        let (_dir, file) = config_file("config = \"other.toml\"\n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("`config`"), "{message}");
        // An option of another subcommand is unknown here.
        let (_dir, file) = config_file("metrics_addr = \"127.0.0.1:9464\"\n");
        let message = config_error(&[
            "segments",
            "check",
            "rules.toml",
            "--config",
            file.to_str().unwrap(),
        ]);
        assert!(message.contains("`metrics_addr`"), "{message}");
    }

    #[test]
    fn a_bad_value_in_the_file_is_the_file_s_error() {
        let (_dir, file) = config_file("metrics_addr = \"not an address\"\n");
        let file = file.to_str().unwrap();
        let message = config_error(&["serve", "--config", file]);
        assert!(message.contains(file), "{message}");
        assert!(message.contains("--metrics-addr"), "{message}");
        assert!(!message.contains('\n'), "one line: {message}");
        let (_dir, file) = config_file("workers = [1, 2]\n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("`workers`: takes one value"), "{message}");
        let (_dir, file) = config_file("input = \"i.csv\"\noutput = \"o.csv\"\nresume = \"yes\"\n");
        let message = config_error(&["score", "--config", file.to_str().unwrap()]);
        assert!(
            message.contains("`resume`: expected true or false"),
            "{message}"
        );
        let (_dir, file) = config_file("workers = \n");
        let message = config_error(&["serve", "--config", file.to_str().unwrap()]);
        assert!(message.contains("line 1"), "{message}");
        let message = config_error(&["serve", "--config", "/nonexistent/segscore.toml"]);
        assert!(message.contains("/nonexistent/segscore.toml"), "{message}");
        // A bad flag stays the command line's error, even with a file.
        let (_dir, file) = config_file("workers = 2\n");
        let e = parse_args(&[
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--max-batch-rows",
            "many",
        ]);
        assert!(matches!(e, Err(ParseError::Usage(_))), "{e:?}");
        // So is a required option in neither place.
        let (_dir, file) = config_file("input = \"i.csv\"\n");
        let e = parse_args(&["score", "--config", file.to_str().unwrap()]);
        assert!(
            matches!(&e, Err(ParseError::Usage(e))
                if e.kind() == clap::error::ErrorKind::MissingRequiredArgument),
            "{e:?}"
        );
    }

    #[test]
    fn old_spellings_of_the_model_repository_still_work_with_one_warning() {
        let (args, warnings) = serve(&["--models", "old"]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert_eq!(
            warnings,
            ["`segscore serve --models` is deprecated; use --model-repository"]
        );
        let (args, warnings) = score(&[
            "--input",
            "i.csv",
            "--output",
            "o.csv",
            "--models-dir",
            "old",
        ]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert!(
            args.models.is_empty(),
            "--models-dir is not a list of models"
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // On score `--models` is the list of models, not deprecated.
        let (args, warnings) =
            score(&["--input", "i.csv", "--output", "o.csv", "--models", "churn"]);
        assert_eq!(args.models, ["churn"]);
        assert_eq!(args.model_repository, PathBuf::from("models"));
        assert!(warnings.is_empty(), "{warnings:?}");
        let parsed = parse_args(&["segments", "check", "rules.toml", "--models", "old"]).unwrap();
        assert_eq!(parsed.warnings.len(), 1);
        assert!(matches!(
            parsed.cli.command,
            Command::Segments(SegmentsCommand::Check { model_repository, .. })
                if model_repository == Path::new("old")
        ));
        let parsed = parse_args(&[
            "train",
            "--train",
            "t.csv",
            "--valid",
            "v.csv",
            "--name",
            "churn",
            "--version",
            "1",
            "--models",
            "old",
        ])
        .unwrap();
        let Command::Train(args) = parsed.cli.command else {
            panic!("not train")
        };
        assert_eq!(args.model_repository, PathBuf::from("old"));
        // The new spelling wins over the old one.
        let (args, _) = serve(&["--models", "old", "--model-repository", "new"]);
        assert_eq!(args.model_repository, PathBuf::from("new"));
        // The file's old key, too, and a flag still beats it.
        let (_dir, file) = config_file("models = \"old\"\n");
        let file = file.to_str().unwrap();
        let (args, warnings) = serve(&["--config", file]);
        assert_eq!(args.model_repository, PathBuf::from("old"));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("`models` is deprecated"),
            "{warnings:?}"
        );
        let (args, _) = serve(&["--config", file, "--model-repository", "new"]);
        assert_eq!(args.model_repository, PathBuf::from("new"));
    }

    #[test]
    fn every_option_reads_an_env_var() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if is_option(arg) && !arg.is_hide_set() && arg.get_env().is_none() {
                    missing.push(format!("{path} --{}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&command(), "segscore", &mut missing);
        assert!(
            missing.is_empty(),
            "options without an env var: {missing:?}"
        );
    }

    #[test]
    fn a_server_address_without_a_scheme_is_plain_http() {
        assert_eq!(
            server_url("127.0.0.1:50401").unwrap(),
            "http://127.0.0.1:50401"
        );
        assert_eq!(
            server_url("scorer.internal:50051").unwrap(),
            "http://scorer.internal:50051"
        );
        assert_eq!(server_url("https://h:443").unwrap(), "https://h:443");
        assert_eq!(
            server_url(" http://[::1]:50051 ").unwrap(),
            "http://[::1]:50051"
        );
        for bad in ["", "ftp://h:21", "http://", "a b:1"] {
            assert!(server_url(bad).is_err(), "{bad}");
        }
    }
}
