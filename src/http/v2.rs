//! KServe V2 REST (the Open Inference Protocol over HTTP/JSON) with Triton's
//! extensions that tritonclient.http calls: model configuration, statistics,
//! repository index, and the binary tensor data extension
//! (`Inference-Header-Content-Length`, `binary_data_size`, `binary_data`,
//! `binary_data_output`) that carries large batches as little-endian bytes
//! after the JSON header instead of JSON numbers.
//!
//! Each route converts JSON to the OIP protobuf message the gRPC service
//! takes, calls the same [`InferenceService`](crate::api::inference::InferenceService)
//! method, and converts the answer back: the two protocols cannot disagree
//! on a tensor, a shape check or an error message.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, State},
    http::{header, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{parse_json, Body, Deadline, HttpState, ScoredBy};
use crate::{echo::echo, error::ApiError, proto::oip};

/// The binary extension's header: the JSON part's length in the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/models/stats", get(statistics))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/{model}/stats", get(statistics))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(statistics),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
}

/// `{model}` and, on the `/versions/{version}` routes, the version.
#[derive(Debug, Default, Deserialize)]
pub struct ModelPath {
    #[serde(default)]
    model: String,
    #[serde(default)]
    version: Option<String>,
}

impl ModelPath {
    fn version(&self) -> &str {
        self.version.as_deref().unwrap_or("")
    }
}

async fn server_metadata() -> Json<Value> {
    let m = crate::api::inference::server_metadata();
    Json(json!({ "name": m.name, "version": m.version, "extensions": m.extensions }))
}

async fn live() -> Json<Value> {
    Json(json!({ "live": true }))
}

/// 200 when ready, 503 otherwise: what load balancers and Kubernetes
/// probes read (the body says the same for people).
fn readiness(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({ "ready": ready }))).into_response()
}

async fn ready(State(state): State<Arc<HttpState>>) -> Response {
    readiness(state.inference.is_server_ready())
}

async fn model_ready(
    State(state): State<Arc<HttpState>>,
    Path(path): Path<ModelPath>,
) -> Result<Response, ApiError> {
    Ok(readiness(
        state
            .inference
            .is_model_ready(&path.model, path.version())?,
    ))
}

fn parameter(p: &oip::InferParameter) -> Value {
    use oip::infer_parameter::ParameterChoice as P;
    match &p.parameter_choice {
        Some(P::BoolParam(b)) => json!(b),
        Some(P::Int64Param(i)) => json!(i),
        Some(P::StringParam(s)) => json!(s),
        None => Value::Null,
    }
}

fn parameters(p: &HashMap<String, oip::InferParameter>) -> Map<String, Value> {
    p.iter().map(|(k, v)| (k.clone(), parameter(v))).collect()
}

async fn model_metadata(
    State(state): State<Arc<HttpState>>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    let version = path.version().to_owned();
    let m = state.inference.metadata_of(path.model, &version)?;
    let tensor = |t: &oip::model_metadata_response::TensorMetadata| {
        let mut v = json!({ "name": t.name, "datatype": t.datatype, "shape": t.shape });
        if !t.parameters.is_empty() {
            v["parameters"] = Value::Object(parameters(&t.parameters));
        }
        v
    };
    Ok(Json(json!({
        "name": m.name,
        "versions": m.versions,
        "platform": m.platform,
        "inputs": m.inputs.iter().map(tensor).collect::<Vec<_>>(),
        "outputs": m.outputs.iter().map(tensor).collect::<Vec<_>>(),
    })))
}

/// Triton's model configuration in its JSON form (protobuf field names,
/// `TYPE_*` data types), as tritonclient.http returns it.
async fn model_config(
    State(state): State<Arc<HttpState>>,
    Path(path): Path<ModelPath>,
) -> Result<Json<Value>, ApiError> {
    let c = state.inference.config_of(&path.model, path.version())?;
    let dtype = |d: i32| {
        oip::DataType::try_from(d)
            .map(|d| d.as_str_name())
            .unwrap_or("TYPE_INVALID")
    };
    let tensor = |name: &str, d: i32, dims: &[i64], reshape: &Option<oip::ModelTensorReshape>| {
        let mut v = json!({ "name": name, "data_type": dtype(d), "dims": dims });
        if let Some(r) = reshape {
            v["reshape"] = json!({ "shape": r.shape });
        }
        v
    };
    Ok(Json(json!({
        "name": c.name,
        "platform": c.platform,
        "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| tensor(&i.name, i.data_type, &i.dims, &i.reshape)).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| tensor(&o.name, o.data_type, &o.dims, &o.reshape)).collect::<Vec<_>>(),
    })))
}

fn duration(d: &Option<oip::StatisticDuration>) -> Value {
    let d = d.unwrap_or_default();
    json!({ "count": d.count, "ns": d.ns })
}

/// ModelStatistics; `/v2/models/stats` (no model) is every model's.
async fn statistics(
    State(state): State<Arc<HttpState>>,
    path: Option<Path<ModelPath>>,
) -> Result<Json<Value>, ApiError> {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let stats = state.inference.statistics_of(&path.model, path.version())?;
    let stats: Vec<Value> = stats
        .iter()
        .map(|s| {
            let i = s.inference_stats.unwrap_or_default();
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(&i.success),
                    "fail": duration(&i.fail),
                    "queue": duration(&i.queue),
                    "compute_input": duration(&i.compute_input),
                    "compute_infer": duration(&i.compute_infer),
                    "compute_output": duration(&i.compute_output),
                    "cache_hit": duration(&i.cache_hit),
                    "cache_miss": duration(&i.cache_miss),
                },
                "batch_stats": [],
            })
        })
        .collect();
    Ok(Json(json!({ "model_stats": stats })))
}

#[derive(Debug, Default, Deserialize)]
struct IndexRequest {
    #[serde(default)]
    ready: bool,
}

/// Triton's repository index: a JSON array of `{name, version, state,
/// reason}`. The body (`{"ready": true}`) is optional.
async fn repository_index(
    State(state): State<Arc<HttpState>>,
    Body(body): Body,
) -> Result<Json<Value>, ApiError> {
    let req: IndexRequest = if body.iter().all(u8::is_ascii_whitespace) {
        IndexRequest::default()
    } else {
        parse_json(&body)?
    };
    let models: Vec<Value> = state
        .inference
        .index(req.ready)
        .into_iter()
        .map(|m| json!({ "name": m.name, "version": m.version, "state": m.state, "reason": m.reason }))
        .collect();
    Ok(Json(Value::Array(models)))
}

#[derive(Debug, Deserialize)]
struct InferRequest {
    #[serde(default)]
    id: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputTensor>,
    #[serde(default)]
    outputs: Vec<RequestedOutput>,
}

#[derive(Debug, Deserialize)]
struct InputTensor {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RequestedOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn bad(tensor: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(format!("input tensor `{}`: {message}", echo(tensor)))
}

/// Splits the body into its JSON header and the binary section that
/// follows it (the binary extension), or takes all of it as JSON.
fn split_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ApiError> {
    let Some(value) = headers.get(HEADER_LENGTH) else {
        return Ok((body, &[]));
    };
    let length: usize = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            ApiError::InvalidArgument("Inference-Header-Content-Length is not a byte count".into())
        })?;
    if length > body.len() {
        return Err(ApiError::InvalidArgument(format!(
            "Inference-Header-Content-Length {length} exceeds the {}-byte body",
            body.len()
        )));
    }
    Ok(body.split_at(length))
}

/// Flattens nested JSON arrays (row-major), the forms KServe allows for
/// `data`.
fn flatten<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| flatten(v, out)),
        other => out.push(other),
    }
}

/// One JSON input's values as OIP typed contents. A datatype the OIP
/// conversion does not take gets empty contents, and its precise error from
/// there.
fn contents(input: &InputTensor) -> Result<oip::InferTensorContents, ApiError> {
    let data = input
        .data
        .as_ref()
        .ok_or_else(|| bad(&input.name, "has neither `data` nor `binary_data_size`"))?;
    let mut values = Vec::new();
    flatten(data, &mut values);
    let name = &input.name;
    let number = |i: usize, v: &Value| {
        v.as_f64()
            .ok_or_else(|| bad(name, format!("element {i} is not a number")))
    };
    let integer = |i: usize, v: &Value| {
        v.as_i64()
            .ok_or_else(|| bad(name, format!("element {i} is not an integer")))
    };
    let mut c = oip::InferTensorContents::default();
    match input.datatype.as_str() {
        "FP32" => {
            c.fp32_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| number(i, v).map(|x| x as f32))
                .collect::<Result<_, _>>()?
        }
        "FP64" => {
            c.fp64_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| number(i, v))
                .collect::<Result<_, _>>()?
        }
        "INT64" => {
            c.int64_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| integer(i, v))
                .collect::<Result<_, _>>()?
        }
        "INT32" => {
            c.int_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    integer(i, v).and_then(|x| {
                        i32::try_from(x)
                            .map_err(|_| bad(name, format!("element {i} does not fit INT32")))
                    })
                })
                .collect::<Result<_, _>>()?
        }
        "BOOL" => {
            c.bool_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_bool()
                        .ok_or_else(|| bad(name, format!("element {i} is not a boolean")))
                })
                .collect::<Result<_, _>>()?
        }
        "BYTES" => {
            c.bytes_contents = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str()
                        .map(|s| s.as_bytes().to_vec())
                        .ok_or_else(|| bad(name, format!("element {i} is not a string")))
                })
                .collect::<Result<_, _>>()?
        }
        _ => {}
    }
    Ok(c)
}

/// Typed contents as the raw little-endian bytes of the binary extension
/// (BYTES: each element after its 4-byte length), for a request that mixes
/// JSON and binary inputs: the OIP conversion takes one form for all.
fn contents_to_raw(c: &oip::InferTensorContents) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()));
    out.extend(c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()));
    out.extend(c.int64_contents.iter().flat_map(|v| v.to_le_bytes()));
    out.extend(c.int_contents.iter().flat_map(|v| v.to_le_bytes()));
    out.extend(c.bool_contents.iter().map(|b| u8::from(*b)));
    for b in &c.bytes_contents {
        out.extend((b.len() as u32).to_le_bytes());
        out.extend(b);
    }
    out
}

/// A `binary_data_size` parameter: its byte count, if the input has one.
fn binary_size(input: &InputTensor) -> Result<Option<usize>, ApiError> {
    match input.parameters.get("binary_data_size") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| bad(&input.name, "`binary_data_size` is not a byte count")),
    }
}

/// The KServe JSON request (and binary section) as an OIP ModelInferRequest.
fn to_oip(
    path: &ModelPath,
    req: InferRequest,
    mut binary: &[u8],
) -> Result<oip::ModelInferRequest, ApiError> {
    let mut inputs = Vec::with_capacity(req.inputs.len());
    let mut raw: Vec<Option<Vec<u8>>> = Vec::with_capacity(req.inputs.len());
    for input in req.inputs {
        let tensor_raw = match binary_size(&input)? {
            Some(n) => {
                if n > binary.len() {
                    return Err(bad(
                        &input.name,
                        format!(
                            "`binary_data_size` {n} exceeds the {} binary bytes left in the body",
                            binary.len()
                        ),
                    ));
                }
                let (this, rest) = binary.split_at(n);
                binary = rest;
                Some(this.to_vec())
            }
            None => None,
        };
        let contents = match &tensor_raw {
            Some(_) => None,
            None => Some(contents(&input)?),
        };
        inputs.push(oip::model_infer_request::InferInputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            parameters: HashMap::new(),
            contents,
        });
        raw.push(tensor_raw);
    }
    if !binary.is_empty() {
        return Err(ApiError::InvalidArgument(format!(
            "{} bytes after the JSON header belong to no input's `binary_data_size`",
            binary.len()
        )));
    }
    let raw_input_contents = if raw.iter().any(Option::is_some) {
        inputs
            .iter_mut()
            .zip(raw)
            .map(|(input, raw)| match raw {
                Some(bytes) => bytes,
                None => contents_to_raw(&input.contents.take().unwrap_or_default()),
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(oip::ModelInferRequest {
        model_name: path.model.clone(),
        model_version: path.version().to_owned(),
        id: req.id,
        parameters: HashMap::new(),
        inputs,
        outputs: req
            .outputs
            .iter()
            .map(|o| oip::model_infer_request::InferRequestedOutputTensor {
                name: o.name.clone(),
                parameters: HashMap::new(),
            })
            .collect(),
        raw_input_contents,
    })
}

/// An output's values as JSON `data` and as binary-extension bytes.
fn output_data(c: &oip::InferTensorContents) -> (Value, Vec<u8>) {
    if !c.fp32_contents.is_empty() {
        (
            json!(c.fp32_contents),
            c.fp32_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
    } else if !c.uint_contents.is_empty() {
        (
            json!(c.uint_contents),
            c.uint_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
    } else if !c.int64_contents.is_empty() {
        (
            json!(c.int64_contents),
            c.int64_contents
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        )
    } else if !c.bytes_contents.is_empty() {
        let strings: Vec<String> = c
            .bytes_contents
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect();
        let mut raw = Vec::new();
        for b in &c.bytes_contents {
            raw.extend((b.len() as u32).to_le_bytes());
            raw.extend(b);
        }
        (json!(strings), raw)
    } else {
        (json!([]), Vec::new())
    }
}

fn flag(parameters: &Map<String, Value>, name: &str) -> bool {
    parameters
        .get(name)
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

async fn infer(
    State(state): State<Arc<HttpState>>,
    Path(path): Path<ModelPath>,
    Extension(Deadline(deadline)): Extension<Deadline>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let (json_part, binary) = split_body(&headers, &body)?;
    let req: InferRequest = parse_json(json_part)?;
    // Which outputs come back as binary: each asked-for output's own
    // `binary_data`, else the request's `binary_data_output`.
    let all_binary = flag(&req.parameters, "binary_data_output");
    let binary_outputs: HashMap<String, bool> = req
        .outputs
        .iter()
        .map(|o| {
            let binary = o
                .parameters
                .get("binary_data")
                .and_then(Value::as_bool)
                .unwrap_or(all_binary);
            (o.name.clone(), binary)
        })
        .collect();
    let request = to_oip(&path, req, binary)?;
    let answer = state.inference.infer_as(request, deadline, false).await?;
    let version: u64 = answer.model_version.parse().unwrap_or(0);
    let mut blobs = Vec::new();
    let outputs: Vec<Value> = answer
        .outputs
        .iter()
        .map(|o| {
            let (data, raw) = output_data(&o.contents.clone().unwrap_or_default());
            let mut out = json!({ "name": o.name, "datatype": o.datatype, "shape": o.shape });
            if *binary_outputs.get(&o.name).unwrap_or(&all_binary) {
                out["parameters"] = json!({ "binary_data_size": raw.len() });
                blobs.push(raw);
            } else {
                out["data"] = data;
            }
            out
        })
        .collect();
    let mut body = json!({
        "model_name": answer.model_name,
        "model_version": answer.model_version,
        "outputs": outputs,
    });
    if !answer.id.is_empty() {
        body["id"] = json!(answer.id);
    }
    let scored_by = ScoredBy(vec![(answer.model_name, version)]);
    let mut response = if blobs.is_empty() {
        Json(body).into_response()
    } else {
        let mut bytes = serde_json::to_vec(&body)
            .map_err(|e| ApiError::Internal(format!("encoding the answer: {e}")))?;
        let header_length = bytes.len();
        for blob in blobs {
            bytes.extend(blob);
        }
        let mut response = bytes.into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        headers.insert(HEADER_LENGTH, HeaderValue::from(header_length));
        response
    };
    response.extensions_mut().insert(scored_by);
    Ok(response)
}
