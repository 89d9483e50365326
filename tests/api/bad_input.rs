//! Every malformed request gets a precise status and a message naming what is
//! wrong, changes nothing, and the server keeps serving.

use tonic::Code;

use segscore::proto::pb;

use crate::helpers::*;

async fn expect_error(app: &TestApp, req: pb::ScoreRequest, code: Code, needles: &[&str]) {
    let status = app.score(req).await.expect_err("request should fail");
    assert_eq!(status.code(), code, "message: {}", status.message());
    for needle in needles {
        assert!(
            status.message().contains(needle),
            "`{}` does not mention `{needle}`",
            status.message()
        );
    }
}

fn replace(mut cols: Vec<pb::FeatureColumn>, col: pb::FeatureColumn) -> Vec<pb::FeatureColumn> {
    let i = cols.iter().position(|c| c.name == col.name).unwrap();
    cols[i] = col;
    cols
}

fn without(cols: Vec<pb::FeatureColumn>, name: &str) -> Vec<pb::FeatureColumn> {
    cols.into_iter().filter(|c| c.name != name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_a_precise_status_and_the_server_keeps_serving() {
    let app = spawn_app_with(&shipped_models(), |a| a.max_rows_per_request = 5000).await;
    let churn = || vec![model("churn", 0)];
    let ok = || request(matrix(full_rows(2)), churn());
    let baseline = app.score(ok()).await.unwrap();

    expect_error(
        &app,
        request(matrix(full_rows(2)), vec![model("nope", 0)]),
        Code::NotFound,
        &["`nope`"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(full_rows(2)), vec![model("churn", 99)]),
        Code::NotFound,
        &["churn", "99"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(full_rows(2)),
            vec![pb::ModelRef {
                name: "churn".into(),
                version: 0,
                label: "canary".into(),
            }],
        ),
        Code::NotFound,
        &["canary"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(without(full_rows(2), "frequency")), churn()),
        Code::InvalidArgument,
        &["churn", "frequency", "required"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(
                full_rows(2),
                cat_col("recency_days", vec!["a", "b"]),
            )),
            churn(),
        ),
        Code::InvalidArgument,
        &["churn", "recency_days", "dtype"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(
                full_rows(2),
                f32_col("cart_abandoned_24h", vec![1.0, 0.0]),
            )),
            churn(),
        ),
        Code::InvalidArgument,
        &["cart_abandoned_24h", "bool"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(full_rows(2), f32_col("tenure_days", vec![1.0]))),
            churn(),
        ),
        Code::InvalidArgument,
        &["tenure_days", "1 values", "2 rows"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(
                full_rows(2),
                f32_col("monetary_total", vec![5.0, f32::NAN]),
            )),
            churn(),
        ),
        Code::InvalidArgument,
        &["monetary_total", "row 1", "missing"],
    )
    .await;
    let flagged = pb::FeatureColumn {
        missing_rows: vec![0],
        ..i64_col("frequency", vec![1, 2])
    };
    expect_error(
        &app,
        request(matrix(replace(full_rows(2), flagged)), churn()),
        Code::InvalidArgument,
        &["frequency", "row 0"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(
                full_rows(2),
                f32_col("recency_days", vec![5.0, -3.0]),
            )),
            churn(),
        ),
        Code::InvalidArgument,
        &["recency_days", "row 1", "range"],
    )
    .await;
    expect_error(
        &app,
        request(
            matrix(replace(
                full_rows(2),
                cat_col("region", vec!["europe", "atlantis"]),
            )),
            churn(),
        ),
        Code::InvalidArgument,
        &["region", "row 1", "category"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(vec![]), churn()),
        Code::InvalidArgument,
        &["no rows"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(full_rows(0)), churn()),
        Code::InvalidArgument,
        &["no rows"],
    )
    .await;
    let mut dup = full_rows(2);
    dup.push(f32_col("recency_days", vec![1.0, 2.0]));
    expect_error(
        &app,
        request(matrix(dup), churn()),
        Code::InvalidArgument,
        &["recency_days", "more than once"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(full_rows(2)), vec![]),
        Code::InvalidArgument,
        &["no models"],
    )
    .await;
    let mut ids = ok();
    ids.entity_ids = vec!["only-one".into()];
    expect_error(&app, ids, Code::InvalidArgument, &["entity_ids"]).await;
    let no_values = pb::FeatureColumn {
        name: "recency_days".into(),
        values: None,
        missing_rows: vec![],
    };
    expect_error(
        &app,
        request(matrix(replace(full_rows(2), no_values)), churn()),
        Code::InvalidArgument,
        &["recency_days", "no values"],
    )
    .await;
    let oob = pb::FeatureColumn {
        missing_rows: vec![7],
        ..f32_col("recency_days", vec![1.0, 2.0])
    };
    expect_error(
        &app,
        request(matrix(replace(full_rows(2), oob)), churn()),
        Code::InvalidArgument,
        &["missing_rows", "7"],
    )
    .await;
    expect_error(
        &app,
        request(matrix(full_rows(5001)), churn()),
        Code::ResourceExhausted,
        &["5001", "5000"],
    )
    .await;
    let mut seg = ok();
    seg.segments = vec!["high_value_abandoners".into()];
    expect_error(&app, seg, Code::NotFound, &["high_value_abandoners"]).await;
    // A bad model in a multi-model request fails the whole request, before
    // any model runs.
    expect_error(
        &app,
        request(
            matrix(full_rows(2)),
            vec![model("churn", 0), model("ltv", 42)],
        ),
        Code::NotFound,
        &["ltv", "42"],
    )
    .await;

    // Extra columns a model does not use are fine; and nothing above changed
    // what a good request gets.
    let mut extra = full_rows(2);
    extra.push(f32_col("favourite_colour_code", vec![1.0, 2.0]));
    let with_extra = app.score(request(matrix(extra), churn())).await.unwrap();
    assert_eq!(with_extra.models[0].scores, baseline.models[0].scores);
    assert_eq!(
        app.score(ok()).await.unwrap().models[0].scores,
        baseline.models[0].scores
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_at_once() {
    // One worker, a queue of one job and tiny batches: a large request needs
    // many jobs at once and cannot be queued.
    let app = spawn_app_with(&shipped_models(), |a| {
        a.engine.workers = Some(1);
        a.engine.queue_capacity = 1;
        a.engine.max_batch_rows = 10;
    })
    .await;
    let status = app
        .score(request(matrix(full_rows(1000)), vec![model("churn", 0)]))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("queue is full"),
        "{}",
        status.message()
    );
    // The server recovers once the queue drains.
    let mut recovered = false;
    for _ in 0..200 {
        if app
            .score(request(matrix(full_rows(5)), vec![model("churn", 0)]))
            .await
            .is_ok()
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(recovered);
    app.stop().await.unwrap();
}

/// A caller's strings come back bounded: a 1 MB name (any identifier the
/// server echoes) gets its precise status with a message under 1 KiB that
/// says how long the name was, and a newline in a name is escaped so it
/// cannot start a forged log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_control_character_names_are_echoed_bounded_and_escaped() {
    use segscore::proto::oip::{
        self, grpc_inference_service_client::GrpcInferenceServiceClient,
        model_infer_request::InferInputTensor, InferTensorContents,
    };
    let app = spawn_app().await;
    let huge = "m".repeat(1 << 20);
    let mut oip = GrpcInferenceServiceClient::new(
        tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect_lazy(),
    )
    .max_encoding_message_size(usize::MAX);
    let tensor = |name: &str| InferInputTensor {
        name: name.into(),
        datatype: "FP32".into(),
        shape: vec![1, 12],
        contents: Some(InferTensorContents {
            fp32_contents: vec![1.0; 12],
            ..Default::default()
        }),
        ..Default::default()
    };
    let infer = |model: &str, input: &str| oip::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![tensor(input)],
        ..Default::default()
    };
    let mut with_label = model("churn", 0);
    with_label.label = huge.clone();
    let mut with_segment = request(matrix(full_rows(1)), vec![model("churn", 0)]);
    with_segment.segments = vec![huge.clone()];
    let answers: Vec<(&str, Result<(), tonic::Status>, Code)> = vec![
        (
            "Score model name",
            app.score(request(matrix(full_rows(1)), vec![model(&huge, 0)]))
                .await
                .map(drop),
            Code::NotFound,
        ),
        (
            "Score label",
            app.score(request(matrix(full_rows(1)), vec![with_label]))
                .await
                .map(drop),
            Code::NotFound,
        ),
        (
            "Score segment",
            app.score(with_segment).await.map(drop),
            Code::NotFound,
        ),
        (
            "GetModel",
            app.client
                .clone()
                .get_model(pb::GetModelRequest { name: huge.clone() })
                .await
                .map(drop),
            Code::NotFound,
        ),
        (
            "ModelInfer model_name",
            oip.model_infer(infer(&huge, "features")).await.map(drop),
            Code::NotFound,
        ),
        (
            "ModelInfer input name",
            oip.model_infer(infer("churn", &huge)).await.map(drop),
            Code::InvalidArgument,
        ),
        (
            "ModelMetadata",
            oip.model_metadata(oip::ModelMetadataRequest {
                name: huge.clone(),
                version: String::new(),
            })
            .await
            .map(drop),
            Code::NotFound,
        ),
    ];
    // ModelReady answers ready=false for any name it does not serve, as
    // Triton does: no error, so no message to bound.
    let ready = oip
        .model_ready(oip::ModelReadyRequest {
            name: huge.clone(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ready.ready);
    for (what, got, code) in answers {
        let status = got.expect_err(what);
        let message = status.message();
        assert_eq!(
            status.code(),
            code,
            "{what}: {}",
            &message[..message.len().min(300)]
        );
        assert!(
            message.len() < 1024,
            "{what}: a {}-byte message",
            message.len()
        );
        assert!(
            message.contains("…(truncated, 1048576 bytes)"),
            "{what}: {message}"
        );
    }
    let status = app
        .score(request(
            matrix(full_rows(1)),
            vec![model("churn\nINFO forged line", 0)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("`churn\\nINFO forged line`"),
        "{}",
        status.message()
    );
    app.stop().await.unwrap();
}
