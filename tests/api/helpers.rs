//! `spawn_app()` and friends: start a server on an ephemeral port, hand back a
//! connected client, stop it with a oneshot.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use segscore::{
    app::Application,
    config::ServeArgs,
    engine::{Backend, BackendError, BackendWrapper},
    features::FeatureBatch,
    proto::pb::{self, scoring_client::ScoringClient},
    repository::{load::read_csv_batch, Manifest},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub fn shipped_models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

pub fn sample_users() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("training/sample_users.csv")
}

pub struct TestApp {
    pub addr: SocketAddr,
    /// Where /metrics is served, when the test asked for it.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the REST front end listens, when the test asked for it.
    pub http_addr: Option<SocketAddr>,
    pub client: ScoringClient<Channel>,
    pub repository: segscore::repository::SharedRepository,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Asks the server to stop and waits for it to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().expect("stopped twice").await?
    }

    pub fn trigger_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    pub async fn score(
        &self,
        request: pb::ScoreRequest,
    ) -> Result<pb::ScoreResponse, tonic::Status> {
        self.client
            .clone()
            .score(request)
            .await
            .map(|r| r.into_inner())
    }

    /// A connected segscore.v1 ModelAdmin client.
    pub async fn admin(&self) -> pb::model_admin_client::ModelAdminClient<Channel> {
        pb::model_admin_client::ModelAdminClient::connect(format!("http://{}", self.addr))
            .await
            .expect("admin client connects")
    }
}

/// The real `segscore serve` binary, started by `command` (which must log
/// JSON to stderr), with its log read on a thread so a server that never
/// says `serving` fails the test after a timeout instead of hanging it.
pub struct ServedBinary {
    child: std::process::Child,
    /// Log lines not read yet.
    pub log: std::sync::mpsc::Receiver<String>,
    /// The lines up to and including `serving`.
    pub seen: Vec<String>,
    /// The gRPC address from the `serving` line.
    pub addr: String,
}

impl ServedBinary {
    pub fn start(mut command: std::process::Command) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = command
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the segscore binary starts");
        let stderr = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (tx, log) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        while let Ok(line) = log.recv_timeout(std::time::Duration::from_secs(60)) {
            let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            seen.push(line);
            if json["fields"]["message"] == "serving" {
                if let Some(addr) = json["fields"]["addr"].as_str() {
                    let addr = addr.to_owned();
                    return Self {
                        child,
                        log,
                        seen,
                        addr,
                    };
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("no `serving` line; log: {seen:#?}");
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        self.child.wait().unwrap()
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&shipped_models(), |_| {}).await
}

pub async fn spawn_app_with(models: &Path, tweak: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let mut args = ServeArgs::for_models(models);
    args.engine.workers = Some(2);
    tweak(&mut args);
    let app = Application::build(args).await.expect("server builds");
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let http_addr = app.http_addr();
    let repository = app.repository().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    // Lazy: a TLS or auth test builds its own clients, and a plain client must
    // not fail here against a TLS server.
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_lazy();
    let client = ScoringClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX);
    TestApp {
        addr,
        metrics_addr,
        http_addr,
        client,
        repository,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// Reads a CSV (golden set or sample users) into a request matrix typed by a
/// model's manifest, plus the `extra` column's raw values.
pub fn csv_matrix(
    path: &Path,
    manifest: &Manifest,
    extra: &str,
) -> (pb::FeatureMatrix, Vec<String>) {
    let schema = segscore::features::FeatureSchema::new(manifest.features.clone()).unwrap();
    let (batch, extra): (FeatureBatch, Vec<String>) = read_csv_batch(path, &schema, extra).unwrap();
    (batch.into(), extra)
}

pub fn manifest(name: &str, version: u64) -> Manifest {
    Manifest::read(
        &shipped_models()
            .join(name)
            .join(version.to_string())
            .join("model.toml"),
    )
    .unwrap()
}

/// The highest shipped version of a model.
pub fn latest_version(name: &str) -> u64 {
    segscore::repository::scan(&shipped_models()).unwrap()[name]
        .keys()
        .copied()
        .max()
        .unwrap()
}

pub fn model(name: &str, version: u64) -> pb::ModelRef {
    pb::ModelRef {
        name: name.into(),
        version,
        label: String::new(),
    }
}

pub fn request(features: pb::FeatureMatrix, models: Vec<pb::ModelRef>) -> pb::ScoreRequest {
    pb::ScoreRequest {
        features: Some(features),
        models,
        ..Default::default()
    }
}

/// Copies the shipped repository into a temp dir so a test can break it.
pub fn copy_models() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&shipped_models(), dir.path());
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A column of `rows` copies of one typed value.
pub fn f32_col(name: &str, values: Vec<f32>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        name: name.into(),
        values: Some(pb::feature_column::Values::F32(pb::FloatValues { values })),
        missing_rows: vec![],
    }
}

pub fn i64_col(name: &str, values: Vec<i64>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        name: name.into(),
        values: Some(pb::feature_column::Values::I64(pb::Int64Values { values })),
        missing_rows: vec![],
    }
}

pub fn bool_col(name: &str, values: Vec<bool>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        name: name.into(),
        values: Some(pb::feature_column::Values::Bool(pb::BoolValues { values })),
        missing_rows: vec![],
    }
}

pub fn cat_col(name: &str, values: Vec<&str>) -> pb::FeatureColumn {
    pb::FeatureColumn {
        name: name.into(),
        values: Some(pb::feature_column::Values::Category(pb::StringValues {
            values: values.into_iter().map(str::to_owned).collect(),
        })),
        missing_rows: vec![],
    }
}

/// One complete, valid customer row (every feature present), `rows` times.
pub fn full_rows(rows: usize) -> Vec<pb::FeatureColumn> {
    vec![
        f32_col("recency_days", vec![12.0; rows]),
        i64_col("frequency", vec![7; rows]),
        f32_col("tenure_days", vec![400.0; rows]),
        f32_col("monetary_mean", vec![55.5; rows]),
        f32_col("monetary_total", vec![388.5; rows]),
        i64_col("purchases_90d", vec![2; rows]),
        i64_col("sessions_7d", vec![3; rows]),
        i64_col("cart_adds_7d", vec![1; rows]),
        i64_col("checkout_visits_7d", vec![2; rows]),
        bool_col("cart_abandoned_24h", vec![true; rows]),
        f32_col("email_engagement", vec![42.0; rows]),
        cat_col("region", vec!["europe"; rows]),
    ]
}

pub fn matrix(columns: Vec<pb::FeatureColumn>) -> pb::FeatureMatrix {
    pb::FeatureMatrix { rows: 0, columns }
}

/// |a - b| <= tol * max(1, |b|), the manifest's golden tolerance rule.
pub fn close(a: f32, b: f64, tol: f64) -> bool {
    (f64::from(a) - b).abs() <= tol * b.abs().max(1.0)
}

/// A model whose latency the test controls: every batch a wrapped backend is
/// given waits at the gate until the test opens it. "The worker is busy" is
/// then something the test causes and observes ([`Gate::wait_entered`]), the
/// same on a fast idle CPU and a slow loaded one.
#[derive(Clone, Default)]
pub struct Gate {
    state: std::sync::Arc<GateState>,
}

#[derive(Default)]
struct GateState {
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    /// Batches that reached a gated backend (waiting or through).
    entered: std::sync::atomic::AtomicUsize,
    entered_changed: tokio::sync::Notify,
}

impl Gate {
    /// A closed gate: batches wait until [`open`](Self::open).
    pub fn closed() -> Self {
        Self::default()
    }

    /// Lets every waiting and future batch through.
    pub fn open(&self) {
        *self.state.open.lock().unwrap() = true;
        self.state.opened.notify_all();
    }

    /// Makes batches that arrive from now on wait again.
    pub fn close(&self) {
        *self.state.open.lock().unwrap() = false;
    }

    /// Batches that have reached a gated backend so far.
    pub fn entered(&self) -> usize {
        self.state.entered.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `n` batches have reached a gated backend (bounded, so a
    /// request that never reaches a worker fails the test, not hangs it).
    pub async fn wait_entered(&self, n: usize) {
        let waited = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            loop {
                let changed = self.state.entered_changed.notified();
                if self.entered() >= n {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "only {} of {n} batches reached the model",
            self.entered()
        );
    }

    /// A wrapper that gates the backends of `model` only.
    pub fn wrapper(&self, model: &'static str) -> BackendWrapper {
        let gate = self.clone();
        BackendWrapper::new(move |name, inner| {
            if name == model {
                Box::new(GatedBackend {
                    inner,
                    gate: gate.clone(),
                })
            } else {
                inner
            }
        })
    }

    fn pass(&self) {
        self.state
            .entered
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.state.entered_changed.notify_waiters();
        let mut open = self.state.open.lock().unwrap();
        while !*open {
            open = self.state.opened.wait(open).unwrap();
        }
    }
}

struct GatedBackend {
    inner: Box<dyn Backend>,
    gate: Gate,
}

impl Backend for GatedBackend {
    fn score(&mut self, input: ndarray::ArrayView2<'_, f32>) -> Result<Vec<f32>, BackendError> {
        self.gate.pass();
        self.inner.score(input)
    }

    fn outputs_per_row(&self) -> usize {
        self.inner.outputs_per_row()
    }
}

/// Adds `models/<name>/<version>` as a copy of `<name>/<from>`, then lets
/// `breakage` damage it.
pub fn add_version(
    root: &Path,
    name: &str,
    from: u64,
    version: u64,
    breakage: impl FnOnce(&Path, &mut String),
) {
    let src = root.join(name).join(from.to_string());
    let dst = root.join(name).join(version.to_string());
    copy_dir(&src, &dst);
    let mut manifest = fs::read_to_string(dst.join("model.toml")).unwrap();
    manifest = manifest.replace(
        &format!("version = {from}\n"),
        &format!("version = {version}\n"),
    );
    breakage(&dst, &mut manifest);
    fs::write(dst.join("model.toml"), manifest).unwrap();
}

/// Writes a rules file of `segments` (name, rule) atomically.
pub fn write_rules(path: &Path, segments: &[(&str, &str)]) {
    let mut text = String::from("[constants]\nMIN_FREQUENCY = 3\n");
    for (name, rule) in segments {
        text.push_str(&format!(
            "[[segments]]\nname = \"{name}\"\ndescription = \"test\"\nrule = '''{rule}'''\n"
        ));
    }
    // Write then rename, as deploys do, so the watcher never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
