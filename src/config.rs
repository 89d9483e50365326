//! The option groups that several subcommands share and that the modules
//! running them consume: how models are run ([`EngineArgs`]), the server
//! ([`ServeArgs`]) and the bulk job ([`ScoreArgs`]). The command line that
//! holds them is [`crate::cli`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser};

use crate::{engine::BatcherConfig, repository::EngineConfig};

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
    /// Live drift monitoring (`on`/`off`): count every scored row's inputs
    /// and score against the version's `reference.json` and export the
    /// segscore_*_drift_psi gauges. Off saves the counting (a few percent
    /// of the CPU of a large request).
    #[arg(long, env = "SEGSCORE_DRIFT", default_value = "on", value_parser = on_off)]
    pub drift: bool,
    /// Rows the drift window covers per model version (the last N scored
    /// rows, in 10 buckets).
    #[arg(long, env = "SEGSCORE_DRIFT_WINDOW_ROWS", default_value_t = 100_000)]
    pub drift_window_rows: u64,
    /// Library-only: wraps each serving backend (tests use it to control a
    /// model's latency); never set from the command line.
    #[arg(skip)]
    pub backend_wrapper: Option<crate::engine::BackendWrapper>,
}

impl EngineArgs {
    /// The defaults, for tools that score a model once outside a server
    /// (`segscore train` writing a reference).
    pub fn offline() -> Result<Self, clap::Error> {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            engine: EngineArgs,
        }
        Only::try_parse_from(["segscore"]).map(|o| o.engine)
    }

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
            drift_window: crate::drift::WindowConfig {
                rows: self.drift_window_rows.max(1),
                ..Default::default()
            },
            backend_wrapper: self.backend_wrapper.clone(),
        }
    }
}

/// `on`/`off` (and the usual boolean spellings) for switches.
fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
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
    /// Segment rules file (CEL rules over features and scores; see
    /// docs/segments.md). Reloaded when it changes; none = no segments.
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
    /// HTTP listen address of the REST front end: KServe V2 REST
    /// (`/v2/...`), segscore JSON (`/v1/...`) and `/openapi.json`, with the
    /// same models, limits, tokens and TLS as gRPC (off by default).
    #[arg(long, env = "SEGSCORE_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Browser origin allowed to call the HTTP API (CORS), e.g.
    /// `https://shop.example`; repeat for more, `*` for any. None by
    /// default: browsers on other origins are refused.
    #[arg(long, env = "SEGSCORE_HTTP_CORS_ORIGIN", value_delimiter = ',')]
    pub http_cors_origin: Vec<String>,
    /// Largest HTTP request body, in bytes; larger ones get 413 (0 = the
    /// gRPC limit, --max-message-bytes).
    #[arg(long, env = "SEGSCORE_HTTP_MAX_BODY_BYTES", default_value_t = 0)]
    pub http_max_body_bytes: usize,
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

    /// The HTTP body cap: --http-max-body-bytes, else --max-message-bytes.
    pub fn http_max_body(&self) -> usize {
        if self.http_max_body_bytes > 0 {
            self.http_max_body_bytes
        } else {
            self.max_message_bytes
        }
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
        if self.http_addr.is_some() && self.tls_cert.is_some() {
            // Never serve in clear text what the operator asked to encrypt.
            return Err(
                "--http-addr does not serve TLS yet: with --tls-cert, put the HTTP \
                        front end behind a TLS-terminating proxy, or leave --http-addr unset"
                    .into(),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

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
