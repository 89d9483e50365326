//! TLS, mTLS and bearer-token auth with certificates made at test time, and
//! deadlines answered with DEADLINE_EXCEEDED.

use std::{path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use segscore::proto::{
    oip::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
    pb::{self, scoring_client::ScoringClient},
};
use tonic::{
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
    Code,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::helpers::*;

struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Self {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) signed by this CA.
    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn tls_client(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<ScoringClient<Channel>, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(ScoringClient::new(channel))
}

fn one_row() -> pb::ScoreRequest {
    request(matrix(full_rows(1)), vec![model("churn", 0)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_connections_succeed_and_plain_or_anonymous_ones_fail() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let (cert, key) = pki.leaf(&["localhost"], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = pki.leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let ca = write(dir.path(), "ca.pem", &pki.ca_pem);
    let (cert, key) = (
        write(dir.path(), "cert.pem", &cert),
        write(dir.path(), "key.pem", &key),
    );

    // TLS: a client trusting the CA scores; a plaintext client cannot.
    let app = spawn_app_with(&shipped_models(), |a| {
        a.tls_cert = Some(cert.clone());
        a.tls_key = Some(key.clone());
    })
    .await;
    let mut client = tls_client(app.addr, &pki.ca_pem, None).await.unwrap();
    let resp = client.score(one_row()).await.unwrap().into_inner();
    assert_eq!(resp.models[0].scores.len(), 1);
    assert!(
        app.score(one_row()).await.is_err(),
        "plaintext was accepted"
    );
    // A client that does not trust the server's CA refuses it.
    let stranger = Pki::new();
    assert!(
        tls_client(app.addr, &stranger.ca_pem, None).await.is_err()
            || tls_client(app.addr, &stranger.ca_pem, None)
                .await
                .unwrap()
                .score(one_row())
                .await
                .is_err()
    );
    app.stop().await.unwrap();

    // mTLS: a client certificate from the CA is required.
    let app = spawn_app_with(&shipped_models(), |a| {
        a.tls_cert = Some(cert.clone());
        a.tls_key = Some(key.clone());
        a.tls_client_ca = Some(ca.clone());
    })
    .await;
    let mut client = tls_client(app.addr, &pki.ca_pem, Some((&client_cert, &client_key)))
        .await
        .unwrap();
    client.score(one_row()).await.unwrap();
    let anonymous = match tls_client(app.addr, &pki.ca_pem, None).await {
        Err(_) => true,
        Ok(mut c) => c.score(one_row()).await.is_err(),
    };
    assert!(anonymous, "a client without a certificate was served");
    let (other_cert, other_key) = stranger.leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth);
    let foreign = match tls_client(app.addr, &pki.ca_pem, Some((&other_cert, &other_key))).await {
        Err(_) => true,
        Ok(mut c) => c.score(one_row()).await.is_err(),
    };
    assert!(foreign, "a certificate from another CA was accepted");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_auth_rejects_missing_and_wrong_tokens_and_keeps_health_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tokens", "# scoring clients\nfile-token\n\n");
    let app = spawn_app_with(&shipped_models(), |a| {
        a.auth_tokens = vec!["env-token".parse().unwrap()];
        a.auth_tokens_file = Some(file.clone());
    })
    .await;
    let with_token = |token: Option<&str>| {
        let mut req = tonic::Request::new(one_row());
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let mut client = app.client.clone();
    for token in [None, Some("wrong"), Some("env-toke"), Some("file-token ")] {
        let err = client.score(with_token(token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        assert!(!err.message().contains("token\""), "{}", err.message());
    }
    for token in ["env-token", "file-token"] {
        client.score(with_token(Some(token))).await.unwrap();
    }
    // Admin and OIP are protected too.
    let mut admin = app.admin().await;
    let err = admin.reload(pb::ReloadRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // Health stays open for probes by default.
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    );
    health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    app.stop().await.unwrap();

    let app = spawn_app_with(&shipped_models(), |a| {
        a.auth_tokens = vec!["env-token".parse().unwrap()];
        a.auth_health = true;
    })
    .await;
    let mut health = HealthClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    );
    let err = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_past_its_deadline_is_abandoned_with_deadline_exceeded() {
    // The single ltv worker is held busy by a gated batch for as long as the
    // test wants: the probes below cannot finish in time on any CPU.
    let gate = Gate::closed();
    let app = spawn_app_with(&shipped_models(), |a| {
        a.engine.workers = Some(1);
        a.engine.backend_wrapper = Some(gate.wrapper("ltv"));
        a.default_deadline_ms = 150;
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let busy = {
        let mut client = app.client.clone();
        tokio::spawn(async move {
            let mut req = tonic::Request::new(ltv_rows(1));
            req.metadata_mut()
                .insert("grpc-timeout", "600S".parse().unwrap());
            client.score(req).await
        })
    };
    gate.wait_entered(1).await;
    // A caller's own short deadline. The tonic client runs its own timer on
    // `grpc-timeout` and reports CANCELLED when it fires, whatever the
    // server answers, so the server's answer is read from its metrics below.
    let mut req = tonic::Request::new(ltv_rows(1));
    req.metadata_mut()
        .insert("grpc-timeout", "300m".parse().unwrap());
    let mut client = app.client.clone();
    let err = bounded(client.score(req)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // No grpc-timeout: the server's default deadline applies.
    let err = bounded(app.score(ltv_rows(1))).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    // A probe is counted when its handler ends, which can trail the
    // client's error: wait until it is counted. The default-deadline probe
    // was answered DEADLINE_EXCEEDED by the server itself (that client had
    // no timer of its own). The header probe is not counted here: when the
    // client's timer fires first it can reset the stream before the server
    // even dispatched it.
    crate::metrics::wait_for_metric(
        app.metrics_addr.unwrap(),
        "segscore_requests_total{code=\"DeadlineExceeded\",method=\"Score\",protocol=\"grpc\"}",
        1.0,
    )
    .await;
    gate.open();
    busy.await
        .unwrap()
        .expect("the long-deadline request scores");
    // Once idle, a request within its deadline scores; the abandoned probes
    // never reached the model (only the busy batch and this one did).
    app.score(ltv_rows(1)).await.unwrap();
    assert_eq!(gate.entered(), 2, "expired work was scored anyway");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_queue_cannot_take_is_refused_before_it_is_encoded() {
    // One ltv worker held busy at the gate, one row per chunk, room for four
    // queued chunks: what fits is decided by counting, not by timing.
    let gate = Gate::closed();
    let app = spawn_app_with(&shipped_models(), |a| {
        a.engine.workers = Some(1);
        a.engine.max_batch_rows = 1;
        a.engine.queue_capacity = 4;
        a.engine.backend_wrapper = Some(gate.wrapper("ltv"));
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let spawn_score = |rows: usize| {
        let mut client = app.client.clone();
        tokio::spawn(async move { client.score(ltv_rows(rows)).await })
    };
    let busy = spawn_score(1);
    gate.wait_entered(1).await;
    let queued = spawn_score(3);
    let depth = format!(
        "segscore_queue_depth{{model=\"ltv\",version=\"{}\"}}",
        latest_version("ltv")
    );
    crate::metrics::wait_for_metric(app.metrics_addr.unwrap(), &depth, 3.0).await;

    // Without tenure_days (missing = "reject") a request cannot be encoded.
    // Two such rows do not fit beside the three queued chunks: refused for
    // room first, which proves no time went into converting or encoding
    // them; one such row fits, and only then is it found invalid.
    let unencodable = |rows: usize| {
        let mut req = ltv_rows(rows);
        let features = req.features.as_mut().unwrap();
        features.columns.retain(|c| c.name != "tenure_days");
        req
    };
    let err = app.score(unencodable(2)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("queue is full"), "{err:?}");
    let err = app.score(unencodable(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // The same admission on OIP: a matrix whose bool column holds 0.5.
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    let width = manifest("ltv", latest_version("ltv")).features.len();
    let bad_infer = |rows: usize| oip::ModelInferRequest {
        model_name: "ltv".into(),
        inputs: vec![oip::model_infer_request::InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, width as i64],
            contents: Some(oip::InferTensorContents {
                fp32_contents: vec![0.5; rows * width],
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let err = oip.model_infer(bad_infer(2)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let err = oip.model_infer(bad_infer(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    gate.open();
    busy.await.unwrap().expect("the busy request scores");
    queued.await.unwrap().expect("the queued request scores");
    // Refused and failed requests gave their room back: four chunks fit.
    let resp = app.score(ltv_rows(4)).await.unwrap();
    assert_eq!(resp.rows, 4);
    app.stop().await.unwrap();
}

/// `rows` valid rows for ltv.
fn ltv_rows(rows: usize) -> pb::ScoreRequest {
    request(matrix(full_rows(rows)), vec![model("ltv", 0)])
}

/// Bounds a probe so a server that ignored deadlines fails the test instead
/// of waiting on the closed gate forever.
async fn bounded<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the deadline was not enforced: the call waited for the busy worker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_deadline_bounds_each_stream_chunk_not_the_stream() {
    const DEADLINE: Duration = Duration::from_millis(1000);
    let gate = Gate::closed();
    let app = spawn_app_with(&shipped_models(), |a| {
        a.engine.workers = Some(1);
        a.engine.backend_wrapper = Some(gate.wrapper("ltv"));
        a.default_deadline_ms = DEADLINE.as_millis() as u64;
    })
    .await;
    let ltv = app.repository.load().resolve("ltv", 0, "").unwrap();
    let (tx, rx) = futures::channel::mpsc::unbounded();
    let mut responses = app
        .client
        .clone()
        .score_stream(rx)
        .await
        .unwrap()
        .into_inner();
    let chunk = |sequence| {
        let mut chunk = ltv_rows(1);
        chunk.sequence = sequence;
        chunk
    };
    // Chunk 0 holds the only worker; chunk 1 waits behind it until its own
    // deadline has certainly passed.
    tx.unbounded_send(chunk(0)).unwrap();
    gate.wait_entered(1).await;
    tx.unbounded_send(chunk(1)).unwrap();
    let queued_by = std::time::Instant::now() + Duration::from_secs(60);
    while ltv.queued() == 0 {
        assert!(
            std::time::Instant::now() < queued_by,
            "chunk 1 never queued"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(DEADLINE + Duration::from_millis(100)).await;
    gate.open();
    let first = responses.message().await.unwrap().unwrap();
    assert_eq!(first.sequence, 0);
    assert!(first.error.is_none(), "chunk 0: {:?}", first.error);
    let second = responses.message().await.unwrap().unwrap();
    assert_eq!(second.sequence, 1);
    let error = second.error.expect("chunk 1 outlived its deadline");
    assert_eq!(error.code, Code::DeadlineExceeded as i32, "{error:?}");
    // The stream is now older than the default deadline, and a new chunk
    // still gets a deadline of its own and scores.
    tx.unbounded_send(chunk(2)).unwrap();
    let third = responses.message().await.unwrap().unwrap();
    assert_eq!(third.sequence, 2);
    assert!(third.error.is_none(), "chunk 2: {:?}", third.error);
    assert_eq!(third.models[0].scores.len(), 1);
    drop(tx);
    assert!(responses.message().await.unwrap().is_none());
    app.stop().await.unwrap();
}

/// Roles (contract): `score:` and bare tokens score and read; only `admin:`
/// tokens change what is served (ModelAdmin, OIP RepositoryModelLoad and
/// RepositoryModelUnload). A score token there gets PERMISSION_DENIED and
/// nothing changes; an unknown token stays UNAUTHENTICATED. The scheme is
/// case-insensitive (`bearer`, `BEARER`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn score_tokens_score_and_only_admin_tokens_change_what_is_served() {
    use segscore::proto::oip::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "tokens",
        "# readers\nscore:reader-token\nbare-token\n# operators\nadmin:admin-token\n",
    );
    let models = copy_models();
    let app = spawn_app_with(models.path(), |a| {
        a.auth_tokens_file = Some(file.clone());
        a.auth_health = true;
    })
    .await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    let with = |token: &str, scheme: &str| {
        let value: tonic::metadata::MetadataValue<_> = format!("{scheme} {token}").parse().unwrap();
        move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        }
    };
    let churn_default = || {
        app.repository
            .load()
            .resolve("churn", 0, "")
            .unwrap()
            .version()
    };
    let before = churn_default();

    for (token, scheme) in [
        ("reader-token", "Bearer"),
        ("bare-token", "bearer"),
        ("admin-token", "BEARER"),
    ] {
        let mut scoring = ScoringClient::with_interceptor(channel.clone(), with(token, scheme));
        scoring.score(one_row()).await.unwrap();
        scoring.list_models(pb::ListModelsRequest {}).await.unwrap();
        let mut oip =
            GrpcInferenceServiceClient::with_interceptor(channel.clone(), with(token, scheme));
        oip.model_ready(oip::ModelReadyRequest {
            name: "churn".into(),
            version: String::new(),
        })
        .await
        .unwrap();
        let mut health = HealthClient::with_interceptor(channel.clone(), with(token, scheme));
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }

    for (token, code) in [
        ("reader-token", Code::PermissionDenied),
        ("bare-token", Code::PermissionDenied),
        ("nobody", Code::Unauthenticated),
    ] {
        let mut admin = pb::model_admin_client::ModelAdminClient::with_interceptor(
            channel.clone(),
            with(token, "Bearer"),
        );
        let mut oip =
            GrpcInferenceServiceClient::with_interceptor(channel.clone(), with(token, "Bearer"));
        let answers = [
            (
                "Rollback",
                admin
                    .rollback(pb::RollbackRequest {
                        name: "churn".into(),
                    })
                    .await
                    .map(drop),
            ),
            (
                "SetLabel",
                admin
                    .set_label(pb::SetLabelRequest {
                        name: "churn".into(),
                        label: "stable".into(),
                        version: 1,
                    })
                    .await
                    .map(drop),
            ),
            ("Reload", admin.reload(pb::ReloadRequest {}).await.map(drop)),
            (
                "RepositoryModelUnload",
                oip.repository_model_unload(oip::RepositoryModelUnloadRequest {
                    model_name: "churn".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
            (
                "RepositoryModelLoad",
                oip.repository_model_load(oip::RepositoryModelLoadRequest {
                    model_name: "churn".into(),
                    ..Default::default()
                })
                .await
                .map(drop),
            ),
        ];
        for (method, got) in answers {
            let status = got.expect_err(method);
            assert_eq!(
                status.code(),
                code,
                "{token} {method}: {}",
                status.message()
            );
            assert!(!status.message().contains(token), "{}", status.message());
        }
    }
    // Nothing a refused call asked for happened.
    assert_eq!(churn_default(), before);
    let info = ScoringClient::with_interceptor(channel.clone(), with("reader-token", "Bearer"))
        .get_model(pb::GetModelRequest {
            name: "churn".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert!(!info.labels.contains_key("stable"), "{:?}", info.labels);

    // The admin token can.
    let mut admin = pb::model_admin_client::ModelAdminClient::with_interceptor(
        channel.clone(),
        with("admin-token", "Bearer"),
    );
    admin
        .set_label(pb::SetLabelRequest {
            name: "churn".into(),
            label: "stable".into(),
            version: 1,
        })
        .await
        .unwrap();
    admin.reload(pb::ReloadRequest {}).await.unwrap();
    GrpcInferenceServiceClient::with_interceptor(channel.clone(), with("admin-token", "Bearer"))
        .repository_model_load(oip::RepositoryModelLoadRequest {
            model_name: "churn".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    app.stop().await.unwrap();
}

/// A token entry that names no known role fails start-up, saying where it
/// is and never what it holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_an_unknown_role_fails_start_up_without_echoing_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "tokens", "score:ok\nadmn:s3cret-value\n");
    let mut args = segscore::config::ServeArgs::for_models(shipped_models());
    args.auth_tokens_file = Some(file);
    let err = match segscore::app::Application::build(args).await {
        Ok(_) => panic!("a bad token entry was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("line 2 of the auth tokens file"), "{err}");
    assert!(!err.contains("s3cret") && !err.contains("admn"), "{err}");
}
