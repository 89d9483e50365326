//! The REST front end (`--http-addr`) over real HTTP/1.1: every route, JSON
//! and binary-extension inference equal to gRPC's, segscore JSON equal to
//! `Score`, bad inputs with precise statuses (never 500), tokens and roles,
//! CORS off by default, deadlines as 504, metrics with `protocol="http"`.

use std::net::SocketAddr;

use segscore::proto::{
    oip::{self, grpc_inference_service_client::GrpcInferenceServiceClient},
    pb::{self, feature_column::Values},
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// One HTTP/1.1 answer.
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request on its own connection (`Connection: close`) and reads
/// the whole answer: a client with no behaviour of its own to debug.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    // A server may answer (413) before reading the whole body and close.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&raw[..line]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[line + 2..line + 2 + size]);
        raw = &raw[line + 2 + size + 2..];
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    http(addr, "GET", path, &[], b"").await
}

pub async fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Answer {
    http(
        addr,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}

pub async fn spawn_http_app(tweak: impl FnOnce(&mut segscore::config::ServeArgs)) -> TestApp {
    spawn_app_with(&shipped_models(), |a| {
        a.http_addr = Some("127.0.0.1:0".parse().unwrap());
        a.segments = Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("segments.toml"));
        tweak(a)
    })
    .await
}

/// A segscore.v1 column as the JSON values of `/v1/score`'s `columns`.
fn json_values(column: &pb::FeatureColumn) -> Vec<Value> {
    let mut values: Vec<Value> = match column.values.as_ref().unwrap() {
        Values::F32(v) => v.values.iter().map(|x| json!(x)).collect(),
        Values::F64(v) => v.values.iter().map(|x| json!(x)).collect(),
        Values::I64(v) => v.values.iter().map(|x| json!(x)).collect(),
        Values::Bool(v) => v.values.iter().map(|x| json!(x)).collect(),
        Values::Category(v) => v.values.iter().map(|x| json!(x)).collect(),
    };
    for &row in &column.missing_rows {
        values[row as usize] = Value::Null;
    }
    values
}

/// Columns with varied values, so equal answers are not a coincidence of
/// identical rows.
fn varied_rows(rows: usize) -> Vec<pb::FeatureColumn> {
    let mut columns = full_rows(rows);
    columns[0] = f32_col("recency_days", (0..rows).map(|i| i as f32 * 7.5).collect());
    columns[3] = f32_col(
        "monetary_mean",
        (0..rows).map(|i| 10.0 + i as f32).collect(),
    );
    columns[9] = bool_col(
        "cart_abandoned_24h",
        (0..rows).map(|i| i % 2 == 0).collect(),
    );
    columns[11] = cat_col(
        "region",
        (0..rows)
            .map(|i| {
                if i % 3 == 0 {
                    "europe"
                } else {
                    "north_america"
                }
            })
            .collect(),
    );
    columns
}

fn as_json_columns(columns: &[pb::FeatureColumn]) -> Value {
    Value::Object(
        columns
            .iter()
            .map(|c| (c.name.clone(), Value::Array(json_values(c))))
            .collect(),
    )
}

fn as_json_rows(columns: &[pb::FeatureColumn]) -> Value {
    let values: Vec<Vec<Value>> = columns.iter().map(json_values).collect();
    let rows = values[0].len();
    Value::Array(
        (0..rows)
            .map(|r| {
                Value::Object(
                    columns
                        .iter()
                        .zip(&values)
                        .map(|(c, v)| (c.name.clone(), v[r].clone()))
                        .collect(),
                )
            })
            .collect(),
    )
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_like_grpc() {
    let app = spawn_http_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();

    let server = get(addr, "/v2").await;
    assert_eq!(server.status, 200);
    let server = server.json();
    assert_eq!(server["name"], "segscore");
    assert_eq!(
        server["extensions"],
        json!(["model_repository", "model_configuration", "statistics"])
    );
    assert_eq!(
        get(addr, "/v2/health/live").await.json(),
        json!({"live": true})
    );
    let ready = get(addr, "/v2/health/ready").await;
    assert_eq!((ready.status, ready.json()), (200, json!({"ready": true})));

    // Model metadata equals ModelMetadata's, field by field.
    let churn = latest_version("churn");
    let md = get(addr, "/v2/models/churn").await;
    assert_eq!(md.status, 200);
    let md = md.json();
    let grpc = oip
        .model_metadata(oip::ModelMetadataRequest {
            name: "churn".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(md["name"], "churn");
    assert_eq!(md["platform"], grpc.platform);
    assert_eq!(md["versions"], json!(grpc.versions));
    assert_eq!(md["inputs"][0]["name"], grpc.inputs[0].name);
    assert_eq!(md["inputs"][0]["shape"], json!(grpc.inputs[0].shape));
    assert_eq!(md["outputs"][0]["name"], "score");
    let v1 = get(addr, "/v2/models/churn/versions/1").await;
    assert_eq!(v1.status, 200, "{}", String::from_utf8_lossy(&v1.body));

    // Readiness: 200 for a serving model, 503 (never 404) for what is not.
    assert_eq!(get(addr, "/v2/models/churn/ready").await.status, 200);
    assert_eq!(
        get(addr, "/v2/models/churn/versions/1/ready").await.status,
        200
    );
    let unknown = get(addr, "/v2/models/nope/ready").await;
    assert_eq!(
        (unknown.status, unknown.json()),
        (503, json!({"ready": false}))
    );
    assert_eq!(
        get(addr, "/v2/models/churn/versions/99/ready").await.status,
        503
    );
    assert_eq!(
        get(addr, "/v2/models/churn/versions/01/ready").await.status,
        400
    );

    // Config in Triton's JSON form.
    let config = get(addr, "/v2/models/churn/config").await.json();
    assert_eq!(config["name"], "churn");
    assert_eq!(config["platform"], "onnxruntime_onnx");
    assert_eq!(config["input"][0]["data_type"], "TYPE_FP32");
    assert_eq!(config["output"][0]["name"], "score");
    assert!(config["max_batch_size"].as_i64().unwrap() > 0);

    // Statistics count an inference made over HTTP.
    // Index 9 is a bool (0/1), 11 a category code.
    let features: Vec<f32> = (0..12)
        .map(|i| match i {
            9 => 1.0,
            11 => 2.0,
            _ => i as f32,
        })
        .collect();
    let infer = post_json(
        addr,
        "/v2/models/churn/infer",
        &json!({"inputs": [{"name": "features", "shape": [1, 12], "datatype": "FP32", "data": features}]}),
    )
    .await;
    assert_eq!(
        infer.status,
        200,
        "{}",
        String::from_utf8_lossy(&infer.body)
    );
    let stats = get(addr, "/v2/models/churn/stats").await.json();
    let entry = stats["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["version"].as_str().and_then(|v| v.parse().ok()) == Some(churn))
        .unwrap()
        .clone();
    assert!(entry["inference_count"].as_u64().unwrap() >= 1, "{entry}");
    assert!(
        entry["inference_stats"]["success"]["count"]
            .as_u64()
            .unwrap()
            >= 1
    );
    let all = get(addr, "/v2/models/stats").await.json();
    assert!(all["model_stats"].as_array().unwrap().len() >= 4);
    assert_eq!(
        get(addr, "/v2/models/churn/versions/1/stats").await.status,
        200
    );
    assert_eq!(get(addr, "/v2/models/nope/stats").await.status, 404);

    // Repository index: the same entries as RepositoryIndex.
    let index = http(addr, "POST", "/v2/repository/index", &[], b"")
        .await
        .json();
    let grpc = oip
        .repository_index(oip::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.as_array().unwrap().len(), grpc.models.len());
    for (j, g) in index.as_array().unwrap().iter().zip(&grpc.models) {
        assert_eq!(j["name"], g.name);
        assert_eq!(j["version"], g.version);
        assert_eq!(j["state"], g.state);
    }
    let ready_only = post_json(addr, "/v2/repository/index", &json!({"ready": true})).await;
    assert!(ready_only
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["state"] == "READY"));

    // segscore JSON lists.
    let models = get(addr, "/v1/models").await.json();
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"churn") && names.contains(&"ltv"),
        "{names:?}"
    );
    let churn_info = &models["models"].as_array().unwrap()[0];
    assert_eq!(churn_info["default_version"], churn);
    assert_eq!(churn_info["versions"][0]["state"], "serving");
    let segments = get(addr, "/v1/segments").await.json();
    assert!(segments["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "high_value_abandoners" && s["state"] == "ready"));

    // The OpenAPI document describes the /v1 routes.
    let doc = get(addr, "/openapi.json").await.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/score",
        "/v1/models",
        "/v1/segments",
        "/v1/segments/{name}/members",
        "/v1/customers/{id}/segments",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["components"]["schemas"]["ScoreRequest"].is_object());

    let nowhere = get(addr, "/v3/nothing").await;
    assert_eq!(nowhere.status, 404);
    assert!(nowhere.json()["error"]
        .as_str()
        .unwrap()
        .contains("no route"));
    app.stop().await.unwrap();
}

/// The same golden rows through gRPC ModelInfer, KServe JSON and the binary
/// extension (binary inputs and outputs): identical scores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_and_binary_inference_equal_grpc() {
    let app = spawn_http_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    let mut oip = GrpcInferenceServiceClient::connect(format!("http://{}", app.addr))
        .await
        .unwrap();
    // Rows read through the churn manifest's encoding: the FP32 matrix.
    let rows = 300;
    let batch = {
        let m = manifest("churn", latest_version("churn"));
        let schema = segscore::features::FeatureSchema::new(m.features.clone()).unwrap();
        let b: segscore::features::FeatureBatch = matrix(varied_rows(rows)).try_into().unwrap();
        schema
            .encode(&b, 0..rows)
            .unwrap()
            .into_raw_vec_and_offset()
            .0
    };
    let grpc = oip
        .model_infer(oip::ModelInferRequest {
            model_name: "churn".into(),
            inputs: vec![oip::model_infer_request::InferInputTensor {
                name: "features".into(),
                datatype: "FP32".into(),
                shape: vec![rows as i64, 12],
                contents: Some(oip::InferTensorContents {
                    fp32_contents: batch.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let expected = grpc.outputs[0].contents.clone().unwrap().fp32_contents;
    assert_eq!(expected.len(), rows);

    // JSON, nested row by row as KServe allows.
    let nested: Vec<Vec<f32>> = batch.chunks(12).map(<[f32]>::to_vec).collect();
    let json_answer = post_json(
        addr,
        "/v2/models/churn/infer",
        &json!({"id": "r1", "inputs": [{"name": "features", "shape": [rows, 12], "datatype": "FP32", "data": nested}]}),
    )
    .await;
    assert_eq!(
        json_answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&json_answer.body)
    );
    let body = json_answer.json();
    assert_eq!(body["id"], "r1");
    assert_eq!(body["model_version"], grpc.model_version);
    assert_eq!(body["outputs"][0]["shape"], json!([rows]));
    assert_eq!(f32s(&body["outputs"][0]["data"]), expected);

    // Binary in, binary out.
    let header = json!({
        "inputs": [{"name": "features", "shape": [rows, 12], "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.len() * 4}}],
        "outputs": [{"name": "score", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(batch.iter().flat_map(|v| v.to_le_bytes()));
    let length = header.len().to_string();
    let binary = http(
        addr,
        "POST",
        "/v2/models/churn/infer",
        &[
            ("content-type", "application/octet-stream"),
            ("inference-header-content-length", &length),
        ],
        &body,
    )
    .await;
    assert_eq!(
        binary.status,
        200,
        "{}",
        String::from_utf8_lossy(&binary.body)
    );
    let json_length: usize = binary
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&binary.body[..json_length]).unwrap();
    assert_eq!(
        head["outputs"][0]["parameters"]["binary_data_size"],
        rows * 4
    );
    assert!(head["outputs"][0].get("data").is_none());
    let scores: Vec<f32> = binary.body[json_length..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(scores, expected);

    // binary_data_output for every output, JSON input.
    let all_binary = post_json(
        addr,
        "/v2/models/churn/infer",
        &json!({"parameters": {"binary_data_output": true},
                "inputs": [{"name": "features", "shape": [rows, 12], "datatype": "FP32", "data": batch}]}),
    )
    .await;
    assert_eq!(all_binary.status, 200);
    let json_length: usize = all_binary
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(all_binary.body.len() - json_length, rows * 4);
    app.stop().await.unwrap();
}

/// `/v1/score` with rows and with columns answers exactly what segscore.v1
/// `Score` answers, versions and sha256 included; the membership endpoints
/// agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_score_rows_and_columns_equal_grpc_score_and_membership_agrees() {
    let app = spawn_http_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    let rows = 40;
    let columns = varied_rows(rows);
    let ids: Vec<String> = (0..rows).map(|i| format!("cust-{i}")).collect();
    let mut grpc_req = request(
        matrix(columns.clone()),
        vec![model("churn", 0), model("ltv", 0), model("propensity", 1)],
    );
    grpc_req.segments = vec!["high_value_abandoners".into()];
    grpc_req.entity_ids = ids.clone();
    let grpc = app.score(grpc_req).await.unwrap();

    let models = json!(["churn", "ltv", {"name": "propensity", "version": 1}]);
    for features in [
        json!({"columns": as_json_columns(&columns)}),
        json!({"rows": as_json_rows(&columns)}),
    ] {
        let mut body =
            json!({"models": models, "segments": ["high_value_abandoners"], "entity_ids": ids});
        body.as_object_mut()
            .unwrap()
            .extend(features.as_object().unwrap().clone());
        let answer = post_json(addr, "/v1/score", &body).await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let answer = answer.json();
        assert_eq!(answer["rows"], rows);
        for (j, g) in answer["models"]
            .as_array()
            .unwrap()
            .iter()
            .zip(&grpc.models)
        {
            assert_eq!(j["name"], g.name);
            assert_eq!(j["version"], g.version);
            assert_eq!(j["sha256"], g.sha256);
            assert_eq!(f32s(&j["scores"]), g.scores);
        }
        let members = &answer["segments"][0];
        assert_eq!(members["name"], "high_value_abandoners");
        let rows: Vec<u32> = members["member_rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(rows, grpc.segments[0].member_rows);
    }

    // Which of these customers are members: the same rows, by id.
    let mut body = json!({"entity_ids": ids, "columns": as_json_columns(&columns)});
    let members = post_json(addr, "/v1/segments/high_value_abandoners/members", &body).await;
    assert_eq!(
        members.status,
        200,
        "{}",
        String::from_utf8_lossy(&members.body)
    );
    let expected: Vec<Value> = grpc.segments[0]
        .member_rows
        .iter()
        .map(|&r| json!(ids[r as usize]))
        .collect();
    assert_eq!(members.json()["members"], Value::Array(expected));
    body["entity_ids"] = json!([]);
    assert_eq!(
        post_json(addr, "/v1/segments/high_value_abandoners/members", &body)
            .await
            .status,
        400
    );
    let unknown = post_json(
        addr,
        "/v1/segments/nope/members",
        &json!({"entity_ids": ["a"], "rows": [{}]}),
    )
    .await;
    assert_eq!(unknown.status, 404);

    // One customer: member of exactly the segments /v1/score says.
    let all_rows = as_json_rows(&columns);
    for row in 0..3 {
        let id = &ids[row];
        let answer = post_json(
            addr,
            &format!("/v1/customers/{id}/segments"),
            &json!({"features": all_rows[row], "segments": ["high_value_abandoners"]}),
        )
        .await;
        assert_eq!(
            answer.status,
            200,
            "{}",
            String::from_utf8_lossy(&answer.body)
        );
        let answer = answer.json();
        let member = grpc.segments[0].member_rows.contains(&(row as u32));
        assert_eq!(answer["customer_id"], id.as_str());
        assert_eq!(
            answer["segments"],
            if member {
                json!(["high_value_abandoners"])
            } else {
                json!([])
            }
        );
    }
    // Without a list: every ready segment is checked.
    let every = post_json(
        addr,
        "/v1/customers/c-1/segments",
        &json!({"features": all_rows[0]}),
    )
    .await;
    assert_eq!(
        every.status,
        200,
        "{}",
        String::from_utf8_lossy(&every.body)
    );
    assert!(every.json()["checked"].as_array().unwrap().len() >= 2);
    app.stop().await.unwrap();
}

/// Malformed JSON, wrong shapes, wrong types, unknown names, oversized
/// bodies: each a precise 4xx with `{"error": ...}`, never a 500; the
/// server still scores afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rest_inputs_get_precise_4xx_never_500() {
    let app = spawn_http_app(|a| a.http_max_body_bytes = 64 * 1024).await;
    let addr = app.http_addr.unwrap();
    let row = as_json_rows(&full_rows(1))[0].clone();
    let tensor = |shape: Value, datatype: &str, data: Value| json!({"inputs": [{"name": "features", "shape": shape, "datatype": datatype, "data": data}]});
    let twelve: Vec<f32> = vec![1.0; 12];
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "/v2/models/churn/infer",
            "malformed JSON",
            b"{\"inputs\": [".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v2/models/churn/infer",
            "not an object",
            b"[1,2]".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v2/models/churn/infer",
            "no inputs",
            b"{}".to_vec(),
            400,
            "inputs",
        ),
        (
            "/v2/models/churn/infer",
            "wrong shape",
            tensor(json!([1, 11]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            400,
            "do not fill shape",
        ),
        (
            "/v2/models/churn/infer",
            "wrong width",
            tensor(json!([2, 6]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            400,
            "expected [rows, 12]",
        ),
        (
            "/v2/models/churn/infer",
            "negative shape",
            tensor(json!([-1, 12]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            400,
            "negative",
        ),
        (
            "/v2/models/churn/infer",
            "strings for FP32",
            tensor(json!([1, 12]), "FP32", json!(vec!["a"; 12]))
                .to_string()
                .into_bytes(),
            400,
            "is not a number",
        ),
        (
            "/v2/models/churn/infer",
            "unknown datatype",
            tensor(json!([1, 12]), "FP8", json!(twelve))
                .to_string()
                .into_bytes(),
            400,
            "not supported",
        ),
        (
            "/v2/models/churn/infer",
            "shape of strings",
            br#"{"inputs":[{"name":"features","shape":"x","datatype":"FP32","data":[]}]}"#.to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v2/models/churn/infer",
            "no data",
            br#"{"inputs":[{"name":"features","shape":[1,12],"datatype":"FP32"}]}"#.to_vec(),
            400,
            "neither `data`",
        ),
        (
            "/v2/models/nope/infer",
            "unknown model",
            tensor(json!([1, 12]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            404,
            "`nope` not found",
        ),
        (
            "/v2/models/churn/versions/99/infer",
            "unknown version",
            tensor(json!([1, 12]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            404,
            "99",
        ),
        (
            "/v2/models/churn/versions/x/infer",
            "bad version",
            tensor(json!([1, 12]), "FP32", json!(twelve))
                .to_string()
                .into_bytes(),
            400,
            "not a version number",
        ),
        (
            "/v1/score",
            "malformed JSON",
            b"{\"models\": [\"churn\"".to_vec(),
            400,
            "not valid JSON",
        ),
        (
            "/v1/score",
            "unknown field",
            json!({"models": ["churn"], "rows": [row], "extra": 1})
                .to_string()
                .into_bytes(),
            400,
            "unknown field",
        ),
        (
            "/v1/score",
            "rows and columns",
            json!({"models": ["churn"], "rows": [row], "columns": {}})
                .to_string()
                .into_bytes(),
            400,
            "not both",
        ),
        (
            "/v1/score",
            "no features",
            json!({"models": ["churn"]}).to_string().into_bytes(),
            400,
            "no features",
        ),
        (
            "/v1/score",
            "no models",
            json!({"rows": [row]}).to_string().into_bytes(),
            400,
            "names no models",
        ),
        (
            "/v1/score",
            "mixed types",
            json!({"models": ["churn"], "rows": [row, {"recency_days": "soon"}]})
                .to_string()
                .into_bytes(),
            400,
            "mixes strings",
        ),
        (
            "/v1/score",
            "object value",
            json!({"models": ["churn"], "rows": [{"recency_days": {"a": 1}}]})
                .to_string()
                .into_bytes(),
            400,
            "a value is a number",
        ),
        (
            "/v1/score",
            "ragged columns",
            json!({"models": ["churn"], "columns": {"recency_days": [1, 2], "frequency": [1]}})
                .to_string()
                .into_bytes(),
            400,
            "",
        ),
        (
            "/v1/score",
            "column not an array",
            json!({"models": ["churn"], "columns": {"recency_days": 3}})
                .to_string()
                .into_bytes(),
            400,
            "not an array",
        ),
        (
            "/v1/score",
            "string for a number feature",
            json!({"models": ["churn"], "rows": [{"recency_days": "x"}]})
                .to_string()
                .into_bytes(),
            400,
            "recency_days",
        ),
        (
            "/v1/score",
            "unknown model",
            json!({"models": ["nope"], "rows": [row]})
                .to_string()
                .into_bytes(),
            404,
            "`nope` not found",
        ),
        (
            "/v1/score",
            "unknown segment",
            json!({"segments": ["nope"], "rows": [row]})
                .to_string()
                .into_bytes(),
            404,
            "segment `nope` not found",
        ),
        (
            "/v1/score",
            "ids per row",
            json!({"models": ["churn"], "rows": [row], "entity_ids": ["a", "b"]})
                .to_string()
                .into_bytes(),
            400,
            "entity_ids",
        ),
        (
            "/v1/score",
            "oversized body",
            vec![b' '; 65 * 1024],
            413,
            "--http-max-body-bytes",
        ),
        (
            "/v2/models/churn/infer",
            "oversized body",
            vec![b' '; 65 * 1024],
            413,
            "--http-max-body-bytes",
        ),
        (
            "/v1/customers/c1/segments",
            "features not an object",
            json!({"features": [1]}).to_string().into_bytes(),
            400,
            "not valid JSON",
        ),
    ];
    for (path, what, body, status, fragment) in cases {
        let answer = http(
            addr,
            "POST",
            path,
            &[("content-type", "application/json")],
            &body,
        )
        .await;
        assert_eq!(
            answer.status,
            status,
            "{path} {what}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(error.contains(fragment), "{path} {what}: {error}");
    }
    // Binary-extension framing errors.
    let header = json!({"inputs": [{"name": "features", "shape": [1, 12], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 48}}]})
    .to_string();
    let short = http(
        addr,
        "POST",
        "/v2/models/churn/infer",
        &[("inference-header-content-length", &header.len().to_string())],
        header.as_bytes(),
    )
    .await;
    assert_eq!(short.status, 400);
    assert!(short.json()["error"]
        .as_str()
        .unwrap()
        .contains("binary_data_size"));
    let past_end = http(
        addr,
        "POST",
        "/v2/models/churn/infer",
        &[("inference-header-content-length", "99999")],
        header.as_bytes(),
    )
    .await;
    assert_eq!(past_end.status, 400);
    // Still scoring.
    let ok = post_json(
        addr,
        "/v1/score",
        &json!({"models": ["churn"], "rows": [row]}),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_over_http_match_grpc() {
    let app = spawn_http_app(|a| {
        a.auth_tokens = vec![
            "score:s-token".parse().unwrap(),
            "admin:a-token".parse().unwrap(),
        ];
    })
    .await;
    let addr = app.http_addr.unwrap();
    let row = as_json_rows(&full_rows(1))[0].clone();
    let score = json!({"models": ["churn"], "rows": [row]}).to_string();
    let call = |path: &'static str, token: Option<&'static str>| {
        let score = score.clone();
        async move {
            let auth = token.map(|t| format!("Bearer {t}"));
            let mut headers = vec![("content-type", "application/json")];
            if let Some(a) = &auth {
                headers.push(("authorization", a.as_str()));
            }
            let method = if path == "/v1/score" || path == "/v2/repository/index" {
                "POST"
            } else {
                "GET"
            };
            http(addr, method, path, &headers, score.as_bytes()).await
        }
    };
    let none = call("/v1/score", None).await;
    assert_eq!(none.status, 401);
    assert!(none.json()["error"]
        .as_str()
        .unwrap()
        .contains("missing `authorization: Bearer"));
    assert_eq!(call("/v1/score", Some("wrong")).await.status, 401);
    assert_eq!(call("/v1/score", Some("s-token")).await.status, 200);
    assert_eq!(call("/v1/score", Some("a-token")).await.status, 200);
    assert_eq!(call("/v2/models/churn", Some("s-token")).await.status, 200);
    // RepositoryIndex is an admin call over gRPC, and so over HTTP.
    let denied = call("/v2/repository/index", Some("s-token")).await;
    assert_eq!(denied.status, 403);
    assert!(denied.json()["error"]
        .as_str()
        .unwrap()
        .contains("needs an `admin` token"));
    assert_eq!(
        call("/v2/repository/index", Some("a-token")).await.status,
        200
    );
    // Health and the API document are open (no --auth-health), as gRPC health is.
    assert_eq!(call("/v2/health/ready", None).await.status, 200);
    assert_eq!(call("/v2/health/live", None).await.status, 200);
    assert_eq!(call("/openapi.json", None).await.status, 200);
    assert_eq!(call("/v2", None).await.status, 401);
    app.stop().await.unwrap();

    let app = spawn_http_app(|a| {
        a.auth_tokens = vec!["score:s-token".parse().unwrap()];
        a.auth_health = true;
    })
    .await;
    let addr = app.http_addr.unwrap();
    assert_eq!(get(addr, "/v2/health/ready").await.status, 401);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_on_for_configured_origins() {
    let preflight = [
        ("origin", "https://shop.example"),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type"),
    ];
    let app = spawn_http_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    let answer = http(
        addr,
        "GET",
        "/v1/segments",
        &[("origin", "https://shop.example")],
        b"",
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("access-control-allow-origin"), None);
    let answer = http(addr, "OPTIONS", "/v1/score", &preflight, b"").await;
    assert_eq!(answer.header("access-control-allow-origin"), None);
    app.stop().await.unwrap();

    let app = spawn_http_app(|a| a.http_cors_origin = vec!["https://shop.example".into()]).await;
    let addr = app.http_addr.unwrap();
    let answer = http(addr, "OPTIONS", "/v1/score", &preflight, b"").await;
    assert!(answer.status < 300, "{}", answer.status);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(answer
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let answer = http(
        addr,
        "GET",
        "/v1/segments",
        &[("origin", "https://shop.example")],
        b"",
    )
    .await;
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    let other = http(
        addr,
        "GET",
        "/v1/segments",
        &[("origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    app.stop().await.unwrap();
}

/// A request whose model never answers (a closed gate the test holds) gets
/// 504 at its `Timeout`, and is counted with `protocol="http"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_header_gives_504_and_metrics_carry_the_protocol() {
    let gate = Gate::closed();
    let wrapper = gate.wrapper("ltv");
    let app = spawn_http_app(|a| {
        a.engine.backend_wrapper = Some(wrapper);
        a.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = app.http_addr.unwrap();
    let row = as_json_rows(&full_rows(1))[0].clone();
    let body = json!({"models": ["ltv"], "rows": [row]}).to_string();
    let slow = http(
        addr,
        "POST",
        "/v1/score",
        &[("content-type", "application/json"), ("timeout", "0.3")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(slow.status, 504, "{}", String::from_utf8_lossy(&slow.body));
    assert!(slow.json()["error"].as_str().unwrap().contains("deadline"));
    let bad = http(
        addr,
        "POST",
        "/v1/score",
        &[("timeout", "soon")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(bad.status, 400);
    gate.open();
    let ok = post_json(addr, "/v1/score", &serde_json::from_str(&body).unwrap()).await;
    assert_eq!(ok.status, 200);
    let (_, text) = crate::metrics::http_get(app.metrics_addr.unwrap(), "/metrics").await;
    for line in [
        "segscore_requests_total{code=\"DeadlineExceeded\",method=\"Score\",protocol=\"http\"} 1",
        "segscore_requests_total{code=\"Ok\",method=\"Score\",protocol=\"http\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
    }
    app.stop().await.unwrap();
}

/// The status page at `/`: HTML with every model of the repository and every
/// segment that has been scored, no script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_lists_every_model_and_scored_segment() {
    let app = spawn_http_app(|_| {}).await;
    let addr = app.http_addr.unwrap();
    // Segment windows fill as rows are scored: score every segment once.
    let segments: Vec<String> = get(addr, "/v1/segments").await.json()["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    let mut scored = app.client.clone();
    let mut req = request(matrix(full_rows(3)), vec![]);
    req.segments = segments.clone();
    scored.score(req).await.unwrap();
    let page = get(addr, "/").await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.body.clone()).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(!html.contains("<script"), "the page needs no script");
    let models = get(addr, "/v1/models").await.json()["models"].clone();
    for model in models.as_array().unwrap() {
        let name = model["name"].as_str().unwrap();
        assert!(html.contains(name), "model {name} missing:\n{html}");
    }
    for segment in &segments {
        assert!(
            html.contains(segment.as_str()),
            "segment {segment} missing:\n{html}"
        );
    }
    app.stop().await.unwrap();
}
