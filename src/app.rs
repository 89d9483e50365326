//! Building and running the server. After mini-redis, the caller binds the
//! listener and passes a shutdown future, so tests run real servers on
//! `127.0.0.1:0` and stop them with a oneshot.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::ServerTlsConfig;
use tracing::info;

use crate::{
    api::{
        admin::AdminService,
        gate::RequestGate,
        inference::{health_task, InferenceService, HEALTH_SERVICES},
        scoring::ScoringService,
    },
    config::ServeArgs,
    engine::onnx,
    infer::Scorer,
    metrics::{self, Metrics},
    monitor::{Exporter, Monitor},
    proto::{
        oip::grpc_inference_service_server::GrpcInferenceServiceServer,
        pb::{model_admin_server::ModelAdminServer, scoring_server::ScoringServer},
        FILE_DESCRIPTOR_SET,
    },
    repository::{
        lifecycle::{watch_task, Lifecycle},
        Repository, SharedRepository,
    },
    security::{self, Authorized, BearerAuth},
    segments::{self, Segments, SharedSegments},
};

/// A loaded repository and bound listeners (gRPC, and HTTP with
/// --http-addr), ready to serve.
pub struct Application {
    listener: TcpListener,
    /// The REST front end's listener (--http-addr).
    http_listener: Option<TcpListener>,
    repository: SharedRepository,
    segments: SharedSegments,
    config: ServeArgs,
    metrics: Option<(Arc<Metrics>, TcpListener)>,
    tls: Option<ServerTlsConfig>,
    auth: BearerAuth,
    /// Drift and segment windows, fed by the scoring core and read by
    /// `/metrics` and the status page.
    monitor: Arc<Monitor>,
}

impl Application {
    /// Loads ONNX Runtime and the repository, then binds `config.addr`.
    pub async fn build(config: ServeArgs) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        // Security material is read first: a bad file fails start-up at once.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(security::server_tls(
                cert,
                key,
                config.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        let auth = BearerAuth::new(security::load_tokens(
            config.auth_tokens_file.as_deref(),
            &config.auth_tokens,
        )?);
        let mut engine = config.engine.engine_config();
        let metrics = match config.metrics_addr {
            Some(addr) => {
                let registry = Metrics::new();
                engine.metrics = Some(registry.clone());
                Some((registry, metrics::bind(addr).await?))
            }
            None => None,
        };
        // Fail at start-up, with the fix in the message, rather than marking
        // every ONNX model failed one by one.
        let ort_path = engine.ort_dylib_path.clone();
        tokio::task::spawn_blocking(move || onnx::init_runtime(ort_path.as_deref()).map(|_| ()))
            .await
            .context("ONNX Runtime init task")??;
        let root = config.model_repository.clone();
        let repository = tokio::task::spawn_blocking(move || Repository::load(&root, &engine))
            .await
            .context("repository load task")?
            .with_context(|| {
                format!(
                    "reading the model repository {}",
                    config.model_repository.display()
                )
            })?;
        // A rules file that cannot be read or parsed fails start-up; a bad
        // rule only refuses its segment.
        let rules = match &config.segments {
            Some(path) => segments::reload::load(path, &repository)
                .with_context(|| format!("loading the segments file {}", path.display()))?,
            None => Segments::default(),
        };
        let listener = TcpListener::bind(config.addr)
            .await
            .with_context(|| format!("binding {}", config.addr))?;
        let http_listener = match config.http_addr {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("binding --http-addr {addr}"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            http_listener,
            repository: Arc::new(arc_swap::ArcSwap::from_pointee(repository)),
            segments: Arc::new(arc_swap::ArcSwap::from_pointee(rules)),
            monitor: Monitor::new(config.engine.drift, config.engine.drift_window_rows),
            config,
            metrics,
            tls,
            auth,
        })
    }

    /// Where `/metrics` is served, when `--metrics-addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(_, l)| l.local_addr().ok())
    }

    /// Where the REST front end listens, when `--http-addr` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address; this is a bug")
    }

    pub fn repository(&self) -> &SharedRepository {
        &self.repository
    }

    pub fn segments(&self) -> &SharedSegments {
        &self.segments
    }

    /// The drift and segment windows (for the status page's snapshot).
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    /// Serves until `shutdown` resolves, then stops accepting connections and
    /// lets in-flight requests finish (up to the configured timeout).
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let registry = self.metrics.as_ref().map(|(m, _)| m.clone());
        // grpc.health.v1: one entry per model name plus "" for the server;
        // NOT_SERVING for a model until one of its versions passed validation.
        let (health, health_service) = tonic_health::server::health_reporter();
        let lifecycle = Lifecycle::new(self.repository.clone(), registry.clone());
        // Told when draining starts (below), so open streams end promptly.
        let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
        let (services, http) = self.services(&lifecycle, registry.clone(), draining_rx.clone())?;
        let metrics = self.metrics.take();
        let background =
            self.spawn_background(&lifecycle, &health, metrics, draining_rx.clone())?;
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        // The HTTP server stops accepting when draining starts, like gRPC,
        // and is awaited with it (same shutdown timeout).
        let http_server = match (self.http_listener.take(), http) {
            (Some(listener), Some(state)) => {
                info!(
                    http_addr = %listener.local_addr()?,
                    cors = ?self.config.http_cors_origin,
                    "HTTP on /v1, /v2, /openapi.json"
                );
                let router = crate::http::router(state, &self.config.http_cors_origin)?;
                let mut draining = draining_rx.clone();
                let stop = async move {
                    let _ = draining.wait_for(|d| *d).await;
                };
                Some(tokio::spawn(crate::http::serve(listener, router, stop)))
            }
            _ => None,
        };
        info!(
            %addr,
            models = ?self.repository.load().serving_names(),
            tls = self.tls.is_some(),
            mtls = self.config.tls_client_ca.is_some(),
            auth = self.auth.is_enabled(),
            "serving"
        );
        let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
        let draining = health.clone();
        let signal = async move {
            shutdown.await;
            info!("shutdown requested: draining in-flight requests");
            // Load balancers probing health stop sending new work first.
            for service in std::iter::once("").chain(HEALTH_SERVICES) {
                draining
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
            let _ = draining_tx.send(true);
            let _ = stopping_tx.send(());
        };
        // Each token's role is checked against the method it calls (admin
        // methods live in ModelAdmin and inside OIP); health and reflection
        // take any valid token, and only with --auth-health.
        let auth = self.auth.clone();
        let open = auth.enforced_if(self.config.auth_health);
        let server = self
            .server_builder()?
            .add_service(Authorized::new(services.scoring, auth.clone()))
            .add_service(Authorized::new(services.inference, auth.clone()))
            .add_service(Authorized::new(services.admin, auth))
            .add_service(Authorized::new(health_service, open.clone()))
            .add_service(Authorized::new(reflection_v1, open.clone()))
            .add_service(Authorized::new(reflection_v1alpha, open))
            // Small request/response pairs must not wait for Nagle's algorithm
            // (~40 ms stalls on loopback); tonic only sets this on listeners it
            // binds itself, and this one is bound by the caller.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(self.listener).with_nodelay(Some(true)),
                signal,
            );
        let timeout = self.config.shutdown_timeout();
        let http_done = async move {
            match http_server {
                Some(task) => task.await.context("HTTP server task")?,
                None => Ok(()),
            }
        };
        let both = async move {
            let (grpc, http) = tokio::join!(server, http_done);
            grpc.context("gRPC server")?;
            http
        };
        tokio::pin!(both);
        tokio::select! {
            result = &mut both => result?,
            _ = async {
                let _ = stopping_rx.await;
                tokio::time::sleep(timeout).await;
            } => {
                tracing::warn!(?timeout, "in-flight requests did not finish in time; exiting");
            }
        }
        for task in background {
            task.abort();
        }
        info!("stopped");
        Ok(())
    }

    /// The gRPC services, every scoring front end on one scoring core.
    fn services(
        &self,
        lifecycle: &Arc<Lifecycle>,
        registry: Option<Arc<Metrics>>,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<(Services, Option<Arc<crate::http::HttpState>>)> {
        let max = self.config.max_message_bytes;
        let gate = RequestGate::new(
            self.config.max_concurrent_requests,
            registry.clone(),
            self.config.default_deadline(),
        );
        if let Some(registry) = &registry {
            registry.register(Box::new(Exporter::new(
                self.repository.clone(),
                self.monitor.clone(),
            )));
        }
        let scorer = Scorer::new(
            self.repository.clone(),
            self.segments.clone(),
            self.config.max_rows_per_request,
            registry,
        )
        .with_monitor(self.monitor.clone());
        let scoring = ScoringServer::new(
            ScoringService::new(scorer.clone(), self.config.stream_in_flight, gate.clone())
                .with_shutdown(draining),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let oip = InferenceService::new(lifecycle.clone(), scorer.clone(), gate.clone());
        // The REST front end shares the OIP service, the core and the gate:
        // one concurrency limit, one set of statistics.
        let http = self.config.http_addr.map(|_| {
            Arc::new(crate::http::HttpState {
                inference: oip.clone(),
                scorer,
                gate,
                auth: self.auth.clone(),
                open: self.auth.enforced_if(self.config.auth_health),
                max_body: self.config.http_max_body(),
            })
        });
        let inference = GrpcInferenceServiceServer::new(oip)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        Ok((
            Services {
                scoring,
                inference,
                admin: ModelAdminServer::new(AdminService::new(lifecycle.clone())),
            },
            http,
        ))
    }

    /// Health, metrics, the repository watcher and the rules watcher. They
    /// stop with the server (aborted by the caller), so a stopped server
    /// frees its models and worker threads.
    fn spawn_background(
        &self,
        lifecycle: &Arc<Lifecycle>,
        health: &tonic_health::server::HealthReporter,
        metrics: Option<(Arc<Metrics>, TcpListener)>,
        draining: tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let registry = metrics.as_ref().map(|(m, _)| m.clone());
        let mut background = vec![tokio::spawn(health_task(
            lifecycle.clone(),
            health.clone(),
            draining,
        ))];
        if let Some((registry, listener)) = metrics {
            info!(addr = %listener.local_addr()?, "metrics on /metrics");
            background.push(tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, registry).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            }));
        }
        if let Some(interval) = self.config.watch_interval() {
            background.push(tokio::spawn(watch_task(
                lifecycle.clone(),
                self.config.model_repository.clone(),
                interval,
            )));
        }
        if let Some(path) = &self.config.segments {
            // Rules follow their file, and the models: a rule naming a model
            // that stops serving becomes an error for its segment.
            background.push(tokio::spawn(segments::reload::watch_task(
                self.segments.clone(),
                path.clone(),
                self.repository.clone(),
                lifecycle.subscribe(),
                self.config
                    .watch_interval()
                    .unwrap_or(std::time::Duration::from_secs(3600)),
                registry,
            )));
        }
        Ok(background)
    }

    /// The transport: stream and keepalive limits, connection age, TLS.
    fn server_builder(&self) -> anyhow::Result<tonic::transport::Server> {
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .http2_keepalive_interval(self.config.http2_keepalive())
            .http2_keepalive_timeout(self.config.http2_keepalive_timeout());
        if let Some(age) = self.config.max_connection_age() {
            builder = builder.max_connection_age(age);
        }
        if let Some(tls) = self.tls.clone() {
            builder = builder.tls_config(tls).context("configuring TLS")?;
        }
        Ok(builder)
    }
}

/// The gRPC services one server runs, besides health and reflection.
struct Services {
    scoring: ScoringServer<ScoringService>,
    inference: GrpcInferenceServiceServer<InferenceService>,
    admin: ModelAdminServer<AdminService>,
}

/// gRPC reflection, both versions clients use, over both APIs and health.
#[allow(clippy::type_complexity)]
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((
        builder().build_v1().context("building gRPC reflection")?,
        builder()
            .build_v1alpha()
            .context("building gRPC reflection")?,
    ))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: the server logs `serving`
/// before it polls its shutdown future, and a SIGTERM that arrived in between
/// would otherwise meet the default action and kill the process instead of
/// draining it.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            let wait = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
                match s {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    // No handler could be installed: only the other signal
                    // stops the server.
                    Err(_) => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(interrupt) => {},
                _ = wait(terminate) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
