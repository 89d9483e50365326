//! KServe V2 Open Inference Protocol, grpc.health.v1 and reflection, over the
//! same port as segscore.v1, against the shipped models.

use segscore::{
    features::FeatureSchema,
    proto::oip::{
        self,
        grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::{InferInputTensor, InferRequestedOutputTensor},
    },
    repository::load::read_csv_batch,
};
use tonic::{transport::Channel, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::*;

async fn oip_client(app: &TestApp) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap()
}

/// The golden rows of `name` v`version` as the model's encoded FP32 matrix,
/// with the expected scores.
fn golden_matrix(name: &str, version: u64) -> (Vec<f32>, usize, Vec<f64>) {
    let m = manifest(name, version);
    let schema = FeatureSchema::new(m.features.clone()).unwrap();
    let path = shipped_models()
        .join(name)
        .join(version.to_string())
        .join(&m.golden.file);
    let (batch, expected) = read_csv_batch(&path, &schema, "expected").unwrap();
    let encoded = schema.encode(&batch, 0..batch.rows()).unwrap();
    let rows = encoded.nrows();
    (
        encoded.into_raw_vec_and_offset().0,
        rows,
        expected.iter().map(|e| e.parse().unwrap()).collect(),
    )
}

fn fp32_matrix(name: &str, values: Vec<f32>, rows: usize, width: usize) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![rows as i64, width as i64],
        contents: Some(oip::InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn infer(model: &str, inputs: Vec<InferInputTensor>) -> oip::ModelInferRequest {
    oip::ModelInferRequest {
        model_name: model.into(),
        inputs,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_and_readiness_describe_the_shipped_models() {
    let app = spawn_app().await;
    let mut c = oip_client(&app).await;
    assert!(
        c.server_live(oip::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(oip::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(oip::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "segscore");
    // Only what is implemented: clients choose code paths by these names.
    assert_eq!(
        meta.extensions,
        ["model_repository", "model_configuration", "statistics"]
    );
    let ready = |name: &str, version: &str| oip::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("churn", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("churn", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("churn", "99"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    // An unknown model is not ready, not an error: Triton answers
    // ready=false (InferenceServer::ModelIsReady), and perf_analyzer and
    // readiness probes rely on it.
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert_eq!(
        c.model_ready(ready("churn", "01"))
            .await
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );

    let md = |name: &str, version: &str| oip::ModelMetadataRequest {
        name: name.into(),
        version: version.into(),
    };
    let churn = c
        .model_metadata(md("churn", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(churn.platform, "onnxruntime_onnx");
    assert_eq!(churn.versions, vec!["1".to_string(), "2".to_string()]);
    assert_eq!(
        (
            churn.inputs[0].name.as_str(),
            churn.inputs[0].datatype.as_str()
        ),
        ("features", "FP32")
    );
    assert_eq!(churn.inputs[0].shape, vec![-1, 12]);
    // Every feature, in matrix order, with what a client needs to encode it.
    let Some(oip::infer_parameter::ParameterChoice::StringParam(features)) = churn.inputs[0]
        .parameters["features"]
        .parameter_choice
        .clone()
    else {
        panic!("no `features` parameter on the matrix input")
    };
    let features: serde_json::Value = serde_json::from_str(&features).unwrap();
    let names: Vec<&str> = features
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = manifest("churn", 2)
        .features
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(names, expected);
    let region = &features[11];
    assert_eq!(region["dtype"], "category");
    assert_eq!(region["categories"][0], "north_america");
    assert_eq!(features[1]["missing"], "reject");
    assert_eq!(
        (
            churn.outputs[0].name.as_str(),
            churn.outputs[0].shape.clone()
        ),
        ("score", vec![-1])
    );
    assert_eq!(
        c.model_metadata(md("churn", "1"))
            .await
            .unwrap()
            .into_inner()
            .platform,
        "smartcore"
    );
    assert_eq!(
        c.model_metadata(md("nope", "")).await.unwrap_err().code(),
        Code::NotFound
    );
    assert_eq!(
        c.model_metadata(md("churn", "7")).await.unwrap_err().code(),
        Code::NotFound
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_infer_reproduces_golden_scores_with_typed_and_raw_contents() {
    let app = spawn_app().await;
    let mut c = oip_client(&app).await;
    for (name, version) in [("churn", 2), ("ltv", 1), ("propensity", 2), ("churn", 1)] {
        let (values, rows, expected) = golden_matrix(name, version);
        let tol = manifest(name, version).golden.tolerance;
        let mut typed = infer(
            name,
            vec![fp32_matrix("features", values.clone(), rows, 12)],
        );
        typed.model_version = version.to_string();
        typed.id = "req-7".into();
        let resp = c.model_infer(typed).await.unwrap().into_inner();
        assert_eq!(
            (resp.id.as_str(), resp.model_version.as_str()),
            ("req-7", version.to_string().as_str())
        );
        let out = &resp.outputs[0];
        assert_eq!(
            (out.name.as_str(), out.datatype.as_str(), out.shape.clone()),
            ("score", "FP32", vec![rows as i64])
        );
        let scores = out.contents.as_ref().unwrap().fp32_contents.clone();
        for (row, (g, e)) in scores.iter().zip(&expected).enumerate() {
            assert!(
                close(*g, *e, tol),
                "{name} v{version} row {row}: {g} vs {e}"
            );
        }
        // Raw little-endian input gets raw output with the same scores.
        let mut raw = infer(
            name,
            vec![InferInputTensor {
                contents: None,
                ..fp32_matrix("features", vec![], rows, 12)
            }],
        );
        raw.model_version = version.to_string();
        raw.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
        let resp = c.model_infer(raw).await.unwrap().into_inner();
        assert!(resp.outputs[0].contents.is_none());
        let raw_scores: Vec<f32> = resp.raw_output_contents[0]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(raw_scores, scores);
    }
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_feature_tensors_score_like_segscore_v1() {
    let app = spawn_app().await;
    let mut c = oip_client(&app).await;
    let rows = 3;
    let tensor = |name: &str, datatype: &str, contents: oip::InferTensorContents, two_d: bool| {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: if two_d { vec![rows, 1] } else { vec![rows] },
            contents: Some(contents),
            ..Default::default()
        }
    };
    let f32s = |v: f32| oip::InferTensorContents {
        fp32_contents: vec![v; rows as usize],
        ..Default::default()
    };
    let i64s = |v: i64| oip::InferTensorContents {
        int64_contents: vec![v; rows as usize],
        ..Default::default()
    };
    let inputs = vec![
        tensor("recency_days", "FP32", f32s(12.0), false),
        tensor("frequency", "INT64", i64s(7), true),
        tensor("tenure_days", "FP32", f32s(400.0), false),
        tensor("monetary_mean", "FP32", f32s(55.5), false),
        tensor("monetary_total", "FP32", f32s(388.5), true),
        tensor("purchases_90d", "INT64", i64s(2), false),
        tensor("sessions_7d", "INT64", i64s(3), false),
        tensor("cart_adds_7d", "INT64", i64s(1), false),
        tensor("checkout_visits_7d", "INT64", i64s(2), false),
        tensor(
            "cart_abandoned_24h",
            "BOOL",
            oip::InferTensorContents {
                bool_contents: vec![true; rows as usize],
                ..Default::default()
            },
            false,
        ),
        tensor("email_engagement", "FP32", f32s(42.0), false),
        tensor(
            "region",
            "BYTES",
            oip::InferTensorContents {
                bytes_contents: vec![b"europe".to_vec(); rows as usize],
                ..Default::default()
            },
            false,
        ),
    ];
    let mut req = infer("churn", inputs.clone());
    req.outputs = vec![InferRequestedOutputTensor {
        name: "score".into(),
        ..Default::default()
    }];
    let oip_scores = c.model_infer(req).await.unwrap().into_inner().outputs[0]
        .contents
        .clone()
        .unwrap()
        .fp32_contents;
    let v1 = app
        .score(request(
            matrix(full_rows(rows as usize)),
            vec![model("churn", 0)],
        ))
        .await
        .unwrap();
    assert_eq!(oip_scores, v1.models[0].scores);
    // Omitting an imputable feature's tensor imputes it, as in Score.
    let without_sessions: Vec<_> = inputs
        .iter()
        .filter(|t| t.name != "sessions_7d")
        .cloned()
        .collect();
    assert!(c
        .model_infer(infer("churn", without_sessions))
        .await
        .is_ok());
    // Requested outputs are honoured: an unknown one is an error.
    let mut wrong = infer("churn", inputs.clone());
    wrong.outputs = vec![InferRequestedOutputTensor {
        name: "probabilities".into(),
        ..Default::default()
    }];
    let status = c.model_infer(wrong).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("probabilities"),
        "{}",
        status.message()
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mismatch_gets_the_status_oip_clients_expect() {
    let app = spawn_app().await;
    let mut c = oip_client(&app).await;
    let (values, rows, _) = golden_matrix("churn", 2);
    let two = values[..24].to_vec();
    let check = |code: Code, needles: &'static [&'static str]| {
        move |r: Result<tonic::Response<oip::ModelInferResponse>, tonic::Status>| {
            let s = r.expect_err("should fail");
            assert_eq!(s.code(), code, "{}", s.message());
            for n in needles {
                assert!(s.message().contains(n), "`{}` lacks `{n}`", s.message());
            }
        }
    };
    check(Code::InvalidArgument, &["`features`", "[2, 11]"])(
        c.model_infer(infer(
            "churn",
            vec![fp32_matrix("features", values[..22].to_vec(), 2, 11)],
        ))
        .await,
    );
    check(Code::InvalidArgument, &["`features`", "23 values"])(
        c.model_infer(infer(
            "churn",
            vec![fp32_matrix("features", values[..23].to_vec(), 2, 12)],
        ))
        .await,
    );
    let mut fp16 = fp32_matrix("features", two.clone(), 2, 12);
    fp16.datatype = "FP16".into();
    check(Code::InvalidArgument, &["`features`", "FP16"])(
        c.model_infer(infer("churn", vec![fp16])).await,
    );
    let mut raw_short = infer(
        "churn",
        vec![InferInputTensor {
            contents: None,
            ..fp32_matrix("features", vec![], 2, 12)
        }],
    );
    raw_short.raw_input_contents = vec![vec![0u8; 2 * 12 * 4 - 1]];
    check(Code::InvalidArgument, &["`features`", "raw bytes"])(c.model_infer(raw_short).await);
    let mut raw_count = infer(
        "churn",
        vec![InferInputTensor {
            contents: None,
            ..fp32_matrix("features", vec![], 2, 12)
        }],
    );
    raw_count.raw_input_contents = vec![vec![0u8; 96], vec![0u8; 96]];
    check(Code::InvalidArgument, &["raw_input_contents"])(c.model_infer(raw_count).await);
    let unknown = InferInputTensor {
        name: "favourite_colour".into(),
        datatype: "FP32".into(),
        shape: vec![2],
        contents: Some(oip::InferTensorContents {
            fp32_contents: vec![1.0, 2.0],
            ..Default::default()
        }),
        ..Default::default()
    };
    let known = InferInputTensor {
        name: "recency_days".into(),
        ..unknown.clone()
    };
    check(
        Code::InvalidArgument,
        &["`favourite_colour`", "not a feature"],
    )(c.model_infer(infer("churn", vec![known, unknown])).await);
    let mut bad_region = two.clone();
    bad_region[11] = 17.0; // region is column 11: no category 17
    check(Code::InvalidArgument, &["`features`", "region", "row 0"])(
        c.model_infer(infer(
            "churn",
            vec![fp32_matrix("features", bad_region, 2, 12)],
        ))
        .await,
    );
    let mut negative = two.clone();
    negative[0] = -5.0;
    check(Code::InvalidArgument, &["recency_days", "range"])(
        c.model_infer(infer(
            "churn",
            vec![fp32_matrix("features", negative, 2, 12)],
        ))
        .await,
    );
    check(Code::NotFound, &["nope"])(
        c.model_infer(infer(
            "nope",
            vec![fp32_matrix("features", two.clone(), 2, 12)],
        ))
        .await,
    );
    let mut v9 = infer("churn", vec![fp32_matrix("features", two.clone(), 2, 12)]);
    v9.model_version = "9".into();
    check(Code::NotFound, &["churn", "9"])(c.model_infer(v9).await);
    let mut vx = infer("churn", vec![fp32_matrix("features", two.clone(), 2, 12)]);
    vx.model_version = "latest".into();
    check(Code::InvalidArgument, &["latest"])(c.model_infer(vx).await);
    check(Code::InvalidArgument, &["no input"])(c.model_infer(infer("churn", vec![])).await);
    // And the server still answers a good request.
    assert!(c
        .model_infer(infer(
            "churn",
            vec![fp32_matrix("features", values, rows, 12)]
        ))
        .await
        .is_ok());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_model_load_and_unload_and_watch_sees_it() {
    let app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for service in [
        "",
        "segscore.v1.Scoring",
        "inference.GRPCInferenceService",
        "churn",
        "ltv",
        "propensity",
    ] {
        let status = health
            .check(check(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let mut watch = health.watch(check("ltv")).await.unwrap().into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );

    let mut c = GrpcInferenceServiceClient::new(channel);
    let unload = oip::RepositoryModelUnloadRequest {
        model_name: "ltv".into(),
        ..Default::default()
    };
    c.repository_model_unload(unload).await.unwrap();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
    // Unloaded: not ready (rather than NOT_FOUND) and listed as unavailable.
    let ready = c
        .model_ready(oip::ModelReadyRequest {
            name: "ltv".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    let index = c
        .repository_index(oip::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    let ltv: Vec<_> = index.iter().filter(|m| m.name == "ltv").collect();
    assert_eq!(ltv.len(), 1, "{index:?}");
    assert_eq!(
        (
            ltv[0].version.as_str(),
            ltv[0].state.as_str(),
            ltv[0].reason.as_str()
        ),
        ("", "UNAVAILABLE", "unloaded")
    );
    let gone = app
        .score(request(matrix(full_rows(1)), vec![model("ltv", 0)]))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // The other models are untouched.
    assert!(app
        .score(request(matrix(full_rows(1)), vec![model("churn", 0)]))
        .await
        .is_ok());

    let load = oip::RepositoryModelLoadRequest {
        model_name: "ltv".into(),
        ..Default::default()
    };
    c.repository_model_load(load).await.unwrap();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let back = app
        .score(request(matrix(full_rows(1)), vec![model("ltv", 0)]))
        .await
        .unwrap();
    assert_eq!(back.models[0].version, latest_version("ltv"));
    let missing = oip::RepositoryModelLoadRequest {
        model_name: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        c.repository_model_load(missing).await.unwrap_err().code(),
        Code::NotFound
    );
    // An open Watch stream would hold graceful shutdown until its timeout.
    drop((watch, health, c));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_turns_the_service_names_not_serving() {
    let mut app = spawn_app().await;
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let mut watches = Vec::new();
    for service in ["", "segscore.v1.Scoring", "inference.GRPCInferenceService"] {
        let request = HealthCheckRequest {
            service: service.into(),
        };
        let mut watch = health.watch(request).await.unwrap().into_inner();
        assert_eq!(
            watch.message().await.unwrap().unwrap().status,
            ServingStatus::Serving as i32,
            "{service}"
        );
        watches.push(watch);
    }
    app.trigger_shutdown();
    for watch in &mut watches {
        assert_eq!(
            watch.message().await.unwrap().unwrap().status,
            ServingStatus::NotServing as i32
        );
    }
    // Open Watch streams would hold graceful shutdown until its timeout.
    drop((watches, health));
    app.handle.take().unwrap().await.unwrap().unwrap();
}

/// The serving versions the repository holds, as (name, version) strings.
fn serving_versions(app: &TestApp) -> Vec<(String, String)> {
    let repository = app.repository.load();
    let mut versions = Vec::new();
    for (name, entry) in repository.models() {
        for (version, status) in &entry.versions {
            if matches!(status, segscore::repository::VersionStatus::Serving(_)) {
                versions.push((name.clone(), version.to_string()));
            }
        }
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_statistics_and_index_describe_the_repository() {
    let app = spawn_app().await;
    let mut c = oip_client(&app).await;
    let config = |name: &str, version: &str| oip::ModelConfigRequest {
        name: name.into(),
        version: version.into(),
    };
    let churn = c
        .model_config(config("churn", ""))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(churn.name, "churn");
    assert_eq!(
        (churn.platform.as_str(), churn.backend.as_str()),
        ("onnxruntime_onnx", "onnxruntime")
    );
    assert!(churn.max_batch_size > 0);
    // The batch dimension is implied by max_batch_size, as in Triton.
    assert_eq!(churn.input[0].name, "features");
    assert_eq!(churn.input[0].data_type, oip::DataType::TypeFp32 as i32);
    assert_eq!(churn.input[0].dims, vec![12]);
    assert_eq!(churn.output[0].name, "score");
    assert_eq!(churn.output[0].data_type, oip::DataType::TypeFp32 as i32);
    assert_eq!(churn.output[0].dims, vec![1]);
    assert_eq!(
        churn.output[0].reshape,
        Some(oip::ModelTensorReshape { shape: vec![] })
    );
    let v1 = c
        .model_config(config("churn", "1"))
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(v1.platform, "smartcore");
    for (name, version) in [("nope", ""), ("churn", "7")] {
        assert_eq!(
            c.model_config(config(name, version))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }

    let stats = |name: &str, version: &str| oip::ModelStatisticsRequest {
        name: name.into(),
        version: version.into(),
    };
    let before = c
        .model_statistics(stats("churn", "2"))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    assert_eq!(before.len(), 1);
    assert_eq!(
        (before[0].inference_count, before[0].execution_count),
        (0, 0)
    );
    let (values, rows, _) = golden_matrix("churn", 2);
    let mut ok = infer(
        "churn",
        vec![fp32_matrix("features", values.clone(), rows, 12)],
    );
    ok.model_version = "2".into();
    c.model_infer(ok).await.unwrap();
    // Eleven columns: refused after the request reached the version.
    let mut bad = infer(
        "churn",
        vec![fp32_matrix("features", values[..11].to_vec(), 1, 11)],
    );
    bad.model_version = "2".into();
    assert_eq!(
        c.model_infer(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let after = c
        .model_statistics(stats("churn", "2"))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    let s = &after[0];
    assert_eq!((s.name.as_str(), s.version.as_str()), ("churn", "2"));
    assert_eq!(s.inference_count, rows as u64);
    assert!(s.execution_count >= 1);
    assert!(s.last_inference > 0);
    let i = s.inference_stats.unwrap();
    let (success, fail) = (i.success.unwrap(), i.fail.unwrap());
    assert_eq!(success.count, 1);
    assert!(success.ns > 0);
    assert_eq!(fail.count, 1);
    assert!(i.queue.unwrap().count >= 1);
    let compute = i.compute_infer.unwrap();
    assert!(compute.count >= 1 && compute.ns > 0);
    // An empty name is every serving version; an empty version every one
    // of that model's.
    let all = c
        .model_statistics(stats("", ""))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    let listed: Vec<(String, String)> = all.into_iter().map(|s| (s.name, s.version)).collect();
    assert_eq!(listed, serving_versions(&app));
    let churns = c
        .model_statistics(stats("churn", ""))
        .await
        .unwrap()
        .into_inner()
        .model_stats;
    assert_eq!(
        churns
            .iter()
            .map(|s| s.version.as_str())
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    for (name, version) in [("nope", ""), ("churn", "7")] {
        assert_eq!(
            c.model_statistics(stats(name, version))
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );
    }

    let index = c
        .repository_index(oip::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner()
        .models;
    let ready: Vec<(String, String)> = index
        .iter()
        .filter(|m| m.state == "READY")
        .map(|m| (m.name.clone(), m.version.clone()))
        .collect();
    assert_eq!(ready, serving_versions(&app));
    assert!(index
        .iter()
        .all(|m| m.state == "READY" || !m.reason.is_empty()));
    let only_ready = c
        .repository_index(oip::RepositoryIndexRequest {
            ready: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(only_ready.iter().all(|m| m.state == "READY"));
    assert_eq!(only_ready.len(), ready.len());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(
        Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(futures::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a list_services answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "segscore.v1.Scoring",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    app.stop().await.unwrap();
}
