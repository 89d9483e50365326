//! The KServe V2 Open Inference Protocol (`inference.GRPCInferenceService`) on
//! the same port as segscore.v1, so Triton/KServe clients work unmodified.
//!
//! Every model is exposed with one input, `features` (FP32 `[-1, n_features]`,
//! the model's real input: category features as their index in the manifest's
//! `categories`), and one output, `score` (FP32 `[-1]`: probability of the
//! positive class or the regression value). ModelInfer also accepts one tensor
//! per named feature (`[rows]` or `[rows, 1]`; BYTES strings for category
//! features), as tabular clients send columns. Either way the tensors become a
//! [`FeatureBatch`] and go through the same validation, imputation and batcher
//! as `Score`.
//!
//! Triton's extensions that its clients and perf_analyzer need are here too:
//! ModelConfig (a config built from the same tensors as ModelMetadata),
//! ModelStatistics (the engine's per-version counters) and RepositoryIndex;
//! ModelReady answers false, never NOT_FOUND, for what is not serving.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use tonic::{Request, Response, Status};
use tonic_health::{server::HealthReporter, ServingStatus};
use tracing::info;

use super::gate::RequestGate;
use crate::{
    echo::echo,
    error::ApiError,
    features::{Column, ColumnValues, DType, FeatureBatch, FeatureSchema, FeatureSpec},
    infer::{self, Scorer},
    proto::oip,
    repository::{
        lifecycle::Lifecycle,
        manifest::{GraphDtype, GraphInput},
        Format, LoadedModel, ResolveError, SharedRepository, Task, VersionStatus,
    },
    telemetry::{self, Rpc},
};

/// The single output every model exposes over OIP.
const OUTPUT: &str = "score";
/// Clustering models' second output: the assigned cluster of each row.
const CLUSTER_OUTPUT: &str = "cluster_id";

/// Classifiers with declared classes: every class's probability, FP32
/// `[-1, classes]`, named as sklearn-minded clients (and Triton serving an
/// skl2onnx graph) ask for it.
const PROBABILITIES_OUTPUT: &str = "probabilities";
/// The same models' predicted class: INT64 when every class label is an
/// integer (what skl2onnx/onnxmltools graphs return), else BYTES.
const LABEL_OUTPUT: &str = "label";

/// The output tensors a model has: `score`, plus `cluster_id` for
/// clustering, plus `probabilities` and `label` for classifiers with classes.
fn output_names(model: &LoadedModel) -> &'static [&'static str] {
    if model.manifest.task == Task::Clustering {
        &[OUTPUT, CLUSTER_OUTPUT]
    } else if !model.manifest.classes.is_empty() {
        &[OUTPUT, PROBABILITIES_OUTPUT, LABEL_OUTPUT]
    } else {
        &[OUTPUT]
    }
}

/// The datatype of the `label` output: INT64 when every class parses as
/// one, as the graph's own label output would be.
fn integer_labels(model: &LoadedModel) -> bool {
    model
        .manifest
        .classes
        .iter()
        .all(|c| c.parse::<i64>().is_ok())
}
/// The single matrix input every model exposes over OIP.
const INPUT: &str = "features";

/// The Triton extensions ServerMetadata advertises: those implemented here.
const EXTENSIONS: &[&str] = &["model_repository", "model_configuration", "statistics"];

/// (platform, backend) as Triton names them in ModelMetadata and ModelConfig.
fn platform(model: &LoadedModel) -> (&'static str, &'static str) {
    match model.manifest.format {
        Format::Onnx => ("onnxruntime_onnx", "onnxruntime"),
        Format::Smartcore => ("smartcore", "smartcore"),
    }
}

/// An output's OIP datatype and shape (batch dimension first, -1).
fn output_tensor(model: &LoadedModel, name: &str, classes: i64) -> (&'static str, Vec<i64>) {
    match name {
        CLUSTER_OUTPUT => ("UINT32", vec![-1]),
        PROBABILITIES_OUTPUT => ("FP32", vec![-1, classes]),
        LABEL_OUTPUT if integer_labels(model) => ("INT64", vec![-1]),
        LABEL_OUTPUT => ("BYTES", vec![-1]),
        _ => ("FP32", vec![-1]),
    }
}

/// Triton's config `DataType` of an OIP datatype.
fn config_dtype(datatype: &str) -> Result<oip::DataType, ApiError> {
    Ok(match datatype {
        "FP32" => oip::DataType::TypeFp32,
        "FP64" => oip::DataType::TypeFp64,
        "INT64" => oip::DataType::TypeInt64,
        "UINT32" => oip::DataType::TypeUint32,
        "BYTES" => oip::DataType::TypeString,
        other => {
            return Err(ApiError::Internal(format!(
                "no model config data type for `{other}`"
            )))
        }
    })
}

/// Triton's dims and reshape of a tensor whose shape starts with the batch
/// dimension: the batch is implied by max_batch_size, and a tensor of one
/// value per row is `dims: [1]` reshaped to `[]`, as Triton writes it.
fn config_dims(shape: &[i64]) -> (Vec<i64>, Option<oip::ModelTensorReshape>) {
    match shape.get(1..) {
        Some(rest) if !rest.is_empty() => (rest.to_vec(), None),
        _ => (vec![1], Some(oip::ModelTensorReshape { shape: Vec::new() })),
    }
}

/// A Triton-compatible model configuration: the same inputs and outputs as
/// ModelMetadata, and the request row cap as max_batch_size (larger requests
/// are refused; smaller ones are split into batches by the server).
fn model_config(model: &LoadedModel, max_rows: usize) -> Result<oip::ModelConfig, ApiError> {
    let (platform, backend) = platform(model);
    let input = input_metadata(model)
        .into_iter()
        .map(|t| {
            let (dims, reshape) = config_dims(&t.shape);
            Ok(oip::ModelInput {
                name: t.name,
                data_type: config_dtype(&t.datatype)? as i32,
                dims,
                reshape,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    let classes = model.manifest.classes.len() as i64;
    let output = output_names(model)
        .iter()
        .map(|&name| {
            let (datatype, shape) = output_tensor(model, name, classes);
            let (dims, reshape) = config_dims(&shape);
            Ok(oip::ModelOutput {
                name: name.into(),
                data_type: config_dtype(datatype)? as i32,
                dims,
                reshape,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(oip::ModelConfig {
        name: model.name().into(),
        platform: platform.into(),
        backend: backend.into(),
        max_batch_size: i32::try_from(max_rows).unwrap_or(i32::MAX),
        input,
        output,
    })
}

/// One serving version's ModelStatistics entry. segscore has no input and
/// output stages on the worker apart from the model call (encoding happens
/// before queueing), so compute_input and compute_output count every call
/// with 0 ns: perf_analyzer refuses statistics whose three compute counts
/// differ ("Server side statistics compute counts must be the same").
fn statistics(model: &LoadedModel) -> oip::ModelStatistics {
    let stats = model.stats();
    let duration = |(count, ns): (u64, u64)| Some(oip::StatisticDuration { count, ns });
    let compute = stats.compute.get();
    oip::ModelStatistics {
        name: model.name().into(),
        version: model.version().to_string(),
        last_inference: stats.last_inference_ms(),
        inference_count: stats.inferences(),
        execution_count: stats.executions(),
        inference_stats: Some(oip::InferStatistics {
            success: duration(stats.success.get()),
            fail: duration(stats.fail.get()),
            queue: duration(stats.queue.get()),
            compute_input: duration((compute.0, 0)),
            compute_infer: duration(compute),
            compute_output: duration((compute.0, 0)),
            cache_hit: duration((0, 0)),
            cache_miss: duration((0, 0)),
        }),
        batch_stats: Vec::new(),
    }
}

/// Every model and version the way Triton's repository index lists them:
/// READY (serving), LOADING (in the validation gate), UNLOADING (draining),
/// UNAVAILABLE with the reason (failed validation, retired, or the whole
/// model unloaded on request, which has no version).
fn repository_index(
    repository: &crate::repository::Repository,
) -> Vec<oip::repository_index_response::ModelIndex> {
    use crate::proto::pb::VersionState;
    use oip::repository_index_response::ModelIndex;
    let mut index: Vec<ModelIndex> = super::models::model_infos(repository)
        .into_iter()
        .flat_map(|info| {
            let name = info.name;
            info.versions.into_iter().map(move |v| {
                let (state, reason) = match VersionState::try_from(v.state) {
                    Ok(VersionState::Serving) => ("READY", String::new()),
                    Ok(VersionState::Loading | VersionState::Validating) => {
                        ("LOADING", String::new())
                    }
                    Ok(VersionState::Draining) => ("UNLOADING", String::new()),
                    Ok(VersionState::Retired) => ("UNAVAILABLE", "unloaded".to_string()),
                    Ok(VersionState::Failed | VersionState::Unspecified) | Err(_) => {
                        ("UNAVAILABLE", v.reason)
                    }
                };
                ModelIndex {
                    name: name.clone(),
                    version: v.version.to_string(),
                    state: state.into(),
                    reason,
                }
            })
        })
        .collect();
    for name in repository.unloaded() {
        if !index.iter().any(|m| &m.name == name) {
            index.push(ModelIndex {
                name: name.clone(),
                version: String::new(),
                state: "UNAVAILABLE".into(),
                reason: "unloaded".into(),
            });
        }
    }
    index.sort_by(|a, b| a.name.cmp(&b.name));
    index
}

#[derive(Clone)]
pub struct InferenceService {
    /// Model load and unload (RepositoryModelLoad/Unload).
    lifecycle: Arc<Lifecycle>,
    scorer: Scorer,
    gate: Arc<RequestGate>,
}

impl InferenceService {
    pub fn new(lifecycle: Arc<Lifecycle>, scorer: Scorer, gate: Arc<RequestGate>) -> Self {
        Self {
            lifecycle,
            scorer,
            gate,
        }
    }

    fn repository(&self) -> &SharedRepository {
        self.lifecycle.repository()
    }

    /// Ready when every model has a serving version (Triton's rule).
    pub fn is_server_ready(&self) -> bool {
        self.repository()
            .load()
            .models()
            .values()
            .all(|e| e.default_version().is_some())
    }

    /// An unknown, unloaded or failed model is simply not ready: Triton
    /// answers ready=false, never NOT_FOUND, and readiness probes and
    /// perf_analyzer rely on that. Only a malformed version is an error.
    pub fn is_model_ready(&self, name: &str, version: &str) -> Result<bool, ApiError> {
        let version = parse_version(version)?;
        Ok(self.repository().load().resolve(name, version, "").is_ok())
    }

    /// ModelMetadata of `name` (at `version`, "" = the default one).
    pub fn metadata_of(
        &self,
        name: String,
        version: &str,
    ) -> Result<oip::ModelMetadataResponse, ApiError> {
        let version = parse_version(version)?;
        let repository = self.repository().load();
        let model = repository.resolve(&name, version, "")?;
        let versions = repository.models()[&name]
            .versions
            .iter()
            .filter(|(_, s)| matches!(s, crate::repository::VersionStatus::Serving(_)))
            .map(|(v, _)| v.to_string())
            .collect();
        let platform = platform(&model).0;
        use oip::model_metadata_response::TensorMetadata;
        let classes = model.manifest.classes.len() as i64;
        Ok(oip::ModelMetadataResponse {
            name,
            versions,
            platform: platform.into(),
            inputs: input_metadata(&model),
            outputs: output_names(&model)
                .iter()
                .map(|&name| {
                    let (datatype, shape) = output_tensor(&model, name, classes);
                    TensorMetadata {
                        name: name.into(),
                        datatype: datatype.into(),
                        shape,
                        parameters: HashMap::new(),
                    }
                })
                .collect(),
        })
    }

    /// Triton's ModelConfig of `name` (at `version`, "" = the default one).
    pub fn config_of(&self, name: &str, version: &str) -> Result<oip::ModelConfig, ApiError> {
        let version = parse_version(version)?;
        let model = self.repository().load().resolve(name, version, "")?;
        model_config(&model, self.scorer.max_rows())
    }

    /// ModelStatistics: every serving version of every model (empty name),
    /// of one model (no version) or one version.
    pub fn statistics_of(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Vec<oip::ModelStatistics>, ApiError> {
        let version = parse_version(version)?;
        let repository = self.repository().load();
        let mut model_stats = Vec::new();
        if name.is_empty() {
            // Every serving version of every model, as Triton answers an
            // empty name.
            for entry in repository.models().values() {
                for status in entry.versions.values() {
                    if let VersionStatus::Serving(model) = status {
                        model_stats.push(statistics(model));
                    }
                }
            }
        } else if version == 0 {
            let entry = repository
                .models()
                .get(name)
                .ok_or_else(|| ApiError::Resolve(ResolveError::UnknownModel(name.into())))?;
            for status in entry.versions.values() {
                if let VersionStatus::Serving(model) = status {
                    model_stats.push(statistics(model));
                }
            }
        } else {
            let model = repository.resolve(name, version, "")?;
            model_stats.push(statistics(&model));
        }
        Ok(model_stats)
    }

    /// Triton's RepositoryIndex; `ready` keeps only the serving versions.
    pub fn index(&self, ready: bool) -> Vec<oip::repository_index_response::ModelIndex> {
        let mut models = repository_index(&self.repository().load());
        if ready {
            models.retain(|m| m.state == "READY");
        }
        models
    }

    /// ModelInfer, answering with raw output contents when the request sent
    /// raw input contents (the gRPC convention).
    async fn infer(
        &self,
        req: oip::ModelInferRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<oip::ModelInferResponse, ApiError> {
        let raw = !req.raw_input_contents.is_empty();
        self.infer_as(req, deadline, raw).await
    }

    /// ModelInfer for every front end: the request's tensors through the
    /// core, the outputs as typed contents, or as raw bytes when `raw`.
    pub async fn infer_as(
        &self,
        req: oip::ModelInferRequest,
        deadline: Option<tokio::time::Instant>,
        raw: bool,
    ) -> Result<oip::ModelInferResponse, ApiError> {
        let version = parse_version(&req.model_version)?;
        let model = self
            .repository()
            .load()
            .resolve(&req.model_name, version, "")?;
        let names = output_names(&model);
        for out in &req.outputs {
            if !names.contains(&out.name.as_str()) {
                return Err(ApiError::InvalidArgument(format!(
                    "model `{}` has no output `{}`; its outputs are {}",
                    echo(&req.model_name),
                    echo(&out.name),
                    names
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        // No `outputs` in the request means every output, as in Triton.
        let wanted =
            |name: &str| req.outputs.is_empty() || req.outputs.iter().any(|o| o.name == name);
        let request = infer::Request {
            // Pinned to the version resolved above, whose outputs were checked.
            models: vec![infer::ModelRef {
                name: model.name().into(),
                version: model.version(),
                label: String::new(),
            }],
            features: Tensors {
                inputs: &req.inputs,
                raw: &req.raw_input_contents,
                max_rows: self.scorer.max_rows(),
            },
            segments: Vec::new(),
            entity_ids: Vec::new(),
        };
        let scored = self.scorer.score(request, deadline).await?;
        let rows = scored.rows;
        let scored = scored
            .models
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("the core answered without the model".into()))?
            .output;
        let mut outputs = Vec::new();
        let mut raw_output_contents = Vec::new();
        if wanted(OUTPUT) {
            let mut output = tensor(OUTPUT, "FP32", rows);
            if raw {
                raw_output_contents
                    .push(scored.scores.iter().flat_map(|s| s.to_le_bytes()).collect());
            } else {
                output.contents = Some(oip::InferTensorContents {
                    fp32_contents: scored.scores,
                    ..Default::default()
                });
            }
            outputs.push(output);
        }
        if names.contains(&CLUSTER_OUTPUT) && wanted(CLUSTER_OUTPUT) {
            let mut output = tensor(CLUSTER_OUTPUT, "UINT32", rows);
            if raw {
                raw_output_contents.push(
                    scored
                        .cluster_ids
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect(),
                );
            } else {
                output.contents = Some(oip::InferTensorContents {
                    uint_contents: scored.cluster_ids,
                    ..Default::default()
                });
            }
            outputs.push(output);
        }
        if names.contains(&PROBABILITIES_OUTPUT) && wanted(PROBABILITIES_OUTPUT) {
            let classes = model.manifest.classes.len();
            let mut output = tensor(PROBABILITIES_OUTPUT, "FP32", rows);
            output.shape = vec![rows as i64, classes as i64];
            if raw {
                raw_output_contents.push(
                    scored
                        .probabilities
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect(),
                );
            } else {
                output.contents = Some(oip::InferTensorContents {
                    fp32_contents: scored.probabilities.clone(),
                    ..Default::default()
                });
            }
            outputs.push(output);
        }
        if names.contains(&LABEL_OUTPUT) && wanted(LABEL_OUTPUT) {
            let (output, bytes) = label_tensor(&scored.labels, integer_labels(&model), raw)?;
            outputs.push(output);
            if let Some(bytes) = bytes {
                raw_output_contents.push(bytes);
            }
        }
        Ok(oip::ModelInferResponse {
            model_name: model.name().into(),
            model_version: model.version().to_string(),
            id: req.id,
            parameters: HashMap::new(),
            outputs,
            raw_output_contents,
        })
    }
}

/// The `label` output: INT64 or BYTES, typed contents or raw bytes (the
/// second element) as the request was.
fn label_tensor(
    labels: &[String],
    integers: bool,
    raw: bool,
) -> Result<
    (
        oip::model_infer_response::InferOutputTensor,
        Option<Vec<u8>>,
    ),
    ApiError,
> {
    let rows = labels.len();
    if integers {
        let values: Vec<i64> = labels
            .iter()
            .map(|l| l.parse::<i64>())
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::Internal("a class label is not an integer".into()))?;
        let mut output = tensor(LABEL_OUTPUT, "INT64", rows);
        if raw {
            return Ok((
                output,
                Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            ));
        }
        output.contents = Some(oip::InferTensorContents {
            int64_contents: values,
            ..Default::default()
        });
        return Ok((output, None));
    }
    let mut output = tensor(LABEL_OUTPUT, "BYTES", rows);
    if raw {
        // Triton's raw BYTES: a 4-byte little-endian length before each element.
        let mut bytes = Vec::new();
        for l in labels {
            bytes.extend_from_slice(&(l.len() as u32).to_le_bytes());
            bytes.extend_from_slice(l.as_bytes());
        }
        return Ok((output, Some(bytes)));
    }
    output.contents = Some(oip::InferTensorContents {
        bytes_contents: labels.iter().map(|l| l.as_bytes().to_vec()).collect(),
        ..Default::default()
    });
    Ok((output, None))
}

/// An output tensor of `rows` values, contents filled by the caller.
fn tensor(name: &str, datatype: &str, rows: usize) -> oip::model_infer_response::InferOutputTensor {
    oip::model_infer_response::InferOutputTensor {
        name: name.into(),
        datatype: datatype.into(),
        shape: vec![rows as i64],
        ..Default::default()
    }
}

/// ServerMetadata: the name, version and the Triton extensions served.
pub fn server_metadata() -> oip::ServerMetadataResponse {
    oip::ServerMetadataResponse {
        name: "segscore".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        // Triton's names for what this server implements, no more:
        // clients pick code paths by them.
        extensions: EXTENSIONS.iter().map(|e| e.to_string()).collect(),
    }
}

/// The gRPC services grpc.health.v1 reports by name besides "" (the
/// server): a client or load balancer may probe the API it uses, as with any
/// gRPC server, and gets what "" gets.
pub const HEALTH_SERVICES: [&str; 2] = [
    crate::proto::pb::scoring_server::SERVICE_NAME,
    oip::grpc_inference_service_server::SERVICE_NAME,
];

/// Keeps grpc.health.v1 in step with the repository: one entry per model name
/// (SERVING when it has a serving version, NOT_SERVING otherwise or once
/// removed) plus "" and [`HEALTH_SERVICES`] for the server, NOT_SERVING once
/// `draining` turns true. Runs until then, or until the lifecycle goes away.
pub async fn health_task(
    lifecycle: Arc<Lifecycle>,
    health: HealthReporter,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let mut changes = lifecycle.subscribe();
    let mut published: BTreeSet<String> = BTreeSet::new();
    loop {
        let stopping = *draining.borrow_and_update();
        let repository = lifecycle.repository().load_full();
        let mut now = BTreeSet::new();
        for (name, entry) in repository.models() {
            let status = if entry.default_version().is_some() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(name, status).await;
            now.insert(name.clone());
        }
        for gone in published.difference(&now) {
            health
                .set_service_status(gone, ServingStatus::NotServing)
                .await;
        }
        published = now;
        let server = if stopping {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        for service in std::iter::once("").chain(HEALTH_SERVICES) {
            health.set_service_status(service, server).await;
        }
        if stopping {
            // Nothing may turn the server SERVING again while it drains.
            return;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            // A dropped sender means the server is gone: nothing to report.
            changed = draining.changed() => if changed.is_err() { return },
        }
    }
}

fn parse_version(version: &str) -> Result<u64, ApiError> {
    if version.is_empty() {
        return Ok(0);
    }
    // Digits only, no sign or leading zero: "01" and "+1" are not versions.
    let canonical = version.bytes().all(|b| b.is_ascii_digit()) && !version.starts_with('0');
    canonical
        .then(|| version.parse().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::InvalidArgument(format!(
                "model_version `{}` is not a version number",
                echo(version)
            ))
        })
}

fn bad(tensor: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidArgument(format!("input tensor `{}`: {message}", echo(tensor)))
}

/// Reads one tensor's values from typed contents or from its raw bytes.
fn tensor_values(
    input: &oip::model_infer_request::InferInputTensor,
    raw: Option<&[u8]>,
) -> Result<ColumnValues, ApiError> {
    let name = &input.name;
    fn chunks<const N: usize, T>(
        name: &str,
        raw: &[u8],
        f: impl Fn([u8; N]) -> T,
    ) -> Result<Vec<T>, ApiError> {
        if !raw.len().is_multiple_of(N) {
            return Err(bad(
                name,
                format!(
                    "{} raw bytes are not a whole number of {N}-byte elements",
                    raw.len()
                ),
            ));
        }
        Ok(raw
            .chunks_exact(N)
            .map(|c| f(c.try_into().expect("chunks_exact(N); this is a bug")))
            .collect())
    }
    let contents = input.contents.clone().unwrap_or_default();
    Ok(match (input.datatype.as_str(), raw) {
        ("FP32", Some(r)) => ColumnValues::F32(chunks(name, r, f32::from_le_bytes)?),
        ("FP32", None) => ColumnValues::F32(contents.fp32_contents),
        ("FP64", Some(r)) => ColumnValues::F64(chunks(name, r, f64::from_le_bytes)?),
        ("FP64", None) => ColumnValues::F64(contents.fp64_contents),
        ("INT64", Some(r)) => ColumnValues::I64(chunks(name, r, i64::from_le_bytes)?),
        ("INT64", None) => ColumnValues::I64(contents.int64_contents),
        ("INT32", Some(r)) => ColumnValues::I64(chunks(name, r, |b: [u8; 4]| {
            i64::from(i32::from_le_bytes(b))
        })?),
        ("INT32", None) => {
            ColumnValues::I64(contents.int_contents.into_iter().map(i64::from).collect())
        }
        ("BOOL", Some(r)) => ColumnValues::Bool(r.iter().map(|b| *b != 0).collect()),
        ("BOOL", None) => ColumnValues::Bool(contents.bool_contents),
        ("BYTES", Some(r)) => ColumnValues::Category(raw_strings(name, r)?),
        ("BYTES", None) => ColumnValues::Category(
            contents
                .bytes_contents
                .into_iter()
                .map(|b| String::from_utf8(b).map_err(|_| bad(name, "BYTES element is not UTF-8")))
                .collect::<Result<_, _>>()?,
        ),
        (other, _) => {
            return Err(bad(
                name,
                format!(
                    "datatype `{}` is not supported (use FP32, FP64, INT64, INT32, BOOL or BYTES)",
                    echo(other)
                ),
            ))
        }
    })
}

/// Raw BYTES tensors are 4-byte little-endian lengths, each followed by the
/// element's bytes (the Triton convention).
fn raw_strings(name: &str, mut raw: &[u8]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let (len, rest) = raw
            .split_first_chunk::<4>()
            .ok_or_else(|| bad(name, "truncated BYTES length prefix"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(bad(
                name,
                "BYTES element longer than the remaining raw content",
            ));
        }
        out.push(
            String::from_utf8(rest[..len].to_vec())
                .map_err(|_| bad(name, "BYTES element is not UTF-8"))?,
        );
        raw = &rest[len..];
    }
    Ok(out)
}

/// A ModelInfer request's input tensors, converted once the core has
/// admitted them.
struct Tensors<'a> {
    inputs: &'a [oip::model_infer_request::InferInputTensor],
    raw: &'a [Vec<u8>],
    max_rows: usize,
}

impl infer::Features for Tensors<'_> {
    /// The first input's shape[0]. A shape that is not plausible admits
    /// nothing and gets its precise error from the conversion.
    fn declared_rows(&self) -> Result<usize, ApiError> {
        Ok(self
            .inputs
            .first()
            .and_then(|input| input.shape.first())
            .and_then(|&rows| usize::try_from(rows).ok())
            .filter(|&rows| rows <= self.max_rows)
            .unwrap_or(0))
    }

    fn into_batch(self, model: Option<&LoadedModel>) -> Result<FeatureBatch, ApiError> {
        // ModelInfer always names its one model.
        let model = model.ok_or_else(|| {
            ApiError::Internal("ModelInfer reached the core without its model".into())
        })?;
        tensors_to_batch(
            &model.schema,
            &model.manifest.inputs,
            self.inputs,
            self.raw,
            self.max_rows,
        )
    }
}

/// Turns the request's tensors into a batch of named columns.
fn tensors_to_batch(
    schema: &FeatureSchema,
    graph_inputs: &[GraphInput],
    inputs: &[oip::model_infer_request::InferInputTensor],
    raw: &[Vec<u8>],
    max_rows: usize,
) -> Result<FeatureBatch, ApiError> {
    if inputs.is_empty() {
        return Err(ApiError::InvalidArgument(
            "the request has no input tensors".into(),
        ));
    }
    if !raw.is_empty() && raw.len() != inputs.len() {
        return Err(ApiError::InvalidArgument(format!(
            "{} raw_input_contents for {} inputs: send one per input, in order",
            raw.len(),
            inputs.len()
        )));
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        if !raw.is_empty() && input.contents.is_some() {
            return Err(bad(
                &input.name,
                "has `contents` although raw_input_contents is used",
            ));
        }
        if input.shape.iter().any(|d| *d < 0) {
            return Err(bad(
                &input.name,
                format!("shape {:?} has a negative dimension", input.shape),
            ));
        }
        let values = tensor_values(input, raw.get(i).map(Vec::as_slice))?;
        // Checked: a shape like [2^62, 12] must not wrap around to a product
        // that happens to match.
        let expected = input
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d as u64));
        if expected != Some(values.len() as u64) || input.shape.is_empty() {
            return Err(bad(
                &input.name,
                format!(
                    "{} values do not fill shape {:?}",
                    values.len(),
                    input.shape
                ),
            ));
        }
        let rows = input.shape[0] as usize;
        if rows > max_rows {
            return Err(ApiError::TooLarge(format!(
                "input tensor `{}`: {rows} rows exceed the limit of {max_rows} rows per request",
                input.name
            )));
        }
        tensors.push((input, values));
    }
    let width = schema.len() as i64;
    let is_matrix = tensors.len() == 1 && tensors[0].0.name == INPUT;
    let columns = if is_matrix {
        let (input, values) = tensors.pop().expect("one tensor; this is a bug");
        if input.shape.len() != 2 || input.shape[1] != width {
            return Err(bad(
                &input.name,
                format!("shape {:?}: expected [rows, {width}] (features in manifest order) or one tensor per feature", input.shape),
            ));
        }
        let specs: Vec<&FeatureSpec> = schema.specs().collect();
        matrix_columns(&specs, &input.name, values)?
    } else {
        let mut columns = Vec::with_capacity(tensors.len());
        for (input, values) in tensors {
            // The graph's own input name: an alias of the features it takes
            // (a per-column graph's inputs are the features' own names).
            if let Some(graph) = graph_inputs
                .iter()
                .find(|g| g.name == input.name && g.features != [g.name.as_str()])
            {
                columns.extend(graph_input_columns(schema, graph, input, values)?);
                continue;
            }
            let spec = schema.spec(&input.name).ok_or_else(|| {
                bad(
                    &input.name,
                    "is not a feature of this model (see ModelMetadata or GetModel)",
                )
            })?;
            let column_shaped =
                input.shape.len() == 1 || (input.shape.len() == 2 && input.shape[1] == 1);
            if !column_shaped {
                return Err(bad(
                    &input.name,
                    format!(
                        "shape {:?}: a feature tensor is [rows] or [rows, 1]",
                        input.shape
                    ),
                ));
            }
            let values = match (spec.dtype, values) {
                (DType::Category, v @ ColumnValues::Category(_)) => v,
                (_, ColumnValues::Category(_)) => {
                    return Err(bad(
                        &input.name,
                        format!("BYTES data for a {} feature", spec.dtype),
                    ))
                }
                (_, v) => v,
            };
            columns.push((input.name.clone(), Column::new(values)));
        }
        columns
    };
    Ok(FeatureBatch::new(0, columns)?)
}

/// The columns of a tensor sent under a graph input's name: `[rows, k]` (or
/// `[rows]` when it takes one feature) over the features it takes, numbers
/// (category codes for category features) or, for a string input, BYTES.
fn graph_input_columns(
    schema: &FeatureSchema,
    graph: &GraphInput,
    input: &oip::model_infer_request::InferInputTensor,
    values: ColumnValues,
) -> Result<Vec<(String, Column)>, ApiError> {
    let k = graph.features.len() as i64;
    let fits = input.shape.len() == 2 && input.shape[1] == k || input.shape.len() == 1 && k == 1;
    if !fits {
        return Err(bad(
            &input.name,
            format!(
                "shape {:?}: the model's input `{}` is [rows, {k}] ({})",
                input.shape,
                echo(&graph.name),
                graph.features.join(", ")
            ),
        ));
    }
    let specs: Vec<&FeatureSpec> = graph
        .features
        .iter()
        .map(|f| {
            schema.spec(f).ok_or_else(|| {
                ApiError::Internal(format!("input `{}` names an unknown feature", graph.name))
            })
        })
        .collect::<Result<_, _>>()?;
    match values {
        ColumnValues::Category(strings) => {
            if let Some(spec) = specs.iter().find(|s| s.dtype != DType::Category) {
                return Err(bad(
                    &input.name,
                    format!("BYTES data for the {} feature `{}`", spec.dtype, spec.name),
                ));
            }
            let width = specs.len();
            Ok(specs
                .iter()
                .enumerate()
                .map(|(j, spec)| {
                    let column: Vec<String> =
                        strings.iter().skip(j).step_by(width).cloned().collect();
                    (
                        spec.name.clone(),
                        Column::new(ColumnValues::Category(column)),
                    )
                })
                .collect())
        }
        numbers => matrix_columns(&specs, &input.name, numbers),
    }
}

/// Splits a row-major `[rows, features]` tensor into one column per feature.
/// Category columns carry codes here (the model's encoding); they are mapped
/// back to their names so encode() validates them like any other request.
fn matrix_columns(
    specs: &[&FeatureSpec],
    name: &str,
    values: ColumnValues,
) -> Result<Vec<(String, Column)>, ApiError> {
    let width = specs.len();
    let pick =
        |v: &[f64], j: usize| -> Vec<f64> { v.iter().skip(j).step_by(width).copied().collect() };
    let as_f64: Vec<f64> = match &values {
        ColumnValues::F32(v) => v.iter().map(|x| f64::from(*x)).collect(),
        ColumnValues::F64(v) => v.clone(),
        ColumnValues::I64(v) => v.iter().map(|x| *x as f64).collect(),
        ColumnValues::Bool(v) => v.iter().map(|x| if *x { 1.0 } else { 0.0 }).collect(),
        ColumnValues::Category(_) => {
            return Err(bad(name, "a BYTES matrix cannot hold numeric features"))
        }
    };
    let mut columns = Vec::with_capacity(width);
    for (j, spec) in specs.iter().enumerate() {
        let col = pick(&as_f64, j);
        let column = match spec.dtype {
            DType::Category => {
                let mut missing = Vec::new();
                let mut names = Vec::with_capacity(col.len());
                for (row, code) in col.iter().enumerate() {
                    if code.is_nan() {
                        missing.push(row as u32);
                        names.push(String::new());
                        continue;
                    }
                    let category = (code.fract() == 0.0 && *code >= 0.0)
                        .then(|| spec.categories.get(*code as usize))
                        .flatten()
                        .ok_or_else(|| {
                            bad(
                                name,
                                format!(
                                    "column {j} (`{}`) row {row}: not a category code 0..{}",
                                    spec.name,
                                    spec.categories.len() - 1
                                ),
                            )
                        })?;
                    names.push(category.clone());
                }
                Column::new(ColumnValues::Category(names))
                    .with_missing_rows(&missing)
                    .expect("rows from the same column; this is a bug")
            }
            DType::Bool => {
                let mut missing = Vec::new();
                let flags = col
                    .iter()
                    .enumerate()
                    .map(|(row, v)| {
                        if v.is_nan() {
                            missing.push(row as u32);
                            Ok(false)
                        } else if *v == 0.0 || *v == 1.0 {
                            Ok(*v == 1.0)
                        } else {
                            Err(bad(
                                name,
                                format!(
                                    "column {j} (`{}`) row {row}: a bool feature is 0 or 1",
                                    spec.name
                                ),
                            ))
                        }
                    })
                    .collect::<Result<_, _>>()?;
                Column::new(ColumnValues::Bool(flags))
                    .with_missing_rows(&missing)
                    .expect("rows from the same column; this is a bug")
            }
            _ => Column::new(ColumnValues::F64(col)),
        };
        columns.push((spec.name.clone(), column));
    }
    Ok(columns)
}

/// The inputs ModelMetadata lists: the graph's own inputs when the manifest
/// declares them (what the ONNX file takes, as Triton would list it), else
/// the `features` matrix. Each carries its features (names, dtypes,
/// categories, ranges) in `parameters`, so a client can build a request from
/// metadata alone.
fn input_metadata(model: &LoadedModel) -> Vec<oip::model_metadata_response::TensorMetadata> {
    use oip::model_metadata_response::TensorMetadata;
    let describe = |names: &mut dyn Iterator<Item = &FeatureSpec>| {
        let features: Vec<serde_json::Value> = names
            .map(|spec| {
                let mut entry = serde_json::json!({
                    "name": spec.name,
                    "dtype": spec.dtype.as_str(),
                    "missing": match spec.missing {
                        crate::features::MissingPolicy::Reject => "reject",
                        crate::features::MissingPolicy::Impute(_) => "impute",
                    },
                });
                if !spec.categories.is_empty() {
                    entry["categories"] = serde_json::json!(spec.categories);
                }
                if let Some(min) = spec.min {
                    entry["min"] = serde_json::json!(min);
                }
                if let Some(max) = spec.max {
                    entry["max"] = serde_json::json!(max);
                }
                entry
            })
            .collect();
        let parameter = oip::InferParameter {
            parameter_choice: Some(oip::infer_parameter::ParameterChoice::StringParam(
                serde_json::Value::Array(features).to_string(),
            )),
        };
        HashMap::from([("features".to_string(), parameter)])
    };
    if model.manifest.inputs.is_empty() {
        return vec![TensorMetadata {
            name: INPUT.into(),
            datatype: "FP32".into(),
            shape: vec![-1, model.schema.len() as i64],
            parameters: describe(&mut model.schema.specs()),
        }];
    }
    model
        .manifest
        .inputs
        .iter()
        .map(|graph| {
            let datatype = match graph.dtype {
                GraphDtype::Float32 => "FP32",
                GraphDtype::Float64 => "FP64",
                GraphDtype::Int64 => "INT64",
                GraphDtype::String => "BYTES",
            };
            TensorMetadata {
                name: graph.name.clone(),
                datatype: datatype.into(),
                shape: vec![-1, graph.features.len() as i64],
                parameters: describe(
                    &mut graph.features.iter().filter_map(|f| model.schema.spec(f)),
                ),
            }
        })
        .collect()
}

#[tonic::async_trait]
impl oip::grpc_inference_service_server::GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<oip::ServerLiveRequest>,
    ) -> Result<Response<oip::ServerLiveResponse>, Status> {
        Ok(Response::new(oip::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<oip::ServerReadyRequest>,
    ) -> Result<Response<oip::ServerReadyResponse>, Status> {
        Ok(Response::new(oip::ServerReadyResponse {
            ready: self.is_server_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<oip::ModelReadyRequest>,
    ) -> Result<Response<oip::ModelReadyResponse>, Status> {
        let req = request.into_inner();
        let ready = self.is_model_ready(&req.name, &req.version)?;
        Ok(Response::new(oip::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<oip::ServerMetadataRequest>,
    ) -> Result<Response<oip::ServerMetadataResponse>, Status> {
        Ok(Response::new(server_metadata()))
    }

    async fn model_metadata(
        &self,
        request: Request<oip::ModelMetadataRequest>,
    ) -> Result<Response<oip::ModelMetadataResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.metadata_of(req.name, &req.version)?))
    }

    async fn model_infer(
        &self,
        request: Request<oip::ModelInferRequest>,
    ) -> Result<Response<oip::ModelInferResponse>, Status> {
        let admitted = self.gate.admit("ModelInfer", request.metadata())?;
        let deadline = admitted.deadline();
        let span = telemetry::rpc_server_span(Rpc::MODEL_INFER, request.metadata());
        let work = async {
            self.infer(request.into_inner(), deadline)
                .await
                .map_err(Status::from)
        };
        let result =
            tracing::Instrument::instrument(admitted.within_deadline(work), span.clone()).await;
        match &result {
            Ok(resp) => {
                let version = resp.model_version.parse().unwrap_or(0);
                span.record("segscore.model", resp.model_name.as_str());
                span.record("segscore.version", version as i64);
                if let Some(&rows) = resp.outputs.first().and_then(|o| o.shape.first()) {
                    span.record("segscore.rows", rows);
                }
                telemetry::record_rpc_outcome(&span, tonic::Code::Ok, "");
                tracing::debug!(parent: &span, "scored");
                admitted.record(tonic::Code::Ok, [(resp.model_name.as_str(), version)]);
            }
            Err(e) => {
                telemetry::record_rpc_outcome(&span, e.code(), e.message());
                tracing::debug!(parent: &span, error = %e.message(), "infer request refused");
                admitted.record(e.code(), []);
            }
        }
        Ok(Response::new(result?))
    }

    async fn model_config(
        &self,
        request: Request<oip::ModelConfigRequest>,
    ) -> Result<Response<oip::ModelConfigResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(oip::ModelConfigResponse {
            config: Some(self.config_of(&req.name, &req.version)?),
        }))
    }

    async fn model_statistics(
        &self,
        request: Request<oip::ModelStatisticsRequest>,
    ) -> Result<Response<oip::ModelStatisticsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(oip::ModelStatisticsResponse {
            model_stats: self.statistics_of(&req.name, &req.version)?,
        }))
    }

    async fn repository_index(
        &self,
        request: Request<oip::RepositoryIndexRequest>,
    ) -> Result<Response<oip::RepositoryIndexResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(oip::RepositoryIndexResponse {
            models: self.index(req.ready),
        }))
    }

    async fn repository_model_load(
        &self,
        request: Request<oip::RepositoryModelLoadRequest>,
    ) -> Result<Response<oip::RepositoryModelLoadResponse>, Status> {
        let name = request.into_inner().model_name;
        self.lifecycle
            .reload_model(name.clone())
            .await
            .map_err(ApiError::from)?;
        let repository = self.repository().load();
        let serving = repository
            .models()
            .get(&name)
            .and_then(|e| e.default_version())
            .map(|m| m.version());
        info!(model = %echo(&name), ?serving, "model reloaded from the repository");
        match serving {
            Some(_) => Ok(Response::new(oip::RepositoryModelLoadResponse {})),
            None => Err(ApiError::FailedPrecondition(format!(
                "model `{}` was reloaded but no version passed validation (see ListModels)",
                echo(&name)
            ))
            .into()),
        }
    }

    async fn repository_model_unload(
        &self,
        request: Request<oip::RepositoryModelUnloadRequest>,
    ) -> Result<Response<oip::RepositoryModelUnloadResponse>, Status> {
        let name = request.into_inner().model_name;
        self.lifecycle
            .unload_model(name)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(oip::RepositoryModelUnloadResponse {}))
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary OIP input tensors never panic the decoder or the encoder,
    //! whatever their names, datatypes, shapes (negative, huge) and contents.

    use proptest::{collection::vec, prelude::*};

    use super::*;
    use crate::repository::Manifest;

    fn schema() -> FeatureSchema {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/ltv/1/model.toml");
        FeatureSchema::new(Manifest::read(path.as_ref()).unwrap().features).unwrap()
    }

    fn contents() -> impl Strategy<Value = oip::InferTensorContents> {
        (
            vec(any::<bool>(), 0..40),
            vec(any::<i64>(), 0..40),
            vec(any::<f32>(), 0..40),
            vec(any::<f64>(), 0..40),
            vec(vec(any::<u8>(), 0..12), 0..40),
        )
            .prop_map(|(b, i, f, d, bytes)| oip::InferTensorContents {
                bool_contents: b,
                int64_contents: i,
                fp32_contents: f,
                fp64_contents: d,
                bytes_contents: bytes,
                ..Default::default()
            })
    }

    fn tensor() -> impl Strategy<Value = oip::model_infer_request::InferInputTensor> {
        let name = prop_oneof![
            Just("features".to_string()),
            Just("recency_days".to_string()),
            Just("frequency".to_string()),
            Just("region".to_string()),
            Just("cart_abandoned_24h".to_string()),
            ".{0,12}",
        ];
        let datatype = prop_oneof![
            Just("FP32".to_string()),
            Just("FP64".to_string()),
            Just("INT64".to_string()),
            Just("BOOL".to_string()),
            Just("BYTES".to_string()),
            ".{0,6}",
        ];
        let dim = prop_oneof![-2i64..30, any::<i64>()];
        (
            name,
            datatype,
            vec(dim, 0..4),
            proptest::option::of(contents()),
        )
            .prop_map(|(name, datatype, shape, contents)| {
                oip::model_infer_request::InferInputTensor {
                    name,
                    datatype,
                    shape,
                    contents,
                    ..Default::default()
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_tensors_never_panic(
            inputs in vec(tensor(), 0..4),
            raw in prop_oneof![Just(Vec::new()), vec(vec(any::<u8>(), 0..200), 0..4)],
        ) {
            let schema = schema();
            if let Ok(batch) = tensors_to_batch(&schema, &[], &inputs, &raw, 10_000) {
                if let Ok(encoded) = schema.encode(&batch, 0..batch.rows()) {
                    prop_assert_eq!(encoded.nrows(), batch.rows());
                    prop_assert!(encoded.iter().all(|v| v.is_finite()));
                }
            }
        }
    }
}
